"""The same cnn.mar in real TorchServe answers what glimpse's runtime answers."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.servers.torchserve import leftover_processes, torchserve

pytestmark = pytest.mark.integration


def test_torchserve_matches_glimpse(
    model_store: Path, client: TestClient, shapes_png: bytes, tmp_path: Path
) -> None:
    ours = client.post("/predictions/cnn", content=shapes_png).json()
    headers = {"content-type": "application/octet-stream"}
    with torchserve(
        model_store, {"cnn": "cnn.mar"}, tmp_path / "ts", probe=("cnn", shapes_png, headers)
    ) as ts:
        raw = httpx.post(
            f"{ts.inference_url}/predictions/cnn", content=shapes_png, headers=headers, timeout=30
        )
        multipart = httpx.post(
            f"{ts.inference_url}/predictions/cnn",
            timeout=30,
            files={"data": ("s.png", shapes_png, "image/png")},
        )
        metrics = httpx.get(f"{ts.metrics_url}/metrics", timeout=10)
    for answer in (raw.json(), multipart.json()):
        assert list(answer) == list(ours)
        for label, probability in ours.items():
            assert answer[label] == pytest.approx(probability, abs=1e-4)
    assert metrics.status_code == 200 and "ts_inference_requests_total" in metrics.text
    assert leftover_processes(tmp_path / "ts") == []
