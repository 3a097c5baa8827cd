"""Each kind of model's v2 tensors: its metadata, its inputs as payloads, its results as
outputs. `codec_for` is the one place the v2 doors choose by the kind of model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from service.errors import BadInput, SchemaError
from service.handlers.image import ImageHandler
from service.handlers.tabular import TabularHandler
from service.imaging import image_file
from service.oip_tensors import BYTES, InferTensor, ModelMetadata, TensorSpec
from service.pipeline import Payload, Tensor
from service.results import Explanation, ImageResult, Prediction, RowResult
from service.runtime import Model


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
    return image_file(where, value, " (or send BYTES with the binary tensor extension)")


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
