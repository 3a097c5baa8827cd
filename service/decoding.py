"""Image uploads for a model: decoded into its input batch, and overlays drawn over them.

Both run where the server decodes: in its decode processes (service.decode_pool), which
never import torch, or in the codec thread pool; the checks and refusals are the same
either way. An explanation's pictures stay where they were decoded: `decode_uploads`
keeps them under the request's key, and `draw_overlays`, sent to the same process after
the forward pass, takes them back, so the pictures never cross a pipe. What is kept is
bounded (`KEPT_REQUESTS`, `KEPT_PIXELS`; oldest dropped first). `draw_overlays` is sent
without the uploads, so they cross the pipe once; when its pictures were dropped it raises
`Forgotten`, and the caller sends it again with the uploads, to be decoded again.

Example: ``decode_uploads([png_bytes], 50_000_000, handler.transform)`` -> [1, 3, H, W] array
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service import render
from service.encode import encode
from service.errors import PayloadTooLarge
from service.imaging import allow_pixels, decode_image
from service.preprocess import ImageTransform

# What is kept between decoding and drawing: at most this many requests' pictures, of at most
# this many pixels in all (about 200 MB). Pictures of a request that failed before its
# overlays were drawn are never taken: these bounds drop them.
KEPT_REQUESTS = 256
KEPT_PIXELS = 64_000_000
_kept: OrderedDict[int, list[Image.Image]] = OrderedDict()
_kept_lock = threading.Lock()  # the codec pool's threads share `_kept` when it is in-process


class Forgotten(Exception):
    """`draw_overlays` was sent without the uploads, and their pictures are no longer kept:
    send it again with them. Control flow between the flow and the decode process, never a
    client's error (so not a GlimpseError)."""


@dataclass(frozen=True)
class Drawn:
    """One overlay: the encoded picture, its (width, height), and its scale relative to the
    upload (below 1.0 when the upload was larger than the overlay pixel limit)."""

    picture: bytes
    size: tuple[int, int]
    scale: float


def prepare() -> None:
    """Load, before the first call, what decoding and drawing need: this module's imports
    (numpy, Pillow, libspng, ISA-L) and the overlay colour tables (matplotlib)."""
    render.prepare()


def decode_upload(data: bytes | str, max_pixels: int, transform: ImageTransform) -> Image.Image:
    """An upload -> its RGB image, upright; BadInput or PayloadTooLarge (over `max_pixels`,
    as sent or after the model's resize step) otherwise."""
    if isinstance(data, str):  # text a door decoded as latin-1: the bytes as sent
        data = data.encode("latin-1")
    image = decode_image(data or b"", max_pixels)
    # Resize(256) makes a thin strip huge (2000x1 -> 512000x256): bound that too.
    width, height = transform.resized_size(*image.size)
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"the image is {image.width}x{image.height}; the model's preprocessing resizes it "
            f"to {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (GLIMPSE_MAX_IMAGE_PIXELS); send an image of a less extreme shape"
        )
    return image


def decode_uploads(
    uploads: list[bytes | str],
    max_pixels: int,
    transform: ImageTransform,
    keep: int | None = None,
) -> np.ndarray:
    """Every upload decoded and preprocessed: the model's input batch [N, 3, H, W] (float32,
    normalised); the first bad upload raises. With `keep`, the decoded pictures are kept
    under that key for `draw_overlays`."""
    allow_pixels(max_pixels)  # Pillow's own bomb limit, in whichever process this runs
    images = [decode_upload(data, max_pixels, transform) for data in uploads]
    if keep is not None:
        with _kept_lock:
            _kept[keep] = images
            while len(_kept) > KEPT_REQUESTS or (
                len(_kept) > 1 and _pixels(_kept.values()) > KEPT_PIXELS
            ):
                _kept.popitem(last=False)
    return transform.array(images)


def draw_overlays(
    keep: int,
    uploads: list[bytes | str] | None,
    max_pixels: int,
    transform: ImageTransform,
    fit_pixels: int | None,
    format: str,
    maps: list[tuple[int, np.ndarray, bool]],
) -> list[Drawn]:
    """Each map, given as (upload index, normalised grid, signed), laid over its upload and
    encoded as `format`, at the upload's size or scaled down to `fit_pixels` (None: no
    limit), stretched over the part of the picture the model saw. The pictures are the ones
    `decode_uploads` kept under `keep` (then forgotten), or `uploads` decoded again;
    Forgotten when neither is at hand."""
    with _kept_lock:
        images = _kept.pop(keep, None)
    if images is None:
        if uploads is None:
            raise Forgotten(f"the pictures kept under {keep} were dropped; send the uploads")
        images = [decode_upload(data, max_pixels, transform) for data in uploads]
    bases: dict[int, tuple[Image.Image, tuple[float, float, float, float], float]] = {}
    drawn = []
    for index, grid, signed in maps:
        if index not in bases:
            bases[index] = _base(images[index], transform, fit_pixels)
        picture, box, scale = bases[index]
        overlay = render.overlay(picture, grid, signed, box=box)
        drawn.append(Drawn(encode(overlay, format), overlay.size, scale))
    return drawn


def _base(
    image: Image.Image, transform: ImageTransform, fit_pixels: int | None
) -> tuple[Image.Image, tuple[float, float, float, float], float]:
    """What overlays are drawn on: the image, or a copy scaled to fit `fit_pixels`; the part
    the model saw (left, top, right, bottom) in its pixels; and its scale."""
    box = transform.source_box(*image.size)
    picture, scale = render.fit(image, fit_pixels) if fit_pixels is not None else (image, 1.0)
    if picture is not image:
        sx, sy = picture.width / image.width, picture.height / image.height
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    return picture, box, scale


def _pixels(kept: Iterable[list[Image.Image]]) -> int:
    return sum(image.width * image.height for images in kept for image in images)
