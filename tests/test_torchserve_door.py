"""The handlers' TorchServe entry point in process, with a context shaped like TorchServe's:
each item of a batch answered on its own (glimpse's own JSON), its options read from
multipart fields or a JSON body, a bad item refused alone with its status. Fast; the same
against a real TorchServe is tests/test_torchserve_explanations.py."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.archive import open_archive
from service.handlers.base import GlimpseHandler
from tests.helpers import ROWS, png, random_image
from tests.test_torchserve_explanations import assert_same


class Context:
    """What TorchServe's Context offers the handler: request headers per item (the frontend
    sets `explain: True` on /explanations requests), and per-item status and headers."""

    def __init__(self, name: str, explain: list[bool]) -> None:
        self.model_name = name
        self.explain = explain
        self.status: dict[int, tuple[int, str]] = {}
        self.headers: dict[int, dict[str, str]] = {}

    def get_request_header(self, idx: int, key: str) -> str | None:
        return str(self.explain[idx]) if key == "explain" else None

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status[idx] = (code, phrase)

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.headers.setdefault(idx, {})[key] = value


@pytest.fixture(scope="module")
def cnn(cnn_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> GlimpseHandler:
    return open_archive(cnn_archive, tmp_path_factory.mktemp("door-cnn")).handler


@pytest.fixture(scope="module")
def tabular(tabular_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> GlimpseHandler:
    return open_archive(tabular_archive, tmp_path_factory.mktemp("door-tabular")).handler


@pytest.fixture(scope="module")
def image() -> bytes:
    return png(random_image(61, 53, seed=7))


def test_a_mixed_batch_answers_each_item_as_glimpse_does(
    cnn: GlimpseHandler, http: TestClient, image: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    ours_prediction = http.post("/predictions/cnn", content=image).json()
    ours_default = http.post("/explanations/cnn", content=image).json()
    ours_gradcam = http.post("/explanations/cnn?methods=gradcam&target=0", content=image).json()
    ours_ig = http.post(
        "/explanations/cnn?method=integrated_gradients&steps=4&format=jpeg", content=image
    ).json()
    items: list[dict[str, Any]] = [
        {"body": bytearray(image)},
        {"body": bytearray(image)},
        {"data": bytearray(image), "methods": bytearray(b"gradcam"), "target": bytearray(b"0")},
        {"body": bytearray(b"GIF89a, but not really")},
        {
            "body": {
                "data": base64.b64encode(image).decode(),
                "method": "integrated_gradients",
                "params": {"steps": 4},
                "format": "jpeg",
            }
        },
    ]
    context = Context("cnn", [False, True, True, True, True])
    with caplog.at_level(logging.INFO, logger="service.torchserve"):
        answers = cnn.handle(items, context)
    assert answers[0] == pytest.approx(ours_prediction, abs=1e-6)
    assert_same(ours_default, answers[1])
    assert_same(ours_gradcam, answers[2])
    assert_same(ours_ig, answers[4])
    assert "overlay_jpeg" in answers[4]["explanations"]["integrated_gradients"]
    assert context.status == {3: (400, "bad_input")}
    assert answers[3]["code"] == "bad_input"
    assert {h["X-Glimpse-Batch"] for h in context.headers.values()} == {"5"}
    assert "glimpse batch of 5: 4 explanations, 1 predictions, 4 in one pass" in caplog.text


def test_rows_answer_as_glimpse_does(tabular: GlimpseHandler, http: TestClient) -> None:
    ours = http.post("/explanations/tabular?steps=8", json=ROWS).json()
    predicted = http.post("/predictions/tabular", json=ROWS[:2]).json()
    context = Context("tabular", [True, False, True])
    answers = tabular.handle(
        [
            {"body": {"rows": ROWS, "params": {"steps": 8}}},
            {"body": ROWS[:2]},
            {"body": {"rows": ROWS[:1], "methods": "saliency"}},
        ],
        context,
    )
    assert_same(ours, answers[0])
    assert answers[1] == pytest.approx(predicted, abs=1e-9)
    assert context.status == {2: (422, "schema_error")}
    assert "unknown explanation method 'saliency'" in answers[2]["message"]


def test_without_a_context_every_item_is_a_prediction(
    tabular: GlimpseHandler, http: TestClient
) -> None:
    predicted = http.post("/predictions/tabular", json=ROWS[0]).json()
    answers = tabular.handle([{"body": ROWS[0]}, {"body": b"{not json"}], None)
    assert answers[0] == pytest.approx(predicted, abs=1e-9)
    assert answers[1]["code"] == "bad_input"


@pytest.mark.parametrize(
    ("item", "status", "words"),
    [
        ({"body": {"data": "", "colour": "red"}}, 422, "unknown field 'colour'"),
        ({"body": {"data": "%%%"}}, 400, "not valid base64"),
        ({"body": {"data": 5}}, 400, "base64, as a string"),
        ({"body": {"data": "", "params": [1]}}, 422, '"params" must be an object'),
        ({"body": {"data": "", "target": {"a": 1}}}, 422, "'target' must be a string"),
        ({"body": {"rows": []}}, 400, "image model"),
        ({"body": 42}, 400, "send an image file or rows"),
        ({"data": bytearray(b"x"), "target": bytearray(b"\xff")}, 422, "not UTF-8"),
        ({"data": bytearray(b"x"), "format": bytearray(b"tiff")}, 422, "format must be one of"),
        ({"nothing": bytearray(b"x")}, 400, "has no input"),
    ],
)
def test_bad_requests_are_refused_with_their_reason(
    cnn: GlimpseHandler, item: dict[str, Any], status: int, words: str
) -> None:
    context = Context("cnn", [True])
    [answer] = cnn.handle([item], context)
    assert context.status[0][0] == status, answer
    assert words in answer["message"]


def test_an_image_as_base64_text_is_read_as_kserves_v1_envelope_sends_it(
    cnn: GlimpseHandler, http: TestClient, image: bytes
) -> None:
    """KServe's TorchServe runtime hands the handler `{"data": "<base64>"}` per instance, as
    TorchServe's own image handler expects: the same answer as the image's bytes."""
    expected = http.post(
        "/predictions/cnn", content=image, headers={"Content-Type": "image/png"}
    ).json()
    context = Context("cnn", [False, False])
    text = base64.b64encode(image).decode()
    answers = cnn.handle([{"data": text}, {"data": "not base64!"}], context)
    assert answers[0] == pytest.approx(expected, abs=1e-6)
    assert context.status[1][0] == 400 and "not valid base64" in answers[1]["message"]
