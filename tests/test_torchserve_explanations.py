"""glimpse's handlers inside a real TorchServe 0.12: `/explanations/{model}` answers what
glimpse's own `/explanations/{name}` answers, and batches (`batchSize: 4`, `maxBatchDelay: 50`
in the archive's model config) answer each request on its own, a bad one failing alone.

One TorchServe serves both archives for the whole module (a start costs 10-20 s here).
"""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.helpers import ROWS, png, random_image
from tests.servers.torchserve import TorchServe, leftover_processes, torchserve

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}
# TorchServe's model config (the YAML torch-model-archiver's --config-file adds to an archive).
BATCHING = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 50\nresponseTimeout: 120\n"
TOLERANCE = 1e-5


def with_model_config(mar: Path, out: Path, config: str) -> Path:
    """A copy of `mar` in `out` carrying `config` as model-config.yaml, named by its manifest
    as torch-model-archiver --config-file names it (`model.configFile`)."""
    out.mkdir(parents=True, exist_ok=True)
    copy = out / mar.name
    with zipfile.ZipFile(mar) as source, zipfile.ZipFile(copy, "w", zipfile.ZIP_DEFLATED) as dest:
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["configFile"] = "model-config.yaml"
                data = json.dumps(manifest, indent=2).encode()
            dest.writestr(entry, data)
        dest.writestr("model-config.yaml", config)
    return copy


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [png(random_image(64 + 3 * i, 48 + 5 * i, seed=i)) for i in range(4)]


@pytest.fixture(scope="module")
def ts(
    cnn_archive: Path,
    tabular_archive: Path,
    images: list[bytes],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TorchServe]:
    """TorchServe with cnn and tabular, both batching up to 4 requests for up to 50 ms."""
    store = tmp_path_factory.mktemp("batched-store")
    for archive in (cnn_archive, tabular_archive):
        with_model_config(archive, store, BATCHING)
    workdir = tmp_path_factory.mktemp("ts-explain")
    probe = ("cnn", images[0], {"content-type": "application/octet-stream"})
    models = {"cnn": "cnn.mar", "tabular": tabular_archive.name}
    with torchserve(store, models, workdir, probe) as server:
        yield server
    assert leftover_processes(workdir) == []


def assert_same(ours: Any, theirs: Any, where: str = "") -> None:
    """Same keys and values, numbers within TOLERANCE, overlays the same picture (within one
    level: a map value may round the other way); `timings_ms` is each server's own."""
    if isinstance(ours, dict):
        assert isinstance(theirs, dict), where
        assert sorted(ours) == sorted(theirs), where
        for key, value in ours.items():
            if key == "timings_ms":
                continue
            if key.startswith("overlay_") and isinstance(value, str):
                assert_same_picture(value, theirs[key], f"{where}.{key}")
            else:
                assert_same(value, theirs[key], f"{where}.{key}")
    elif isinstance(ours, list):
        assert isinstance(theirs, list) and len(ours) == len(theirs), where
        if ours and all(isinstance(v, float | int) for v in np.ravel(ours)):
            difference = np.abs(np.asarray(ours, float) - np.asarray(theirs, float)).max()
            assert difference <= TOLERANCE, f"{where}: {difference}"
            return
        for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(a, b, f"{where}[{k}]")
    elif isinstance(ours, float) and not isinstance(ours, bool):
        assert theirs == pytest.approx(ours, abs=TOLERANCE), where
    else:
        assert ours == theirs, where


def assert_same_picture(ours: str, theirs: str, where: str) -> None:
    a, b = (np.asarray(Image.open(io.BytesIO(base64.b64decode(s))), int) for s in (ours, theirs))
    assert a.shape == b.shape and np.abs(a - b).max() <= 1, where


def test_image_explanations_answer_glimpses_json(
    ts: TorchServe, http: TestClient, images: list[bytes]
) -> None:
    url = f"{ts.inference_url}/explanations/cnn"
    # The default method, the predicted class: the image as the raw body.
    ours = http.post("/explanations/cnn", content=images[0]).json()
    theirs = httpx.post(url, content=images[0], timeout=60)
    assert theirs.status_code == 200, theirs.text
    assert "activation" in ours["explanations"]
    assert_same(ours, theirs.json())
    # Another method and class, as multipart fields beside the file field `data`.
    runner_up = list(ours["prediction"])[1]
    ours = http.post(
        f"/explanations/cnn?methods=gradcam&target={runner_up}", content=images[0]
    ).json()
    fields = {"methods": "gradcam", "target": runner_up}
    theirs = httpx.post(url, files={"data": images[0]}, data=fields, timeout=60)
    assert theirs.status_code == 200, theirs.text
    assert ours["target"]["label"] == runner_up
    assert_same(ours, theirs.json())
    # The same as a JSON body: the image in base64, the method's parameters in `params`.
    query = "methods=integrated_gradients&target=1&steps=8&overlay=false"
    ours = http.post(f"/explanations/cnn?{query}", content=images[1]).json()
    body = {
        "data": base64.b64encode(images[1]).decode(),
        "methods": ["integrated_gradients"],
        "target": 1,
        "params": {"steps": 8},
        "overlay": False,
    }
    theirs = httpx.post(url, json=body, timeout=60)
    assert theirs.status_code == 200, theirs.text
    assert "overlay_png" not in theirs.json()["explanations"]["integrated_gradients"]
    assert_same(ours, theirs.json())


def test_row_explanations_answer_glimpses_json(ts: TorchServe, http: TestClient) -> None:
    url = f"{ts.inference_url}/explanations/tabular"
    ours = http.post("/explanations/tabular", json=ROWS).json()
    theirs = httpx.post(url, json=ROWS, timeout=60)
    assert theirs.status_code == 200, theirs.text
    assert set(ours["rows"][0]["attributions"]) == {"integrated_gradients"}
    assert_same(ours, theirs.json())
    ours = http.post("/explanations/tabular?steps=16", json=ROWS[:2]).json()
    body = {"rows": ROWS[:2], "method": "integrated_gradients", "params": {"steps": 16}}
    theirs = httpx.post(url, json=body, timeout=60)
    assert theirs.status_code == 200, theirs.text
    assert_same(ours, theirs.json())


def test_batches_of_four_answer_each_request(
    ts: TorchServe, http: TestClient, images: list[bytes]
) -> None:
    """16 requests at once, predictions and explanations of cnn and tabular: each answer is
    glimpse's own, and TorchServe ran them in batches of more than one."""
    requests: list[tuple[str, str, dict[str, Any]]] = []
    for k in range(16):
        route = "explanations" if k % 2 else "predictions"
        if k % 4 == 3:
            requests.append((route, "tabular", {"json": ROWS[k % 3]}))
        else:
            requests.append((route, "cnn", {"content": images[k % 4]}))
    expected = [http.post(f"/{route}/{model}", **kw).json() for route, model, kw in requests]

    def send(request: tuple[str, str, dict[str, Any]]) -> httpx.Response:
        route, model, kw = request
        return httpx.post(f"{ts.inference_url}/{route}/{model}", timeout=120, **kw)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, requests))
    for ours, theirs in zip(expected, answers, strict=True):
        assert theirs.status_code == 200, theirs.text
        assert_same(ours, theirs.json())
    sizes = [int(a.headers["X-Glimpse-Batch"]) for a in answers]
    assert max(sizes) > 1, sizes
    logged = re.findall(r"glimpse batch of (\d+)", _model_log(ts))
    assert logged and max(map(int, logged)) > 1, logged


def test_a_bad_item_fails_only_itself(
    ts: TorchServe, http: TestClient, images: list[bytes]
) -> None:
    """A batch holding something that is not an image: that request is answered 400 with
    glimpse's error object, the others as usual."""
    expected = http.post("/explanations/cnn", content=images[2]).json()
    bodies = [images[2], b"this is not an image", images[2], images[2]]

    def send(body: bytes) -> httpx.Response:
        return httpx.post(f"{ts.inference_url}/explanations/cnn", content=body, timeout=120)

    for _ in range(5):  # until the bad request shares a batch (it does at once, almost always)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(send, bodies))
        if int(answers[1].headers["X-Glimpse-Batch"]) > 1:
            break
    assert int(answers[1].headers["X-Glimpse-Batch"]) > 1
    bad = answers[1]
    assert bad.status_code == 400, bad.text
    assert bad.json()["code"] == "bad_input" and "not an image" in bad.json()["message"]
    for answer in (answers[0], answers[2], answers[3]):
        assert answer.status_code == 200, answer.text
        assert_same(expected, answer.json())


def test_bad_options_are_refused_clearly(ts: TorchServe, images: list[bytes]) -> None:
    url = f"{ts.inference_url}/explanations/cnn"
    unknown = httpx.post(url, files={"data": images[0]}, data={"methods": "nope"}, timeout=60)
    assert unknown.status_code == 422 and "unknown explanation method" in unknown.text
    body = {"data": "not base64!", "methods": "gradcam"}
    assert httpx.post(url, json=body, timeout=60).status_code == 400
    extra = httpx.post(url, json={"data": "", "colour": "red"}, timeout=60)
    assert extra.status_code == 422 and "colour" in extra.json()["message"]


def _model_log(ts: TorchServe) -> str:
    return "\n".join(p.read_text() for p in (ts.workdir / "logs").glob("*.log"))
