"""The HTTP door (FastAPI): decode the wire format into pipeline requests, encode results back.

Routes: /ping, /models, /models/{name}, /predictions/{name}, /explanations/{name},
/heatmaps/{name}, /metrics. Errors are `{"code", "message"}` with the status
their GlimpseError carries; nothing a client sends yields a 500.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service import __version__
from service.config import Settings
from service.errors import BadInput, GlimpseError, PayloadTooLarge, UnsupportedMediaType
from service.metrics import CONTENT_TYPE, OTHER_ROUTE
from service.pipeline import (
    ExplainRequest,
    ImageExplanation,
    Pipeline,
    PredictRequest,
    as_base64,
)

ROUTE_PARAMS = {"methods", "method", "target", "overlay"}


def create_app(settings: Settings, pipeline: Pipeline) -> FastAPI:
    """The FastAPI app for `pipeline`. Example: ``TestClient(create_app(Settings(), p))``."""
    app = FastAPI(
        title="glimpse", version=__version__, description="Predictions with the reasons for them."
    )
    runtime, metrics = pipeline.runtime, pipeline.metrics

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Any:
        route, model = _route_template(app, request)
        metrics.inflight.labels("http").inc()
        started = time.perf_counter()
        code = "500"
        try:
            response = await call_next(request)
            code = str(response.status_code)
            return response
        finally:
            metrics.inflight.labels("http").dec()
            if route not in ("/metrics", "/ping"):
                metrics.observe_request(model, route, "http", code, time.perf_counter() - started)

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
        return JSONResponse({"code": "internal", "message": f"internal error: {exc!r}"}, 500)

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        """Health, in TorchServe's shape."""
        return {"status": "Healthy"}

    @app.get("/models")
    async def list_models() -> dict[str, Any]:
        """Every served model with its kind and explanation methods."""
        return {"models": [_summary(m.describe()) for m in runtime.models.values()]}

    @app.get("/models/{name}")
    async def get_model(name: str) -> dict[str, Any]:
        """One model's kind, classes or target, input schema and explanation methods."""
        return runtime.get(name).describe()

    @app.post("/predictions/{name}")
    async def predictions(name: str, request: Request) -> Any:
        """Image bytes (raw body or multipart `data`) or JSON rows -> what TorchServe answers:
        an image's top classes, or a list with one predicted value per row."""
        handler = runtime.get(name).handler
        inputs = await read_inputs(request, handler, settings)
        results = await pipeline.predict(PredictRequest(name, inputs))
        return results if handler.kind == "tabular" else results[0]

    @app.post("/explanations/{name}")
    async def explanations(name: str, request: Request) -> Any:
        """Prediction + maps or attributions; `methods=a,b`, `target=`, method parameters."""
        handler = runtime.get(name).handler
        inputs = await read_inputs(request, handler, settings)
        results, timings = await pipeline.explain(explain_request(name, inputs, request))
        if handler.kind == "tabular":
            return {"model": name, "rows": results, "timings_ms": timings}
        return encode_image_explanation(name, results[0], timings)

    @app.post("/heatmaps/{name}")
    async def heatmaps(name: str, request: Request) -> Response:
        """Image in, PNG overlay of the same size out (`method=activation` by default)."""
        handler = runtime.get(name).handler
        if handler.kind != "image":
            raise UnsupportedMediaType(f"{name} is not an image model; use /explanations/{name}")
        inputs = await read_inputs(request, handler, settings)
        png = await pipeline.heatmap(explain_request(name, inputs, request))
        return Response(png, media_type="image/png")

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


async def read_inputs(request: Request, handler: Any, settings: Settings) -> list[Any]:
    """Image models: one image (raw body or multipart field `data`). Tabular: JSON rows,
    decoded by the handler exactly as inside TorchServe."""
    body = await read_body(request, settings.max_body_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if handler.kind == "tabular":
        if content_type not in ("application/json", ""):
            raise UnsupportedMediaType(f"send rows as application/json, not {content_type}")
        return list(handler.decode(body))
    if content_type == "multipart/form-data":
        request._body = body  # let Starlette parse the body we already read and capped
        async with request.form() as form:
            field = form.get("data") or form.get("file")
            if field is None or isinstance(field, str):
                raise BadInput("multipart requests must carry the image in a file field `data`")
            return [await field.read()]
    if content_type == "application/json" or content_type.startswith("text/"):
        raise UnsupportedMediaType(
            f"send the image file's bytes (e.g. image/png), not {content_type}"
        )
    return [body]


def explain_request(name: str, inputs: list[Any], request: Request) -> ExplainRequest:
    query = request.query_params
    raw_methods = query.get("methods") or query.get("method") or ""
    methods = [m.strip() for m in raw_methods.split(",") if m.strip()]
    params = {k: v for k, v in query.items() if k not in ROUTE_PARAMS}
    overlay = query.get("overlay", "true").lower() not in ("0", "false", "no")
    return ExplainRequest(name, inputs, methods, query.get("target"), params, overlay)


def encode_image_explanation(
    name: str, result: ImageExplanation, timings: dict[str, float]
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": name,
        "target": result.target,
        "prediction": result.prediction,
        "explanations": _json_maps(result.maps),
        "timings_ms": timings,
    }
    if result.by_target:
        body["by_target"] = [
            {"target": target, "explanations": _json_maps(maps)}
            for target, maps in result.by_target
        ]
    return body


def _json_maps(maps: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        method: {k: as_base64(v) if k == "overlay_png" else v for k, v in entry.items()}
        for method, entry in maps.items()
    }


def _summary(description: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "kind", "classes", "target")
    summary = {k: description[k] for k in keys if k in description}
    summary["explanations"] = [m["name"] for m in description["explanations"]]
    return summary


def _route_template(app: FastAPI, request: Request) -> tuple[str, str]:
    """The matched route's path template (a closed set, never the raw path) and its model."""
    for route in app.router.routes:
        match, child = route.matches(request.scope)
        if match == Match.FULL:
            model = child.get("path_params", {}).get("name", "")
            return str(getattr(route, "path", OTHER_ROUTE)), model
    return OTHER_ROUTE, ""
