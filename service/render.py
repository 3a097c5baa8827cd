"""Turn an h x w explanation map into a picture laid over the original image.

Unsigned maps (activation, Grad-CAM) use magma, a perceptually uniform map
from black through purple to yellow; signed maps (gradients, IG) use a
diverging blue-white-red map centred on zero.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import numpy as np
from PIL import Image

UNSIGNED_COLOURS, SIGNED_COLOURS = "magma", "RdBu_r"  # matplotlib's names


def prepare() -> None:
    """Build both colour tables now (importing matplotlib, about 0.5 s), not on the first
    overlay a request asks for."""
    _colours(signed=False)
    _colours(signed=True)


def _colours(signed: bool) -> np.ndarray:
    """[256, 3] uint8: the diverging map for signed maps, magma for the others."""
    return _lut(SIGNED_COLOURS if signed else UNSIGNED_COLOURS)


@cache
def _lut(name: str) -> np.ndarray:
    import matplotlib  # imported lazily: only rendering needs it

    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def normalise(values: np.ndarray, signed: bool) -> np.ndarray:
    """Scale to [0, 1] (unsigned: divide by the max) or [-1, 1] (signed: divide by max |v|)."""
    values = np.asarray(values, dtype=np.float32)
    if not signed:
        values = np.clip(values - min(0.0, float(values.min())), 0, None)
    scale = float(np.abs(values).max())
    return values / scale if scale > 0 else np.zeros_like(values)


def upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float [h, w] grid to `size` = (width, height): Pillow's resize
    (the same weights, so the same values to float rounding), done as two small matrix
    products, about 2.5x faster than Pillow's own pass at 12 x 12 -> 256 x 256."""
    values = np.asarray(grid, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"a map to upsample is [h, w], not {list(values.shape)}")
    width, height = size
    rows, columns = _weights(values.shape[0], height), _weights(values.shape[1], width)
    resized: np.ndarray = rows @ values @ columns.T
    return resized


def _weights(before: int, after: int) -> np.ndarray:
    """[after, before] float32: row i holds the weights Pillow's bilinear resize gives each
    of `before` samples for output sample i. Kept when they are at most CACHED_WEIGHTS
    values (1 MB; 64 pairs of sizes at most), made afresh when larger."""
    if after * before <= CACHED_WEIGHTS:
        return _cached_weights(before, after)
    return _made_weights(before, after)


CACHED_WEIGHTS = 2**18


@lru_cache(maxsize=64)
def _cached_weights(before: int, after: int) -> np.ndarray:
    return _made_weights(before, after)


def _made_weights(before: int, after: int) -> np.ndarray:
    """A resize is linear and each axis is resized on its own, so resizing the identity
    along one axis yields the weights exactly."""
    basis = Image.fromarray(np.eye(before, dtype=np.float32), mode="F")
    weights = np.asarray(basis.resize((after, before), Image.Resampling.BILINEAR), np.float32)
    weights = np.ascontiguousarray(weights.T)
    weights.setflags(write=False)  # shared by every call that gets it from the cache
    return weights


def colourise(grid: np.ndarray, signed: bool) -> np.ndarray:
    """A normalised map ([0, 1] or [-1, 1]) -> [h, w, 3] uint8 colours."""
    colours: np.ndarray = _colours(signed)[_indices(grid, signed)]
    return colours


def coloured(grid: np.ndarray, signed: bool) -> Image.Image:
    """The same colours as `colourise`, as an RGB image, looked up by Pillow (a palette)."""
    picture = Image.fromarray(_indices(grid, signed), mode="L")
    picture.putpalette(_colours(signed).tobytes(), rawmode="RGB")
    return picture.convert("RGB")


def _indices(grid: np.ndarray, signed: bool) -> np.ndarray:
    position = (grid + 1) / 2 if signed else grid
    indices: np.ndarray = np.clip(np.round(position * 255), 0, 255).astype(np.uint8)
    return indices


def overlay(
    image: Image.Image,
    grid: np.ndarray,
    signed: bool,
    alpha: float = 0.5,
    box: tuple[float, float, float, float] | None = None,
) -> Image.Image:
    """Lay a normalised [h, w] map over the image, at the image's own size.

    `box` (left, top, right, bottom, in the image's pixels) is the part of the image the
    model's input showed (a centre crop, say); the map is stretched over it and the rest of
    the image, which the model never saw, is dimmed. Default: the whole image. The map is
    upsampled as numbers, then coloured and blended by Pillow, in C.
    """
    base = image if image.mode == "RGB" else image.convert("RGB")  # read, never written
    width, height = base.size
    left, top, right, bottom = box if box is not None else (0.0, 0.0, width, height)
    if (round(left), round(top), round(right), round(bottom)) == (0, 0, width, height):
        return Image.blend(base, coloured(upsample(grid, (width, height)), signed), alpha)
    inside = (max(1, round(right - left)), max(1, round(bottom - top)))
    colours = coloured(upsample(grid, inside), signed)
    x0, y0 = round(left), round(top)
    # The part of the map that falls inside the image (a crop larger than the image overhangs).
    window = (max(0, -x0), max(0, -y0), min(inside[0], width - x0), min(inside[1], height - y0))
    region = (x0 + window[0], y0 + window[1], x0 + window[2], y0 + window[3])
    out = Image.blend(base, Image.new("RGB", base.size), 0.5)  # halved: v // 2, exactly
    out.paste(Image.blend(base.crop(region), colours.crop(window), alpha), region[:2])
    return out


def fit(image: Image.Image, max_pixels: int) -> tuple[Image.Image, float]:
    """`image` when it has at most `max_pixels` pixels, else a copy scaled down to fit, its
    aspect kept as far as whole pixels allow (a side is at least one pixel); and the scale,
    the smaller of new / old width and height (1.0 when unscaled)."""
    width, height = image.size
    if width * height <= max_pixels:
        return image, 1.0
    factor = math.sqrt(max_pixels / (width * height))
    # Each side rounds down, but to one pixel at least; the other side then has room for it.
    new_width = min(max(1, math.floor(width * factor)), max_pixels)
    new_height = min(max(1, math.floor(height * factor)), max_pixels)
    scaled = image.resize((new_width, new_height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return scaled, min(new_width / width, new_height / height)
