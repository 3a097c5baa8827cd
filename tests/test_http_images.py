"""The HTTP routes on a real (small) cnn.mar, as the README's curl examples use them."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.helpers import png, random_image


def test_ping(client: TestClient) -> None:
    assert client.get("/ping").json() == {"status": "Healthy"}


def test_models_list_and_detail(client: TestClient) -> None:
    models = client.get("/models").json()["models"]
    assert [m["name"] for m in models] == ["cnn"]
    detail = client.get("/models/cnn").json()
    assert detail["kind"] == "image"
    assert detail["classes"] == ["circle", "square", "triangle", "cross"]
    assert "activation" in [m["name"] for m in detail["explanations"]]


def test_prediction_raw_body_is_torchserve_shaped(client: TestClient, shapes_png: bytes) -> None:
    answer = client.post(
        "/predictions/cnn", content=shapes_png, headers={"content-type": "image/png"}
    ).json()
    assert set(answer) == {"circle", "square", "triangle", "cross"}
    assert abs(sum(answer.values()) - 1) < 1e-4
    assert list(answer.values()) == sorted(answer.values(), reverse=True)


def test_prediction_multipart_matches_raw(client: TestClient, shapes_png: bytes) -> None:
    raw = client.post("/predictions/cnn", content=shapes_png).json()
    multipart = client.post("/predictions/cnn", files={"data": ("s.png", shapes_png, "image/png")})
    assert multipart.json() == raw


@pytest.mark.parametrize("size", [(97, 71), (16, 300), (640, 480)])
def test_heatmap_png_has_the_uploaded_size(client: TestClient, size: tuple[int, int]) -> None:
    response = client.post("/heatmaps/cnn", content=png(random_image(*size)))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == size


def test_explanation_json(client: TestClient, shapes_png: bytes) -> None:
    body = client.post("/explanations/cnn", content=shapes_png).json()
    assert body["model"] == "cnn"
    assert body["target"]["label"] == max(body["prediction"], key=body["prediction"].get)
    activation = body["explanations"]["activation"]
    assert activation["signed"] is False
    assert len(activation["values"]) == activation["height"] == 12
    assert len(activation["values"][0]) == activation["width"] == 12
    assert max(max(row) for row in activation["values"]) == pytest.approx(1.0)
    overlay = Image.open(io.BytesIO(base64.b64decode(activation["overlay_png"])))
    assert overlay.size == (97, 71)
    assert {"decode", "queue", "inference", "heatmap.activation", "encode"} <= set(
        body["timings_ms"]
    )


def _modes() -> dict[str, bytes]:
    base = random_image(40, 30)
    cmyk = io.BytesIO()
    base.convert("CMYK").save(cmyk, format="JPEG")
    sixteen = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    return {
        "rgba": png(base.convert("RGBA")),
        "palette": png(base.convert("P")),
        "grey": png(base.convert("L")),
        "grey_alpha": png(base.convert("LA")),
        "cmyk_jpeg": cmyk.getvalue(),
        "sixteen_bit": png(sixteen),
        "gif": png(base.convert("P"), format="GIF"),
        "webp": png(base, format="WEBP"),
    }


@pytest.mark.parametrize("mode", sorted(_modes()))
def test_any_image_mode_is_accepted(client: TestClient, mode: str) -> None:
    data = _modes()[mode]
    assert client.post("/predictions/cnn", content=data).status_code == 200
    heat = client.post("/heatmaps/cnn", content=data)
    assert Image.open(io.BytesIO(heat.content)).size == (40, 30)


def test_exif_orientation_is_applied(client: TestClient) -> None:
    image = random_image(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    data = png(image, format="JPEG", exif=exif.tobytes())
    heat = client.post("/heatmaps/cnn", content=data)
    assert Image.open(io.BytesIO(heat.content)).size == (30, 40)


def test_several_targets_at_once(client: TestClient, shapes_png: bytes) -> None:
    body = client.post(
        "/explanations/cnn?methods=gradcam,integrated_gradients&steps=8"
        "&target=circle,2&overlay=false",
        content=shapes_png,
    ).json()
    assert [t["target"]["label"] for t in body["by_target"]] == ["circle", "triangle"]
    assert body["target"]["label"] == "circle"
    assert body["explanations"] == body["by_target"][0]["explanations"]
    for entry in body["by_target"]:
        assert set(entry["explanations"]) == {"gradcam", "integrated_gradients"}
        assert "convergence_delta" in entry["explanations"]["integrated_gradients"]
    alone = client.post(
        "/explanations/cnn?methods=gradcam&target=triangle&overlay=false", content=shapes_png
    ).json()
    assert alone["explanations"]["gradcam"] == body["by_target"][1]["explanations"]["gradcam"]
    assert "by_target" not in alone
    repeated = client.post("/explanations/cnn?target=circle,0", content=shapes_png)
    assert repeated.status_code == 422 and "twice" in repeated.json()["message"]
