"""The Open Inference Protocol v2 REST door and KServe v1, beside glimpse's own routes.

v2: `GET /v2`, `/v2/health/live`, `/v2/health/ready`, `/v2/models/{name}`,
`/v2/models/{name}/ready`, `POST /v2/models/{name}/infer` (JSON, or the binary tensor
extension that tritonclient sends: the JSON header is the first `Inference-Header-Content-Length`
bytes, each binary input's `parameters.binary_data_size` bytes follow in order).
KServe v1: `GET /v1/models/{name}`, `POST /v1/models/{name}:predict` and `:explain`.
Errors are the protocols' own shape, non-200 with `{"error": "..."}`; the tensors and the
pipeline behind them are service/oip.py's (tensors: service/oip_tensors.py).

Example: ``app.include_router(oip_router(settings, pipeline))``
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from service import oip, oip_codecs, oip_tensors
from service.answers import explanation_body, row_json
from service.config import Settings
from service.errors import BadInput, GlimpseError
from service.http import FastJSON, explain_request, read_body
from service.oip import InferRequest
from service.oip_tensors import InferTensor
from service.pipeline import Payload, Pipeline, PredictRequest
from service.results import ImageResult, RowResult

HEADER_LENGTH = "Inference-Header-Content-Length"


class ProtocolErrors(APIRoute):
    """A route whose GlimpseErrors answer `{"error": message}` with the error's status: the
    shape v2 REST and KServe v1 clients read (glimpse's own routes answer `{"code", "message"}`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except GlimpseError as exc:
                return JSONResponse({"error": exc.message}, exc.status)

        return answer


def oip_router(settings: Settings, pipeline: Pipeline) -> APIRouter:
    """The v2 and KServe v1 routes onto `pipeline`."""
    router = APIRouter(route_class=ProtocolErrors, tags=["Open Inference Protocol"])

    @router.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        """Server name, version and protocol extensions."""
        return oip.server_metadata()

    @router.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        """200 while the process answers."""
        return {"live": True}

    @router.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        """200 when every model can answer and glimpse is not draining, else 503."""
        serving = pipeline.health().serving
        return JSONResponse({"ready": serving}, 200 if serving else 503)

    @router.get("/v2/models/{name}")
    async def model_metadata(name: str) -> dict[str, Any]:
        """The model's inputs and outputs as v2 tensors."""
        return oip.model_metadata(pipeline, name).as_json()

    @router.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> JSONResponse:
        """200 when the model can answer, else 503 (404: no such model)."""
        answers = oip.model_ready(pipeline, name)
        return JSONResponse({"name": name, "ready": answers}, 200 if answers else 503)

    @router.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        """v2 inference: JSON tensors or the binary tensor extension; `explain` parameter."""
        pipeline.runtime.get(name)
        body = await read_body(request, settings.max_body_bytes)
        header, tensors = split_body(body, request.headers.get(HEADER_LENGTH))
        infer_request, binary = parse_infer(name, header, tensors)
        outputs = await oip.infer(pipeline, infer_request)
        return infer_response(name, header.get("id"), outputs, binary)

    @router.get("/v1/models/{name}")
    async def v1_model_ready(name: str) -> dict[str, Any]:
        """KServe v1: the model's name and whether it can answer."""
        return {"name": name, "ready": oip.model_ready(pipeline, name)}

    @router.post("/v1/models/{name}:predict")
    async def v1_predict(name: str, request: Request) -> Any:
        """KServe v1: `{"instances": [...]}` -> `{"predictions": [...]}`, one per instance."""
        pipeline.runtime.get(name)
        inputs = v1_inputs(await read_body(request, settings.max_body_bytes))
        results = await pipeline.predict(PredictRequest(name, inputs))
        predictions = [v for r in results for v in (r if isinstance(r, list) else [r])]
        return FastJSON({"predictions": predictions})

    @router.post("/v1/models/{name}:explain")
    async def v1_explain(name: str, request: Request) -> Any:
        """KServe v1: `{"instances": [...]}` -> `{"explanations": [...]}` in glimpse's
        explanation JSON per instance; `methods`, `target` and method parameters in the query."""
        pipeline.runtime.get(name)
        inputs = v1_inputs(await read_body(request, settings.max_body_bytes))
        results, timings = await pipeline.explain(explain_request(name, inputs, request))
        explanations = [
            row_json(r) if isinstance(r, RowResult) else explanation_body(name, [r], timings)
            for r in results
            if isinstance(r, RowResult | ImageResult)
        ]
        return FastJSON({"explanations": explanations})

    return router


# -- v2: the wire <-> tensors -----------------------------------------------------------------
def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary tensor data after it (empty without the extension)."""
    if header_length is None:
        return _json_object(body, "the body"), b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise BadInput(
            f"{HEADER_LENGTH} is {header_length!r}; it must be the byte length of the JSON "
            f"header, at most the body's {len(body)} bytes"
        )
    cut = int(header_length)
    return _json_object(body[:cut], "the JSON header"), body[cut:]


def parse_infer(
    name: str, header: dict[str, Any], binary: bytes
) -> tuple[InferRequest, dict[str, bool]]:
    """The request's tensors and, per output name ("" for every one), whether to answer it
    as binary data."""
    parameters = _mapping(header.get("parameters", {}), "parameters")
    inputs, offset = [], 0
    for i, raw in enumerate(_list(header.get("inputs"), "inputs")):
        item = _mapping(raw, f"inputs[{i}]")
        tensor_name = str(item.get("name", f"input{i}"))
        datatype = str(item.get("datatype", ""))
        shape = _shape(item.get("shape"), tensor_name)
        size = _mapping(item.get("parameters", {}), "parameters").get("binary_data_size")
        if size is None:
            inputs.append(oip_tensors.from_list(tensor_name, datatype, shape, item.get("data")))
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise BadInput(
                f"input {tensor_name!r}: binary_data_size {size!r} is more than the "
                f"{len(binary) - offset} binary bytes left in the body"
            )
        inputs.append(
            oip_tensors.from_raw(tensor_name, datatype, shape, binary[offset : offset + size])
        )
        offset += size
    if offset != len(binary):
        raise BadInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    binary_outputs = {"": bool(parameters.get("binary_data_output", False))}
    wanted = []
    for i, raw in enumerate(_list(header.get("outputs", []), "outputs")):
        item = _mapping(raw, f"outputs[{i}]")
        wanted.append(str(item.get("name", "")))
        flag = _mapping(item.get("parameters", {}), "parameters").get("binary_data")
        if flag is not None:
            binary_outputs[wanted[-1]] = bool(flag)
    return InferRequest(name, inputs, wanted, dict(parameters)), binary_outputs


def infer_response(
    name: str, request_id: Any, outputs: list[InferTensor], binary: dict[str, bool]
) -> Response:
    """JSON outputs, or the JSON header then each binary output's bytes, in order."""
    described, blobs = [], []
    for tensor in outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if binary.get(tensor.name, binary[""]):
            blob = oip_tensors.to_raw(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = oip_tensors.to_list(tensor)
        described.append(entry)
    body: dict[str, Any] = {"model_name": name, "model_version": "1", "outputs": described}
    if request_id is not None:
        body["id"] = request_id
    header = orjson.dumps(body)
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *blobs]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


# -- KServe v1 ----------------------------------------------------------------------------------
def v1_inputs(body: bytes) -> list[Payload]:
    """`instances`: images as `{"b64": "..."}` (one payload each), or rows as objects (one
    payload with every row)."""
    instances = _list(_json_object(body, "the body").get("instances"), "instances")
    if not instances:
        raise BadInput('"instances" is empty: send at least one instance')
    images = [i for i in instances if isinstance(i, dict) and set(i) == {"b64"}]
    if len(images) == len(instances):
        return [Payload(oip_codecs.image_bytes("instances", i)) for i in images]
    return [Payload({"rows": instances})]


# -- JSON checks that say what is wrong ---------------------------------------------------------
def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise BadInput(f"{what} is not JSON: {error}") from None
    return _mapping(value, what)


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadInput(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadInput(f'"{what}" must be a JSON list, not {type(value).__name__}')
    return value


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) for d in value):
        raise BadInput(f"input {name!r}: shape must be a list of integers, got {value!r}")
    return value
