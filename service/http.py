"""The HTTP door (FastAPI): decode the wire format into pipeline requests, encode results back.

Routes: /ping, /models, /models/{name}, /predictions/{name}, /explanations/{name},
/heatmaps/{name}, /metrics. Errors are `{"code", "message"}` with the status
their GlimpseError carries; nothing a client sends yields a 500. The web page at `/` and its
files under `/ui/` come from service.web.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.answers import explanation_body
from service.auth import AuthMiddleware, Guard
from service.config import Settings
from service.encode import MEDIA_TYPES
from service.errors import (
    BadInput,
    Draining,
    GlimpseError,
    Overloaded,
    PayloadTooLarge,
    as_glimpse_error,
)
from service.lifecycle import Lifecycle
from service.limits import Gate
from service.management import add_management_routes
from service.metrics import CONTENT_TYPE, OTHER_ROUTE, Metrics
from service.openapi import EXPLAIN_QUERY, HEATMAP_QUERY, INPUT_BODY
from service.pipeline import ExplainRequest, Payload, Pipeline, PredictRequest
from service.results import MapResult
from service.web import add_page_routes


class FastJSON(Response):
    """JSON written by orjson: the explanation bodies are long lists of floats."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def create_app(settings: Settings, pipeline: Pipeline) -> FastAPI:
    """The FastAPI app for `pipeline`. Example: ``TestClient(create_app(Settings(), p))``."""
    app = FastAPI(
        title="glimpse", version=__version__, description="Predictions with the reasons for them."
    )
    runtime, metrics = pipeline.runtime, pipeline.metrics

    # Starlette runs the middleware added last outermost: ObserveRequests (below) sees every
    # answer; the Host and token check runs before any body is read, then the drain gate
    # (AdmitRequests: 503 while draining), then the door's concurrency slots
    # (LimitConcurrency, innermost: 503 when all are taken).
    app.add_middleware(LimitConcurrency, gate=pipeline.gate("HTTP"))
    app.add_middleware(AdmitRequests, lifecycle=pipeline.lifecycle)
    app.add_middleware(AuthMiddleware, guard=Guard.from_settings(settings))
    app.add_middleware(ObserveRequests, metrics=metrics)

    @app.exception_handler(GlimpseError)
    async def glimpse_error(_request: Request, exc: GlimpseError) -> JSONResponse:
        return JSONResponse(exc.as_json(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"code": "schema_error", "message": str(exc.errors())}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"code": code, "message": str(exc.detail)}, exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        error = as_glimpse_error(exc)
        return JSONResponse(error.as_json(), error.status)

    @app.get("/ping")
    async def ping() -> JSONResponse:
        """Health, in TorchServe's shape: 200 `{"status": "Healthy"}`, or 503
        `{"status": "Unhealthy"}` with `draining` and/or `models` (each unhealthy model and
        why: its worker thread has ended, or its batch runs past stuck_seconds)."""
        health = pipeline.health()
        return JSONResponse(health.as_json(), 200 if health.serving else 503)

    @app.get("/models")
    async def list_models() -> dict[str, Any]:
        """Every served model with its kind and explanation methods."""
        return {"models": [_summary(m.describe()) for m in runtime.models.values()]}

    @app.get("/models/{name}")
    async def get_model(name: str) -> dict[str, Any]:
        """One model's kind, classes or target, input schema and explanation methods."""
        return runtime.get(name).describe()

    @app.post("/predictions/{name}", openapi_extra=INPUT_BODY)
    async def predictions(name: str, request: Request) -> Any:
        """Image bytes (raw body or multipart `data`) or JSON rows -> what TorchServe answers:
        an image's top classes, or a list with one predicted value per row."""
        runtime.get(name)
        inputs = await read_inputs(request, settings)
        results = await pipeline.predict(PredictRequest(name, inputs))
        return FastJSON(results[0])

    @app.post("/explanations/{name}", openapi_extra={**INPUT_BODY, **EXPLAIN_QUERY})
    async def explanations(name: str, request: Request) -> Any:
        """Prediction + maps or attributions; `methods=a,b`, `target=`, method parameters."""
        runtime.get(name)
        inputs = await read_inputs(request, settings)
        results, timings = await pipeline.explain(explain_request(name, inputs, request))
        return FastJSON(explanation_body(name, results, timings))

    @app.post("/heatmaps/{name}", openapi_extra={**INPUT_BODY, **HEATMAP_QUERY})
    async def heatmaps(name: str, request: Request) -> Response:
        """Image in, the overlay of the same size out (`method=activation` by default), as
        `format=png` (default), `jpeg` or `webp`."""
        runtime.get(name)
        inputs = await read_inputs(request, settings)
        explain = explain_request(name, inputs, request)
        result = await pipeline.overlay(explain)
        return Response(
            result.overlay,
            media_type=MEDIA_TYPES[explain.overlay_format],
            headers=overlay_headers(result),
        )

    if settings.enable_management:
        add_management_routes(app, settings, runtime)

    add_page_routes(app)
    from service.oip_http import oip_router  # it imports this module (read_body, ...): here

    app.include_router(oip_router(settings, pipeline))  # Open Inference Protocol v2, KServe v1

    @app.get("/metrics")
    async def metrics_route() -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (before any decoding)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes, over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_inputs(request: Request, settings: Settings) -> list[Payload]:
    """The body as one payload: a multipart request's field `data` (or `file`), else the raw
    body, with the content type the client declared. The model's flow decodes it."""
    body = await read_body(request, settings.max_body_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        return [Payload(body, content_type)]
    request._body = body  # let Starlette parse the body we already read and capped
    async with request.form() as form:
        field = form.get("data") or form.get("file")
        if field is None or isinstance(field, str):
            raise BadInput("multipart requests must carry the input in a file field `data`")
        part_type = (field.content_type or "").split(";")[0].strip().lower()
        return [Payload(await field.read(), part_type)]


def explain_request(name: str, inputs: list[Any], request: Request) -> ExplainRequest:
    return ExplainRequest.from_options(name, inputs, request.query_params)


def overlay_headers(result: MapResult) -> dict[str, str]:
    """/heatmaps' headers: the overlay's scale when it is smaller than the upload (over
    GLIMPSE_MAX_OVERLAY_PIXELS), e.g. `X-Glimpse-Overlay-Scaled: 0.5`, and its size."""
    headers = {}
    if result.overlay_size is not None:
        headers["X-Glimpse-Overlay-Size"] = "{}x{}".format(*result.overlay_size)
    if result.overlay_scaled:
        headers["X-Glimpse-Overlay-Scaled"] = f"{result.overlay_scale:.4g}"
    return headers


def _summary(description: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "kind", "classes", "target")
    summary = {k: description[k] for k in keys if k in description}
    summary["explanations"] = [m["name"] for m in description["explanations"]]
    return summary


class LimitConcurrency:
    """ASGI middleware: a request that does work (any method but GET, HEAD and OPTIONS)
    beyond the gate's limit is answered 503 `overloaded` at once, before its body is read,
    instead of waiting without bound; reads (health, metrics, metadata) always pass."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        try:
            self.gate.enter()
        except Overloaded as exc:
            await JSONResponse(exc.as_json(), exc.status)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave()


class ObserveRequests:
    """ASGI middleware: count each request in flight, then record its duration and status
    under the matched route's path template (a closed set, never the raw path), which the
    router leaves in the scope. Plain ASGI: BaseHTTPMiddleware costs a task per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = ["500"]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        inflight = self.metrics.inflight.labels("http")
        inflight.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            inflight.dec()
            route = str(getattr(scope.get("route"), "path", OTHER_ROUTE))
            if route not in ("/metrics", "/ping"):
                model = scope.get("path_params", {}).get("name", "")
                seconds = time.perf_counter() - started
                self.metrics.observe_request(model, route, "http", status[0], seconds)


class AdmitRequests:
    """ASGI middleware: count each request in flight for the drain and, once the drain
    refuses new work, answer 503 `draining` (with `Connection: close`). `/ping` and
    `/metrics` (and v2 health) stay open: they are how the outside watches the drain."""

    OPEN = frozenset({"/ping", "/metrics", "/v2/health/live", "/v2/health/ready"})

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.OPEN:
            await self.app(scope, receive, send)
            return
        try:
            self.lifecycle.enter()
        except Draining as exc:
            refusal = JSONResponse(exc.as_json(), exc.status, headers={"Connection": "close"})
            await refusal(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.lifecycle.leave()
