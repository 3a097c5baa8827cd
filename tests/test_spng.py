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
from service.encode import PNG_SIGNATURE, chunk
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
    "random noise, level 9": saved(random_image(120, 80, seed=2), compress_level=9),
    "stored (level 0)": saved(random_image(31, 29, seed=3), compress_level=0),
    "text chunk": saved(photo(40, 30), pnginfo=text_chunks()),
    "one pixel": saved(Image.new("RGB", (1, 1), (9, 8, 7))),
}


def size(data: bytes) -> tuple[int, int]:
    """The size Pillow reads from the header: what the server checks against its limit."""
    width, height = Image.open(io.BytesIO(data)).size
    return width, height


def same_as_libspng(data: bytes) -> None:
    """spng.load gives what pyspng.load gives on the file as sent: the pixels, or a refusal."""
    try:
        expected = pyspng.load(data)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            spng.load(data, size(data))
        return
    got = spng.load(data, size(data))
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("name", list(CASES))
def test_the_fast_path_gives_libspng_s_pixels(name: str) -> None:
    data = CASES[name]
    assert spng._restored(data, size(data)) is not None  # taken
    same_as_libspng(data)


def _with_chunk(data: bytes, kind: bytes, body: bytes, at: int) -> bytes:
    return data[:at] + b"".join(chunk(kind, body)) + data[at:]


def _idat_at(data: bytes) -> int:
    return data.index(b"IDAT") - 4


def _header(width: int, height: int, depth: int = 8, colour: int = 0, interlace: int = 0) -> bytes:
    return struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)


def _png(*chunks: tuple[bytes, bytes]) -> bytes:
    return PNG_SIGNATURE + b"".join(b"".join(chunk(kind, body)) for kind, body in chunks)


def test_what_the_fast_path_leaves_is_decoded_or_refused_as_before() -> None:
    good = CASES["rgb photo, several IDAT chunks"]
    rows = zlib.compress(bytes(17 * 8))  # 8 rows of 16 grey pixels, filter byte 0
    split = _with_chunk(good, b"tEXt", b"a\x00b", good.index(b"IDAT", _idat_at(good) + 8) - 4)
    bad_crc = bytearray(good)
    bad_crc[_idat_at(good) + 20] ^= 0xFF  # a byte of compressed data: the CRC no longer fits
    texts = [(b"tEXt", b"k\x00%d" % i) for i in range(spng.MAX_CHUNKS)]
    cases = {
        "interlaced": _png((b"IHDR", _header(16, 8, interlace=1)), (b"IDAT", rows), (b"IEND", b"")),
        "16-bit": _png((b"IHDR", _header(8, 8, depth=16)), (b"IDAT", rows), (b"IEND", b"")),
        "truncated": good[: len(good) // 2],
        "bad CRC": bytes(bad_crc),
        "chunks between IDATs": split,
        "not a PNG": b"GIF89a" + good,
        "too many chunks first": _png(
            (b"IHDR", _header(16, 8)), *texts, (b"IDAT", rows), (b"IEND", b"")
        ),
    }
    for name, data in cases.items():
        if name != "not a PNG":
            assert spng._restored(data, (16, 8) if name != "16-bit" else (8, 8)) is None, name
        else:
            assert spng._restored(data, (640, 480)) is None
    for name in ("16-bit", "too many chunks first", "truncated", "bad CRC", "chunks between IDATs"):
        same_as_libspng(cases[name])


def test_a_second_header_or_another_size_keeps_the_fast_path_shut() -> None:
    """The inflate is bounded by the size the caller checked: a file whose first IHDR says
    20000 x 20000 and whose second says 16 x 16 (the one Pillow reports) is not inflated
    here, nor is one whose size is not the one passed in."""
    rows = zlib.compress(bytes(17 * 16))
    bomb = _png(
        (b"IHDR", _header(20000, 20000)),
        (b"IHDR", _header(16, 16)),
        (b"IDAT", rows),
        (b"IEND", b""),
    )
    assert size(bomb) == (16, 16)
    assert spng._restored(bomb, (16, 16)) is None
    with pytest.raises(RuntimeError):  # libspng refuses the file as sent
        spng.load(bomb, (16, 16))
    plain = _png((b"IHDR", _header(16, 16)), (b"IDAT", rows), (b"IEND", b""))
    assert spng._restored(plain, (16, 16)) is not None
    assert spng._restored(plain, (16, 15)) is None


def test_chunks_after_the_image_data_are_passed_on_as_sent() -> None:
    rows = zlib.compress(bytes(17 * 8))
    texts = [(b"tEXt", b"k\x00%d" % i) for i in range(5000)]
    data = _png((b"IHDR", _header(16, 8)), (b"IDAT", rows), *texts, (b"IEND", b""))
    stored = spng._restored(data, (16, 8))
    assert stored is not None and stored.endswith(data[data.index(b"tEXt") - 4 :])
    same_as_libspng(data)


def test_the_inflate_is_bounded_by_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    """Image data that inflates to more than width and height allow is inflated no further
    than that bound plus one byte (a bomb costs nothing); libspng then decodes the file."""
    inflated: list[int] = []
    real = spng.decompressobj

    class Spy:
        def __init__(self) -> None:
            self.inner = real()

        def decompress(self, data: bytes, max_length: int) -> bytes:
            out = self.inner.decompress(data, max_length)
            inflated.append(len(out))
            return out

        @property
        def eof(self) -> bool:
            return bool(self.inner.eof)

    monkeypatch.setattr(spng, "decompressobj", Spy)
    big = zlib.compress(bytes(10_000_000), 9)  # 10 MB of zeros, for a 16 x 16 grey image
    bomb = _png((b"IHDR", _header(16, 16)), (b"IDAT", big), (b"IEND", b""))
    assert spng._restored(bomb, (16, 16)) is None
    assert inflated == [17 * 16 + 1]
