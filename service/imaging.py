"""Decode client image bytes into an RGB PIL image, safely.

PNG, JPEG, GIF, WebP, BMP and TIFF are accepted, whatever their mode (RGBA, palette,
greyscale, CMYK, 16-bit) and EXIF orientation; Pillow's other plugins (EPS, PSD, ICO,
...) never see client bytes. The pixel count is checked from the header before any
pixel is decoded, so a decompression bomb costs nothing, and Pillow's own bomb check
(`Image.MAX_IMAGE_PIXELS`) is set to glimpse's limit before the first image is opened.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import BadInput, PayloadTooLarge

try:
    from service import spng
except ImportError:  # pragma: no cover - pyspng is an optional speed-up; Pillow decodes PNGs
    spng = None  # type: ignore[assignment]

DEFAULT_MAX_PIXELS = 50_000_000
# Pillow's format ids, and how a refusal names them.
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
ACCEPTED = "PNG, JPEG, GIF, WebP, BMP or TIFF"


PILLOW_DEFAULT_PIXELS = Image.MAX_IMAGE_PIXELS


def allow_pixels(max_pixels: int) -> None:
    """Set Pillow's own decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`, global to the
    process) to glimpse's `max_pixels` in place of Pillow's default; if some model in this
    process was given a larger limit already, keep that one, so that Pillow never refuses
    what a model accepts. Each image is held to its model's own limit in `decode_image`.
    Image handlers call this when they are set up, before they open any image."""
    current = Image.MAX_IMAGE_PIXELS
    if current is None or current == PILLOW_DEFAULT_PIXELS or current < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def image_file(where: str, value: Any, hint: str = "") -> bytes:
    """An image file sent inside JSON: base64 text (also `{"b64": ...}`, KServe's form), or
    bytes as they came; BadInput naming `where` otherwise, with `hint` appended."""
    if isinstance(value, Mapping) and "b64" in value:
        value = value["b64"]
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput(
                f"{where} is not valid base64: an image sent as JSON is the image file in "
                f"base64{hint}"
            ) from None
    raise BadInput(
        f"{where} must be the image file in base64, as a string, not {type(value).__name__}{hint}"
    )


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes -> RGB image in its upright orientation; BadInput or PayloadTooLarge otherwise."""
    if not data:
        raise BadInput("the image is empty: send the image file's bytes as the body")
    try:
        with warnings.catch_warnings():
            # Pillow warns about what it can read past (corrupt EXIF, odd chunks): not errors.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise PayloadTooLarge(
                    f"the image is {width}x{height} = {width * height} pixels, over the limit "
                    f"of {max_pixels} (GLIMPSE_MAX_IMAGE_PIXELS); send a smaller image"
                )
            decoded = _fast_png(data, image) or image
            decoded.load()
            upright = ImageOps.exif_transpose(decoded) or decoded
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(
            f"the image has too many pixels ({exc}); the limit is {max_pixels} "
            "(GLIMPSE_MAX_IMAGE_PIXELS): send a smaller image"
        ) from None
    except UnidentifiedImageError:
        raise BadInput(
            f"the body is not an image in an accepted format ({ACCEPTED}): send one of those "
            "(other image formats are refused)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInput(f"the image is truncated or corrupt ({exc})") from None
    return to_rgb(upright)


def _fast_png(data: bytes, image: Image.Image) -> Image.Image | None:
    """Plain 8-bit PNGs decoded by libspng (pyspng, inflated by ISA-L: service.spng), about
    twice as fast as Pillow's decoder and to the same pixels; None for anything else
    (Pillow decodes it)."""
    plain = image.format == "PNG" and image.mode in ("RGB", "RGBA", "L")
    if spng is None or not plain or {"transparency", "exif"} & set(image.info):
        return None
    try:
        pixels = spng.load(data, image.size)
    except RuntimeError:  # truncated or corrupt: Pillow's decoder says what is wrong
        return None
    if pixels.dtype != np.uint8:  # 16-bit samples: Pillow's own reduction to 8 bits
        return None
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    return Image.fromarray(pixels)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode -> RGB; alpha is composited on white, 16/32-bit greys are rescaled to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = np.asarray(image, dtype=np.float64)
        finite = grey[np.isfinite(grey)]  # a float image may hold NaN and infinities
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        grey = np.nan_to_num(grey, nan=low, posinf=high, neginf=low)
        scaled = (grey - low) / (high - low) * 255 if high > low else np.zeros_like(grey)
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
