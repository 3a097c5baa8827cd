"""Open Inference Protocol (v2) tensors on the wire: datatypes, shapes and their values.

Both v2 doors read client tensors with `from_raw` (binary: REST's binary extension, gRPC's
raw contents) or `from_list` (JSON data, gRPC typed contents) and write them back with
`to_raw`/`to_list`. BYTES tensors hold one bytes object per element; on the raw wire each
element is a 4-byte little-endian length and its bytes (`split_bytes`, `join_bytes`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import BadInput

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
