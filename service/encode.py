"""Encode an overlay picture for the wire: PNG (the default), JPEG or WebP.

PNG is written here rather than by Pillow: each row gets the "Up" filter and the
deflate stream comes from ISA-L (`isal`, zlib's format, a few times faster than zlib
at its fastest level); the file is an ordinary PNG that any decoder reads, and a test
checks it decodes to the same pixels. At 256 x 256 this takes about 1.1 ms where
Pillow's PNG writer takes about 9 ms. JPEG and WebP come from Pillow.

Example: ``encode(overlay_image, "webp")`` -> bytes; ``MEDIA_TYPES["webp"]`` -> "image/webp"
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

try:  # ISA-L's deflate and CRC; zlib writes the same format, slower
    from isal.isal_zlib import compress as _deflate
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a dependency; keep serving without it
    from zlib import compress as _deflate
    from zlib import crc32 as _crc32

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
    """An 8-bit RGB PNG: Up-filtered rows, one deflate stream (level 1). Up beat Sub on both
    the shapes overlays and scikit-learn's sample photos: about 10 % faster, 2-7 % smaller."""
    pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up: each byte minus the byte above it
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:], casting="unsafe")
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    data = _deflate(filtered, 1)
    # One copy of the compressed data, into the file: each chunk is length, kind, data, CRC.
    return b"".join(
        [PNG_SIGNATURE, *chunk(b"IHDR", header), *chunk(b"IDAT", data), *chunk(b"IEND", b"")]
    )


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
