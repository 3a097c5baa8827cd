"""The same tabular.mar in real TorchServe answers what its handler answers in process."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from service.archive import open_archive
from tests.helpers import ROWS
from tests.servers.torchserve import leftover_processes, torchserve
from training.tabular import TabularConfig, train_tabular

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model on a small generated table: what matters here is the serving path."""
    config = TabularConfig(
        n_stores=6,
        years=1,
        epochs=1,
        batch_size=256,
        gbm=False,
        out=tmp_path_factory.mktemp("tabular-store"),
    )
    return train_tabular(config)


def test_torchserve_predicts_what_the_handler_predicts(archive: Path, tmp_path: Path) -> None:
    ours = open_archive(archive, tmp_path / "unpacked").handler.predict_rows(ROWS)
    probe = ("tabular", json.dumps(ROWS[0]).encode(), JSON)
    with torchserve(archive.parent, {"tabular": archive.name}, tmp_path / "ts", probe) as ts:
        url = f"{ts.inference_url}/predictions/tabular"
        many = httpx.post(url, content=json.dumps(ROWS), headers=JSON, timeout=30)
        one = httpx.post(url, content=json.dumps(ROWS[1]), headers=JSON, timeout=30)
    assert many.status_code == 200 and one.status_code == 200
    assert many.json() == pytest.approx(ours, abs=1e-4)
    assert one.json() == pytest.approx([ours[1]], abs=1e-4)
    assert leftover_processes(tmp_path / "ts") == []
