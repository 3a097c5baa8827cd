"""The Open Inference Protocol (v2) without its wire: typed tensors in, the pipeline, tensors out.

Both v2 doors (REST in service/oip_http.py, gRPC in service/oip_grpc.py) only turn their
wire format into an `InferRequest` of `InferTensor`s and the answer back; this module maps
tensors onto the pipeline's `Payload`s and its typed results onto output tensors, once.

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

import base64
import binascii
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service import __version__
from service.errors import BadInput, SchemaError
from service.handlers.image import ImageHandler
from service.handlers.tabular import TabularHandler
from service.pipeline import ExplainRequest, Payload, Pipeline, PredictRequest, Tensor
from service.results import Explanation, ImageResult, Prediction, RowResult
from service.runtime import Model

# The v2 datatypes glimpse reads and writes, as little-endian numpy dtypes (BYTES: objects).
DTYPES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
BYTES = "BYTES"
# Request parameters clients send for Triton's own features; glimpse reads `timeout` only.
RESERVED_PARAMS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "headers"}
)
EXTENSIONS = ["binary_tensor_data", "parameters"]
PLATFORM = "glimpse_pytorch"


@dataclass(frozen=True)
class InferTensor:
    """One named tensor: its v2 `datatype`, `shape` and values (BYTES: an object array of
    bytes, or of str when they came as JSON). Example:
    ``InferTensor("predictions", "FP64", [2], np.array([1.0, 2.0]))``"""

    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray


@dataclass(frozen=True)
class TensorSpec:
    """What model metadata lists for one input or output (-1: any size)."""

    name: str
    datatype: str
    shape: list[int]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    versions: list[str] = field(default_factory=lambda: ["1"])
    platform: str = PLATFORM

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": self.versions,
            "platform": self.platform,
            "inputs": [t.as_json() for t in self.inputs],
            "outputs": [t.as_json() for t in self.outputs],
        }


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


# -- tensors on the wire -----------------------------------------------------------------------
def element_count(shape: Sequence[int]) -> int:
    if any(d < 0 for d in shape):
        raise BadInput(f"a tensor's shape has a negative dimension: {list(shape)}")
    return math.prod(shape)


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> InferTensor:
    """A tensor from its raw little-endian bytes (BYTES: each element 4-byte length-prefixed)."""
    count = element_count(shape)
    if datatype == BYTES:
        elements = split_bytes(name, raw)
        if len(elements) != count:
            raise BadInput(
                f"input {name!r}: shape {list(shape)} needs {count} BYTES elements, got "
                f"{len(elements)}"
            )
        values = np.empty(count, dtype=object)
        values[:] = elements
        return InferTensor(name, datatype, list(shape), values.reshape(shape))
    dtype = np.dtype(_dtype(name, datatype))
    if len(raw) != count * dtype.itemsize:
        raise BadInput(
            f"input {name!r}: shape {list(shape)} of {datatype} needs "
            f"{count * dtype.itemsize} bytes, got {len(raw)}"
        )
    values = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return InferTensor(name, datatype, list(shape), values)


def from_list(name: str, datatype: str, shape: Sequence[int], data: Any) -> InferTensor:
    """A tensor from JSON data (flat or nested, row-major) or typed gRPC contents."""
    flat = list(_flatten(data))
    count = element_count(shape)
    if len(flat) != count:
        raise BadInput(f"input {name!r}: shape {list(shape)} needs {count} values, got {len(flat)}")
    if datatype == BYTES:
        values = np.empty(count, dtype=object)
        values[:] = flat
        return InferTensor(name, datatype, list(shape), values.reshape(shape))
    try:
        values = np.asarray(flat, dtype=_dtype(name, datatype)).reshape(shape)
    except (TypeError, ValueError) as error:
        raise BadInput(f"input {name!r}: its data is not all {datatype}: {error}") from None
    return InferTensor(name, datatype, list(shape), values)


def to_raw(tensor: InferTensor) -> bytes:
    """The tensor's raw little-endian bytes, as the binary extension and gRPC carry them."""
    if tensor.datatype == BYTES:
        return join_bytes(_as_bytes(v) for v in tensor.values.ravel())
    return np.ascontiguousarray(tensor.values, dtype=DTYPES[tensor.datatype]).tobytes()


def to_list(tensor: InferTensor) -> list[Any]:
    """The tensor's values flattened row-major, for JSON (BYTES as text)."""
    if tensor.datatype == BYTES:
        return [_as_bytes(v).decode("utf-8", "replace") for v in tensor.values.ravel()]
    flat: list[Any] = tensor.values.ravel().tolist()
    return flat


def split_bytes(name: str, raw: bytes) -> list[bytes]:
    """BYTES elements, each a 4-byte little-endian length then that many bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadInput(f"input {name!r}: a BYTES element's 4-byte length is cut short")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadInput(
                f"input {name!r}: a BYTES element says {size} bytes, only "
                f"{len(raw) - offset} are left"
            )
        elements.append(raw[offset : offset + size])
        offset += size
    return elements


def join_bytes(elements: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _dtype(name: str, datatype: str) -> str:
    if datatype not in DTYPES:
        raise BadInput(f"input {name!r}: datatype {datatype!r} is not one of {[*DTYPES, BYTES]}")
    return DTYPES[datatype]


def _flatten(data: Any) -> Iterable[Any]:
    if isinstance(data, list | tuple):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


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


class Codec(Protocol):
    """One kind of model's tensors: metadata, inputs -> payloads, results -> outputs."""

    def metadata(self) -> ModelMetadata: ...

    def payloads(self, inputs: list[InferTensor]) -> list[Payload]: ...

    def predicted(self, results: Sequence[Prediction]) -> list[InferTensor]: ...

    def explained(self, results: Sequence[Explanation], method: str) -> list[InferTensor]: ...


def codec_for(model: Model) -> Codec:
    """The one place the v2 doors choose by the kind of model."""
    handler = model.handler
    if isinstance(handler, ImageHandler):
        return ImageCodec(model.name, handler)
    if isinstance(handler, TabularHandler):
        return TabularCodec(model.name, handler)
    raise SchemaError(f"{model.name} cannot be served over the Open Inference Protocol")


class ImageCodec:
    """An image classifier's tensors (see the module docstring)."""

    def __init__(self, name: str, handler: ImageHandler) -> None:
        self.name, self.handler = name, handler

    def metadata(self) -> ModelMetadata:
        height, width = self.handler.size
        classes = len(self.handler.classes)
        return ModelMetadata(
            self.name,
            inputs=[
                TensorSpec("image", BYTES, [-1]),
                TensorSpec("tensor", "FP32", [-1, 3, height, width]),
            ],
            outputs=[
                TensorSpec("probabilities", "FP32", [-1, classes]),
                TensorSpec("labels", BYTES, [-1]),
                TensorSpec("explanation", "FP32", [-1, -1, -1]),
            ],
        )

    def payloads(self, inputs: list[InferTensor]) -> list[Payload]:
        if len(inputs) != 1:
            raise SchemaError(
                f"{self.name} takes one input, BYTES `image` (encoded image files) or FP32 "
                f"`tensor` [N, 3, H, W]; got {len(inputs)}"
            )
        tensor = inputs[0]
        if tensor.datatype == BYTES:
            where = f"input {tensor.name!r}"
            return [Payload(image_bytes(where, v)) for v in tensor.values.ravel()]
        if tensor.datatype in ("FP32", "FP64", "FP16") and tensor.values.ndim == 4:
            return [Payload(Tensor(np.asarray(v, dtype=np.float32))) for v in tensor.values]
        raise SchemaError(
            f"input {tensor.name!r}: {self.name} takes BYTES [N] of encoded images or FP32 "
            f"[N, 3, H, W], not {tensor.datatype} {tensor.shape}"
        )

    def predicted(self, results: Sequence[Prediction]) -> list[InferTensor]:
        rows = [r for r in results if isinstance(r, dict)]
        return self._classes(rows)

    def explained(self, results: Sequence[Explanation], method: str) -> list[InferTensor]:
        images = [r for r in results if isinstance(r, ImageResult)]
        maps = np.stack([r.targets[0].maps[0].values for r in images]).astype(np.float32)
        explanation = InferTensor("explanation", "FP32", list(maps.shape), maps)
        return [*self._classes([r.prediction for r in images]), explanation]

    def _classes(self, predictions: list[dict[str, float]]) -> list[InferTensor]:
        classes = self.handler.classes
        probabilities = np.array(
            [[p[c] for c in classes] for p in predictions], dtype=np.float32
        ).reshape(len(predictions), len(classes))
        labels = np.empty(len(predictions), dtype=object)
        labels[:] = [classes[int(i)].encode() for i in probabilities.argmax(axis=1)]
        return [
            InferTensor("probabilities", "FP32", list(probabilities.shape), probabilities),
            InferTensor("labels", BYTES, [len(predictions)], labels),
        ]


class TabularCodec:
    """A tabular model's tensors: one input per column (see the module docstring)."""

    def __init__(self, name: str, handler: TabularHandler) -> None:
        self.name, self.handler = name, handler
        self.columns = [column.name for column in handler.columns]

    def metadata(self) -> ModelMetadata:
        inputs = [
            TensorSpec(c.name, "FP32" if c.type == "continuous" else BYTES, [-1])
            for c in self.handler.columns
        ]
        return ModelMetadata(
            self.name,
            inputs=inputs,
            outputs=[
                TensorSpec("predictions", "FP64", [-1]),
                TensorSpec("attributions", "FP32", [-1, len(self.columns)]),
                TensorSpec("base_value", "FP64", [-1]),
            ],
        )

    def payloads(self, inputs: list[InferTensor]) -> list[Payload]:
        unknown = [t.name for t in inputs if t.name not in self.columns]
        if unknown:
            raise SchemaError(
                f"inputs {unknown} are not columns of {self.name}; its columns are {self.columns}"
            )
        counts = {t.name: t.values.size for t in inputs}
        if not inputs or len(set(counts.values())) != 1:
            raise SchemaError(
                f"{self.name} takes one input per column, each [N] with the same N rows; "
                f"got {counts or 'no inputs'}"
            )
        for t in inputs:
            if t.values.ndim > 2 or (t.values.ndim == 2 and t.values.shape[1] != 1):
                raise SchemaError(f"input {t.name!r} is {t.shape}; send a column as [N] or [N, 1]")
        columns = {t.name: [_scalar(v) for v in t.values.ravel()] for t in inputs}
        n = next(iter(counts.values()))
        rows = [{name: values[i] for name, values in columns.items()} for i in range(n)]
        return [Payload({"rows": rows})]

    def predicted(self, results: Sequence[Prediction]) -> list[InferTensor]:
        values = np.array([v for r in results if isinstance(r, list) for v in r], dtype=np.float64)
        return [InferTensor("predictions", "FP64", [len(values)], values)]

    def explained(self, results: Sequence[Explanation], method: str) -> list[InferTensor]:
        rows = [r for r in results if isinstance(r, RowResult)]
        predictions = np.array([r.prediction for r in rows], dtype=np.float64)
        attributions = np.array(
            [[r.attributions[method][c] for c in self.columns] for r in rows], dtype=np.float32
        ).reshape(len(rows), len(self.columns))
        base = np.array([r.base_value for r in rows], dtype=np.float64)
        return [
            InferTensor("predictions", "FP64", [len(rows)], predictions),
            InferTensor("attributions", "FP32", list(attributions.shape), attributions),
            InferTensor("base_value", "FP64", [len(rows)], base),
        ]


def image_bytes(where: str, value: Any) -> bytes:
    """An element's image file: bytes as they came, or base64 text (JSON; also `{"b64": ...}`)."""
    if isinstance(value, Mapping) and "b64" in value:
        value = value["b64"]
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput(
                f"{where}: an image sent as JSON is the image file in base64; this one is not "
                "base64 (or send BYTES with the binary tensor extension)"
            ) from None
    raise BadInput(f"{where}: an element is {type(value).__name__}, not an image file")


def _scalar(value: Any) -> Any:
    """A column value as a JSON row holds it: text for BYTES, a Python number otherwise, and
    None (a missing value) for NaN, since a v2 tensor has no null."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput("a BYTES column value is not UTF-8 text") from None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
