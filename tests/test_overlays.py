"""Overlay pictures: the fast PNG writer is a real PNG, and format= works on both doors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import encode, render
from tests.helpers import random_image


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (256, 256), (641, 427)])
def test_png_decodes_to_the_same_pixels(size: tuple[int, int]) -> None:
    image = random_image(*size, seed=size[0])
    data = encode.png(image)
    back = Image.open(io.BytesIO(data))
    assert back.format == "PNG" and back.size == size and back.mode == "RGB"
    assert np.array_equal(np.asarray(back), np.asarray(image))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_png_of_another_mode_holds_its_rgb_pixels(mode: str) -> None:
    image = random_image(33, 17, seed=3).convert(mode)
    back = Image.open(io.BytesIO(encode.png(image)))
    assert back.mode == "RGB" and np.array_equal(np.asarray(back), np.asarray(image.convert("RGB")))


@pytest.mark.parametrize(
    ("grid", "size"),
    [((12, 12), (256, 256)), ((1, 1), (5, 7)), ((7, 3), (641, 427)), ((20, 30), (10, 5))],
)
def test_upsample_is_pillow_s_bilinear_resize(grid: tuple[int, int], size: tuple[int, int]) -> None:
    """The matrix products give Pillow's own resize (up or down) to float rounding."""
    values = np.random.default_rng(grid[0]).random(grid).astype(np.float32) * 2 - 1
    pillow = np.asarray(Image.fromarray(values, mode="F").resize(size, Image.Resampling.BILINEAR))
    got = render.upsample(values, size)
    assert got.shape == pillow.shape == (size[1], size[0]) and got.dtype == np.float32
    assert np.abs(got - pillow).max() <= 1e-6


def test_only_small_weight_tables_are_kept() -> None:
    """A long side (a thin strip's overlay) gets its weights made afresh, not cached."""
    grid = np.ones((12, 12), np.float32)
    render.upsample(grid, (256, 256))
    kept = render._cached_weights.cache_info().currsize
    wide = render.upsample(grid, (30_000, 256))  # 30,000 x 12 weights: over CACHED_WEIGHTS
    assert wide.shape == (256, 30_000) and np.allclose(wide, 1.0)
    assert render._cached_weights.cache_info().currsize == kept


def test_overlay_blends_like_the_float_formula() -> None:
    """Pillow's palette and blend give the picture the numpy formula gives, to one level."""
    image = random_image(64, 48, seed=3)
    grid = np.random.default_rng(0).random((6, 8)).astype(np.float32)
    for signed in (False, True):
        values = grid * 2 - 1 if signed else grid
        colours = render.colourise(render.upsample(values, image.size), signed)
        expected = 0.5 * np.asarray(image, np.float32) + 0.5 * colours
        got = np.asarray(render.overlay(image, values, signed), np.float32)
        assert np.abs(got - expected).max() <= 1.0


def test_overlay_outside_the_box_is_dimmed() -> None:
    image = Image.new("RGB", (100, 80), (200, 200, 200))
    out = np.asarray(render.overlay(image, np.ones((4, 4), np.float32), False, box=(20, 0, 80, 80)))
    assert (out[:, :20] == 100).all() and (out[:, 80:] == 100).all()
    assert not (out[:, 20:80] == 100).all()


def test_dimming_halves_every_value_exactly_and_leaves_the_upload_alone() -> None:
    values = np.tile(np.arange(256, dtype=np.uint8)[:, None, None], (1, 8, 3))  # 256 x 8
    image = Image.fromarray(values)
    before = image.tobytes()
    out = np.asarray(render.overlay(image, np.ones((2, 2), np.float32), False, box=(4, 0, 8, 256)))
    assert np.array_equal(out[:, :4], values[:, :4] // 2)
    assert image.tobytes() == before


@pytest.mark.parametrize(("format", "media"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_heatmap_formats(client: TestClient, shapes_png: bytes, format: str, media: str) -> None:
    response = client.post(f"/heatmaps/cnn?format={format}", content=shapes_png)
    assert response.status_code == 200
    assert response.headers["content-type"] == encode.MEDIA_TYPES[format]
    picture = Image.open(io.BytesIO(response.content))
    assert picture.format == media and picture.size == Image.open(io.BytesIO(shapes_png)).size


def test_explanations_carry_the_asked_format(client: TestClient, shapes_png: bytes) -> None:
    body = client.post("/explanations/cnn?format=webp", content=shapes_png).json()
    entry = body["explanations"]["activation"]
    assert "overlay_webp" in entry and "overlay_png" not in entry


def test_an_unknown_format_is_a_422(client: TestClient, shapes_png: bytes) -> None:
    response = client.post("/heatmaps/cnn?format=gif", content=shapes_png)
    assert response.status_code == 422 and "png" in response.json()["message"]
