"""Encode an overlay picture for the wire: PNG (the default), JPEG or WebP.

PNG comes from fpng (`fpng_py`), a PNG writer built for speed: at 256 x 256 it takes
about 0.4 ms, where Up-filtered rows deflated by ISA-L took 1.3 ms and Pillow's PNG writer
about 9 ms, for files about 6 % larger than ISA-L's. The file is an ordinary 8-bit RGB PNG
that any decoder reads; a test checks it decodes to the same pixels. JPEG and WebP come
from Pillow. `chunk` writes a PNG chunk for service.spng.

Example: ``encode(overlay_image, "webp")`` -> bytes; ``MEDIA_TYPES["webp"]`` -> "image/webp"
"""

from __future__ import annotations

import io
import struct

from fpng_py import fpng_encode_image_to_memory
from isal.isal_zlib import crc32 as _crc32
from PIL import Image

FORMATS = ("png", "jpeg", "webp")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
JPEG_QUALITY = 90
WEBP_QUALITY = 85
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode(image: Image.Image, format: str = "png") -> bytes:
    """`image` as `format` bytes (one of FORMATS)."""
    if format == "png":
        return png(image)
    buffer = io.BytesIO()
    if format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    elif format == "webp":
        image.save(buffer, format="WEBP", quality=WEBP_QUALITY, method=0)
    else:
        raise ValueError(f"format must be one of {FORMATS}, not {format!r}")
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    """An 8-bit RGB PNG of `image`, written by fpng. fpng reads width x height x 3 bytes
    without checking: an RGB image's `tobytes` is exactly that, packed rows of R, G, B."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    encoded: bytes = fpng_encode_image_to_memory(rgb.tobytes(), rgb.width, rgb.height, 3)
    return encoded


Part = bytes | memoryview


def chunk(kind: bytes, *body: Part) -> list[Part]:
    """A PNG chunk's pieces, to join: length, kind, the body (given in one piece or several,
    which are not copied here), CRC."""
    length = sum(len(piece) for piece in body)
    return [struct.pack(">I", length), kind, *body, struct.pack(">I", chunk_crc(kind, *body))]


def chunk_crc(kind: bytes, *body: Part) -> int:
    """The CRC a PNG chunk carries: CRC-32 of its kind and body (in any number of pieces)."""
    crc = _crc32(kind)
    for piece in body:
        crc = _crc32(piece, crc)
    return int(crc) & 0xFFFFFFFF
