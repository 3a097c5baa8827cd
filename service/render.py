"""Turn an h x w explanation map into a picture laid over the original image.

Unsigned maps (activation, Grad-CAM) use magma, a perceptually uniform map
from black through purple to yellow; signed maps (gradients, IG) use a
diverging blue-white-red map centred on zero.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
from PIL import Image


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
    """Bilinear resize of a float [h, w] grid to `size` = (width, height)."""
    image = Image.fromarray(np.asarray(grid, dtype=np.float32), mode="F")
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def colourise(grid: np.ndarray, signed: bool) -> np.ndarray:
    """A normalised map ([0, 1] or [-1, 1]) -> [h, w, 3] uint8 colours."""
    position = (grid + 1) / 2 if signed else grid
    index = np.clip(np.round(position * 255), 0, 255).astype(np.uint8)
    colours: np.ndarray = _lut("RdBu_r" if signed else "magma")[index]
    return colours


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
    the image, which the model never saw, is dimmed. Default: the whole image.
    """
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = base.shape[:2]
    left, top, right, bottom = box if box is not None else (0.0, 0.0, width, height)
    if (left, top, right, bottom) == (0, 0, width, height):
        colours = colourise(upsample(grid, (width, height)), signed).astype(np.float32)
        return _blend(base, colours, alpha)
    inside_w, inside_h = max(1, round(right - left)), max(1, round(bottom - top))
    colours = colourise(upsample(grid, (inside_w, inside_h)), signed).astype(np.float32)
    x0, y0 = round(left), round(top)
    # The map's pixels that fall inside the image (a crop larger than the image overhangs it).
    cx0, cy0 = max(0, -x0), max(0, -y0)
    cx1, cy1 = min(inside_w, width - x0), min(inside_h, height - y0)
    out = base * 0.5
    region = (slice(y0 + cy0, y0 + cy1), slice(x0 + cx0, x0 + cx1))
    out[region] = (1 - alpha) * base[region] + alpha * colours[cy0:cy1, cx0:cx1]
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def _blend(base: np.ndarray, colours: np.ndarray, alpha: float) -> Image.Image:
    blended = (1 - alpha) * base + alpha * colours
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
