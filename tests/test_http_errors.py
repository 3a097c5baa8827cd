"""Bad input gets the documented JSON error and a 4xx; the server keeps serving after each."""

from __future__ import annotations

import io
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.helpers import png, random_image


def _bomb() -> bytes:
    """A 10000 x 10000 greyscale PNG that compresses to ~100 kB: a decompression bomb."""
    buffer = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buffer, format="PNG")
    return buffer.getvalue()


CASES = {
    "empty": (b"", 400, "bad_input"),
    "not an image": (b"hello, I am text pretending to be a PNG", 400, "bad_input"),
    "truncated": (png(random_image(64, 64))[:300], 400, "bad_input"),
    "bomb": (_bomb(), 413, "payload_too_large"),
    "oversized body": (
        b"\x89PNG" + zlib.compress(b"x") * 1 + b"0" * 2_100_000,
        413,
        "payload_too_large",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_images(client: TestClient, shapes_png: bytes, case: str) -> None:
    body, status, code = CASES[case]
    for route in ("/predictions/cnn", "/heatmaps/cnn", "/explanations/cnn"):
        response = client.post(route, content=body)
        assert response.status_code == status, (route, response.text)
        assert response.json()["code"] == code
        assert response.json()["message"]
    assert client.post("/predictions/cnn", content=shapes_png).status_code == 200


def test_unknown_model_is_404(client: TestClient, shapes_png: bytes) -> None:
    for route in ("/predictions/nope", "/heatmaps/nope", "/explanations/nope", "/models/nope"):
        method = client.get if route.startswith("/models") else client.post
        response = method(route, content=shapes_png) if method == client.post else method(route)
        assert response.status_code == 404
        assert response.json()["code"] == "model_not_found"
        assert "cnn" in response.json()["message"]


def test_json_body_to_an_image_model_is_415(client: TestClient) -> None:
    response = client.post("/predictions/cnn", json={"rows": []})
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"


def test_multipart_without_data_field(client: TestClient) -> None:
    response = client.post("/predictions/cnn", files={"other": ("x.txt", b"hi", "text/plain")})
    assert response.status_code == 400
    assert "data" in response.json()["message"]


def test_unknown_method_and_bad_target_are_422(client: TestClient, shapes_png: bytes) -> None:
    response = client.post("/explanations/cnn?methods=nonsense", content=shapes_png)
    assert response.status_code == 422 and "nonsense" in response.json()["message"]
    response = client.post("/explanations/cnn?target=hexagon", content=shapes_png)
    assert response.status_code == 422 and "hexagon" in response.json()["message"]
    response = client.post("/explanations/cnn?bogus=1", content=shapes_png)
    assert response.status_code == 422 and "bogus" in response.json()["message"]


def test_unknown_route_is_json_404(client: TestClient) -> None:
    response = client.get("/no/such/route")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
