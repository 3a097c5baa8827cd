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
    return _lut("RdBu_r" if signed else "magma")[index]


def overlay(image: Image.Image, grid: np.ndarray, signed: bool, alpha: float = 0.5) -> Image.Image:
    """Lay a normalised [h, w] map, upsampled to the image's own size, over the image."""
    upsampled = upsample(grid, image.size)
    colours = colourise(upsampled, signed).astype(np.float32)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1 - alpha) * base + alpha * colours
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
