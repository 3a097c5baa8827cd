"""service.spng: PNG uploads inflated by ISA-L and decoded by libspng give exactly the pixels
libspng gives from the file as sent; what the fast path does not take, libspng decodes (or
refuses) as before."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pyspng
import pytest
from PIL import Image, PngImagePlugin

from service import spng
from service.encode import chunk
from tests.helpers import random_image


def saved(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def photo(width: int, height: int) -> Image.Image:
    """Smooth gradients with noise: Pillow's adaptive filter picks Sub, Up, Average and Paeth."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width, 1), y * 255 // max(height, 1), (x + y) % 256], -1)
    noise = np.random.default_rng(width).integers(0, 12, (height, width, 3))
    return Image.fromarray(((base + noise) % 256).astype(np.uint8))


def text_chunks() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "before the image data")
    return info


CASES = {
    "rgb photo, several IDAT chunks": saved(photo(640, 480)),
    "rgba": saved(photo(97, 71).convert("RGBA")),
    "grey": saved(photo(64, 48).convert("L")),
    "palette": saved(photo(50, 40).convert("P")),
    "1-bit": saved(photo(37, 19).convert("1")),
    "16-bit grey": saved(Image.fromarray(np.arange(64 * 8, dtype=np.uint16).reshape(8, 64) * 99)),
    "random noise, level 9": saved(random_image(120, 80, seed=2), compress_level=9),
    "stored (level 0)": saved(random_image(31, 29, seed=3), compress_level=0),
    "text chunk": saved(photo(40, 30), pnginfo=text_chunks()),
    "one pixel": saved(Image.new("RGB", (1, 1), (9, 8, 7))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_fast_path_gives_libspng_s_pixels(name: str) -> None:
    data = CASES[name]
    assert spng._restored(data) is not None  # taken
    fast, plain = spng.load(data), pyspng.load(data)
    assert fast.dtype == plain.dtype and fast.shape == plain.shape
    assert np.array_equal(fast, plain)


def _with_chunk(data: bytes, kind: bytes, body: bytes, at: int) -> bytes:
    return data[:at] + b"".join(chunk(kind, body)) + data[at:]


def _idat_at(data: bytes) -> int:
    return data.index(b"IDAT") - 4


def test_what_the_fast_path_leaves_is_decoded_or_refused_as_before() -> None:
    good = CASES["rgb photo, several IDAT chunks"]
    header = bytearray(CASES["grey"])
    header[8 + 8 + 12] = 1  # IHDR's interlace byte: Adam7
    header[8 + 8 + 13 : 8 + 8 + 17] = struct.pack(
        ">I", zlib.crc32(bytes(header[12:29])) & 0xFFFFFFFF
    )
    split = _with_chunk(good, b"tEXt", b"a\x00b", good.index(b"IDAT", _idat_at(good) + 8) - 4)
    bad_crc = bytearray(good)
    bad_crc[_idat_at(good) + 20] ^= 0xFF  # a byte of compressed data: the CRC no longer fits
    cases = {
        "interlaced": bytes(header),
        "truncated": good[: len(good) // 2],
        "bad CRC": bytes(bad_crc),
        "chunks between IDATs": split,
        "not a PNG": b"GIF89a" + good,
    }
    for name, data in cases.items():
        assert spng._restored(data) is None, name
        try:
            expected: np.ndarray | Exception = pyspng.load(data)
        except RuntimeError as exc:
            expected = exc
        if isinstance(expected, Exception):
            with pytest.raises(RuntimeError):
                spng.load(data)
        else:
            assert np.array_equal(spng.load(data), expected), name


def test_the_inflate_is_bounded_by_the_header() -> None:
    """Image data that inflates to more than width and height allow is not inflated past
    that bound (a bomb costs nothing); libspng then decodes the file as sent."""
    image = Image.new("L", (16, 16))
    data = bytearray(saved(image, compress_level=0))
    at = _idat_at(bytes(data))
    (length,) = struct.unpack(">I", data[at : at + 4])
    big = zlib.compress(bytes(10_000_000), 9)  # 10 MB of zeros, for a 16 x 16 image
    bomb = bytes(data[:at]) + bytes(data[at + 12 + length :])
    bomb = _with_chunk(bomb, b"IDAT", big, at)
    assert spng._restored(bomb) is None
