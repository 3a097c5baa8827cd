"""Hypothesis strategies for what a careless or hostile client sends: image files (real,
truncated, corrupted, random), query parameters and tabular rows. Used by tests/test_fuzz.py.

Every strategy draws bounded sizes (a few hundred pixels, strings below the body limit), so
one example costs milliseconds; what makes a value hostile is its shape, not its size.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from service.explain import REGISTRY, methods_for
from tests.helpers import ROW

# Modes each format can store (what Pillow writes without complaint); F and I;16 are the
# 32-bit float and 16-bit greys a scanner or a microscope produces.
FORMAT_MODES: dict[str, tuple[str, ...]] = {
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "JPEG": ("L", "RGB", "CMYK"),
    "GIF": ("L", "P", "1"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("1", "L", "P", "RGB"),
    "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
}

# Text without lone surrogates: HTTP query strings and protobuf strings must be UTF-8.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)

# Numbers as a client writes them into a query string or a proto's string field.
NUMBER_WORDS = st.sampled_from(
    [
        "nan",
        "NaN",
        "-nan",
        "inf",
        "-inf",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1e400",
        "1e-400",
        "0",
        "-0",
        "-1",
        "0.5",
        "1.0",
        "0x10",
        "1_000",
        " 3 ",
        "",
        "9" * 5000,  # past Python's 4300-digit int() limit
        "٣",  # an Arabic-Indic three: int() reads it
        "²",  # a superscript two: str.isdigit() says yes, int() says no
    ]
)
HUGE_INTEGERS = st.one_of(
    st.integers(min_value=-(10**40), max_value=-1),
    st.integers(min_value=2**31, max_value=10**40),
).map(str)
FLOATS = st.floats(allow_nan=True, allow_infinity=True).map(repr)

# Every registered method's parameter names, alone and as "method.param".
PARAM_NAMES = sorted({p for cls in REGISTRY.values() for p in cls.params})
QUALIFIED = sorted(f"{m}.{p}" for m, cls in REGISTRY.items() for p in cls.params)

# Values the methods accept for most parameters and that keep a call quick; with the words,
# huge numbers, floats and text above they make a parameter's value.
CHEAP = st.sampled_from(["1", "2", "4", "8", "0.1", "0.0", "blur", "zeros", "true", "false"])
PARAM_VALUES = st.one_of(CHEAP, CHEAP, NUMBER_WORDS, HUGE_INTEGERS, FLOATS, TEXT)


def is_nan(text: str) -> bool:
    """Whether float() reads `text` as NaN ("nan", "-NaN", " nan ")."""
    try:
        return math.isnan(float(text))
    except ValueError:
        return False


# A float parameter (stdev) still takes NaN; refusing it is issue12-limits' work, and
# tests/test_fuzz.py::test_nan_parameters checks it apart (xfail until then).
FLOAT_PARAM_VALUES = PARAM_VALUES.filter(lambda text: not is_nan(text))


@st.composite
def methods(draw: st.DrawFn, kind: str) -> list[str]:
    """0-3 method names: mostly the model's own, sometimes another kind's, invented or twice."""
    own = st.sampled_from(methods_for(kind))
    names = st.one_of(own, own, own, own, st.sampled_from(sorted(REGISTRY)), TEXT)
    chosen = draw(st.lists(names, max_size=3, unique=True))
    if chosen and draw(st.integers(0, 9)) == 0:
        chosen.append(chosen[0])
    return chosen


@st.composite
def method_params(draw: st.DrawFn, chosen: list[str], layers: list[str]) -> dict[str, str]:
    """A few parameters: mostly those of the `chosen` methods (plain or "method.param"),
    sometimes any method's or invented names."""
    own = sorted(
        {p for m in chosen if m in REGISTRY for p in REGISTRY[m].params}
        | {f"{m}.{p}" for m in chosen if m in REGISTRY for p in REGISTRY[m].params}
    )
    anyone = st.one_of(st.sampled_from(PARAM_NAMES), st.sampled_from(QUALIFIED), TEXT)
    names = st.one_of(st.sampled_from(own), st.sampled_from(own), anyone) if own else anyone
    params = {}
    for key in draw(st.lists(names, max_size=3, unique=True)):
        params[key] = draw(_value_for(key, layers))
    return params


def _value_for(key: str, layers: list[str]) -> st.SearchStrategy[str]:
    name = key.split(".")[-1]
    if name == "layer" and layers:
        return st.one_of(st.sampled_from(layers), TEXT, NUMBER_WORDS)
    if any(cls.params[name].type is float for cls in REGISTRY.values() if name in cls.params):
        return FLOAT_PARAM_VALUES
    return PARAM_VALUES


def targets(classes: list[str]) -> st.SearchStrategy[str]:
    """Class names, indices (in range, past it, negative, huge, unicode digits), lists."""
    one = st.one_of(
        st.sampled_from(classes),
        st.integers(min_value=-3, max_value=len(classes) + 3).map(str),
        NUMBER_WORDS,
        NUMBER_WORDS,
        HUGE_INTEGERS,
        TEXT,
    )
    return st.lists(one, max_size=3).map(",".join)


# -- images ---------------------------------------------------------------------------------------
def make_image(width: int, height: int, mode: str, seed: int) -> Image.Image:
    """Random pixels of `mode`, including 16-bit, 32-bit integer and float greys."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 2**16, (height, width), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-(2**31), 2**31 - 1, (height, width), dtype=np.int32))
    if mode == "F":  # with a NaN, an infinity or two among the samples, as floats can be
        grey = rng.normal(0, 1e3, (height, width)).astype(np.float32)
        grey.ravel()[rng.integers(0, grey.size, 2)] = rng.choice([np.nan, np.inf, -np.inf, 0], 2)
        return Image.fromarray(grey)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(rgb).convert(mode)


def encode_image(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def real_images(draw: st.DrawFn) -> bytes:
    """A real image file of any format and mode, odd sizes (1 x 1 to thin strips)."""
    fmt = draw(st.sampled_from(sorted(FORMAT_MODES)))
    mode = draw(st.sampled_from(FORMAT_MODES[fmt]))
    side = st.one_of(st.integers(1, 80), st.sampled_from([1, 2, 3, 47, 48, 49, 97, 301]))
    width, height = draw(side), draw(side)
    return encode_image(make_image(width, height, mode, draw(st.integers(0, 2**16))), fmt)


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` cut short, with bytes flipped, garbage spliced in, or its header kept alone."""
    how = draw(st.sampled_from(["intact", "truncate", "flip", "splice", "header"]))
    if how == "intact" or not data:
        return data
    if how == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "header":
        return data[:32] + draw(st.binary(max_size=256))
    if how == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    at = draw(st.integers(0, len(data)))
    return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """Anything a client might send as an image: random bytes, or a real file, maybe damaged."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=2048))
    return draw(damaged(draw(real_images())))


# -- tabular rows ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Literal:
    """JSON text written as it is: numbers no Python value prints (5000 digits, 1e400)."""

    text: str


def to_json(value: Any) -> str:
    """JSON with the literals Python's json module reads but refuses to write (NaN, Infinity,
    5000-digit integers): what any client library may produce."""
    if isinstance(value, Literal):
        return value.text
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return "{" + ",".join(f"{to_json(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


# Numbers no Python value prints: past int()'s 4300 digits, past float's range.
BIG_LITERALS = st.sampled_from(["1" * 5000, "1" * 400, "1e400", "-1e400", "1E999", "-0.0"])
# The values at the edges of what JSON and Python read: each in turn, often.
EDGE_VALUES = st.one_of(
    BIG_LITERALS.map(Literal),
    st.sampled_from(
        [math.nan, math.inf, -math.inf, 1.8e308, -1e-320, 2**63, -(2**63), True, None, [], {}]
    ),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.integers(1, 200_000).map(lambda n: "x" * n),  # huge strings, bounded below the body limit
    st.sampled_from(["", " ", "2014-02-30", "2014-01-06T10:00:00", "0", "a", "#na#", "None"]),
    BIG_LITERALS.map(Literal),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def rows(draw: st.DrawFn) -> dict[str, Any]:
    """ROW with a column or two dropped, given a value of any JSON type (a scalar mostly, so
    that the rest of the row gets read), or added."""
    row: dict[str, Any] = dict(ROW)
    columns = st.lists(st.sampled_from(sorted(ROW)), max_size=2, unique=True)
    for column in draw(columns):
        del row[column]
    for column in draw(columns):
        row[column] = draw(st.one_of(EDGE_VALUES, SCALARS, JSON_VALUES))
    row.update(draw(st.dictionaries(TEXT, JSON_VALUES, max_size=2)))
    return row


@st.composite
def row_bodies(draw: st.DrawFn) -> str:
    """A request body: one row, a list of rows, {"rows": [...]}, or another JSON value."""
    many = st.lists(rows(), max_size=3)
    shape = draw(st.sampled_from(["row", "list", "rows", "other"]))
    if shape == "row":
        return to_json(draw(rows()))
    if shape == "list":
        return to_json(draw(many))
    if shape == "rows":
        return to_json({"rows": draw(many)})
    return to_json(draw(JSON_VALUES))
