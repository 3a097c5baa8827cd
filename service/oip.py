"""The Open Inference Protocol (v2) without its wire: typed tensors in, the pipeline, tensors out.

Both v2 doors (REST in service/oip_http.py, gRPC in service/oip_grpc.py) only turn their
wire format into an `InferRequest` of `InferTensor`s (service/oip_tensors.py) and the answer
back; this module runs a request through the pipeline, and each kind of model's codec
(service/oip_codecs.py) maps tensors onto the pipeline's `Payload`s and its typed results
onto output tensors, once.

- Image models take one BYTES input of encoded image files (one element per image; a JSON
  string element is base64) or one FP32 [N, 3, H, W] input already preprocessed. They answer
  `probabilities` FP32 [N, K] (the model's class order) and `labels` BYTES [N] (top 1).
- Tabular models take one input per column (BYTES for categorical and date columns, numbers
  for continuous ones; NaN is a missing value), N rows, and answer `predictions` FP64 [N] in
  the target's units.
- The request parameter `explain` (a method name) adds `explanation` FP32 [N, h, w] (images)
  or `attributions` FP32 [N, columns] and `base_value` FP64 [N] (tabular). `target` and the
  method's own parameters ride along as request parameters too.

Example: ``outputs = await infer(pipeline, InferRequest("cnn", [InferTensor("image", "BYTES",
[1], np.array([png], dtype=object))]))``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service import __version__
from service.errors import SchemaError
from service.oip_codecs import codec_for
from service.oip_tensors import InferTensor, ModelMetadata
from service.pipeline import ExplainRequest, Pipeline, PredictRequest

# Request parameters clients send for Triton's own features; glimpse reads `timeout` only.
RESERVED_PARAMS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "headers"}
)
EXTENSIONS = ["binary_tensor_data", "parameters"]


@dataclass
class InferRequest:
    """A v2 inference request: inputs, the outputs asked for (empty: all), and parameters."""

    model: str
    inputs: list[InferTensor]
    outputs: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None  # seconds the client allows (a gRPC deadline)


def server_metadata() -> dict[str, Any]:
    """`GET /v2` and ServerMetadata."""
    return {"name": "glimpse", "version": __version__, "extensions": EXTENSIONS}


# -- the pipeline behind the protocol ------------------------------------------------------------
async def infer(pipeline: Pipeline, request: InferRequest) -> list[InferTensor]:
    """Run `request` through the pipeline: its outputs, in the order the model lists them (or
    the order asked for)."""
    model = pipeline.runtime.get(request.model)
    codec = codec_for(model)
    method, target, params, timeout = _parameters(request)
    inputs = codec.payloads(request.inputs)
    if method is None:
        predict = PredictRequest(model.name, inputs, timeout, all_classes=True)
        outputs = codec.predicted(await pipeline.predict(predict))
    else:
        explain = ExplainRequest(
            model.name,
            inputs,
            [method],
            target,
            params,
            overlay=False,
            timeout=timeout,
            all_classes=True,
        )
        results, _ = await pipeline.explain(explain)
        outputs = codec.explained(results, method)
    return _select(outputs, request.outputs)


def model_metadata(pipeline: Pipeline, name: str) -> ModelMetadata:
    """`GET /v2/models/{name}` and ModelMetadata; ModelNotFound for an unknown model."""
    model = pipeline.runtime.get(name)
    return codec_for(model).metadata()


def model_ready(pipeline: Pipeline, name: str) -> bool:
    """Whether `name` answers now; ModelNotFound for an unknown model."""
    pipeline.runtime.get(name)
    return pipeline.health().serves(name)


def _parameters(
    request: InferRequest,
) -> tuple[str | None, str | None, dict[str, Any], float | None]:
    """(explain method, target, method parameters, timeout in s) from the request parameters.
    Triton's `timeout` parameter is in microseconds."""
    params = {k: v for k, v in request.parameters.items() if k not in RESERVED_PARAMS}
    method = params.pop("explain", None)
    target = params.pop("target", None)
    timeout = request.timeout
    if (micros := params.pop("timeout", None)) is not None:
        seconds = float(micros) / 1e6
        timeout = seconds if timeout is None else min(timeout, seconds)
    if method is not None and not isinstance(method, str):
        raise SchemaError(f"the parameter explain names a method, got {method!r}")
    if method is None and params:
        raise SchemaError(
            f"unknown parameters {sorted(params)}: method parameters need the parameter "
            "explain=<method> too"
        )
    return method or None, None if target is None else str(target), params, timeout


def _select(outputs: list[InferTensor], wanted: list[str]) -> list[InferTensor]:
    if not wanted:
        return outputs
    by_name = {t.name: t for t in outputs}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise SchemaError(
            f"requested outputs {missing} are not among this request's outputs "
            f"{list(by_name)} (explanation outputs need the parameter explain=<method>)"
        )
    return [by_name[name] for name in wanted]
