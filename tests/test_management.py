"""Registering and unregistering models at run time: off by default, store files only."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.http import create_app
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.runtime import Runtime
from tests.helpers import LOCAL


@pytest.fixture()
def store(tmp_path: Path, cnn_archive: Path) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(cnn_archive, store / "cnn.mar")
    (store / "junk.mar").write_bytes(b"not a zip")
    (tmp_path / "outside.mar").write_bytes(cnn_archive.read_bytes())
    return store


@pytest.fixture()
def managed(store: Path) -> Iterator[tuple[TestClient, Runtime]]:
    runtime = Runtime.load([], metrics=Metrics())
    settings = Settings(model_store=store, enable_management=True)
    with TestClient(create_app(settings, Pipeline(runtime)), base_url=LOCAL) as client:
        yield client, runtime
    runtime.close()


def test_management_is_off_by_default(client: TestClient) -> None:
    assert client.post("/models", params={"url": "cnn.mar"}).status_code == 405
    assert client.delete("/models/cnn").status_code == 405
    assert client.post("/predictions/cnn", content=b"x").status_code != 404  # still served


def test_register_predict_unregister(
    managed: tuple[TestClient, Runtime], shapes_png: bytes
) -> None:
    client, runtime = managed
    assert client.post("/predictions/cnn", content=shapes_png).status_code == 404

    registered = client.post("/models", params={"url": "cnn.mar"})
    assert registered.status_code == 200, registered.text
    assert registered.json()["status"].startswith('Model "cnn" Version: 1.0 registered')
    assert client.post("/predictions/cnn", content=shapes_png).status_code == 200
    assert [m["name"] for m in client.get("/models").json()["models"]] == ["cnn"]
    again = client.post("/models", params={"url": "cnn.mar"})
    assert again.status_code == 409 and "cnn" in again.json()["message"]

    removed = client.delete("/models/cnn")
    assert removed.status_code == 200 and removed.json() == {"status": 'Model "cnn" unregistered'}
    assert client.post("/predictions/cnn", content=shapes_png).status_code == 404
    assert client.delete("/models/cnn").status_code == 404
    assert runtime.models == {}


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/cnn.mar",
        "file:///etc/passwd",
        "../outside.mar",
        "/etc/passwd",
        "sub/cnn.mar",
        "cnn.txt",
        "",
        "..mar",
    ],
)
def test_only_archive_file_names_in_the_store(
    managed: tuple[TestClient, Runtime], url: str
) -> None:
    client, runtime = managed
    response = client.post("/models", params={"url": url})
    assert response.status_code == 400, response.text
    assert "file name of a .mar archive in the model store" in response.json()["message"]
    assert runtime.models == {}


def test_missing_and_unservable_archives(managed: tuple[TestClient, Runtime]) -> None:
    client, runtime = managed
    missing = client.post("/models", params={"url": "nope.mar"})
    assert missing.status_code == 404 and "nope.mar" in missing.json()["message"]
    junk = client.post("/models", params={"url": "junk.mar"})
    assert junk.status_code == 400 and "junk.mar cannot be served" in junk.json()["message"]
    assert runtime.models == {}


def test_unregister_waits_for_queued_work(store: Path, shapes_png: bytes) -> None:
    """A DELETE sent while explanations are queued answers after they have all finished."""

    async def scenario() -> tuple[list[int], int]:
        runtime = Runtime.load([store / "cnn.mar"], metrics=Metrics())
        app = create_app(Settings(model_store=store, enable_management=True), Pipeline(runtime))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
                slow = "/explanations/cnn?methods=integrated_gradients&steps=300"
                work = [
                    asyncio.create_task(client.post(slow, content=shapes_png)) for _ in range(4)
                ]
                deadline = time.monotonic() + 30
                while runtime.models["cnn"].active < 4 and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                removed = await client.delete("/models/cnn")
                assert all(task.done() for task in work)
                codes = [(await task).status_code for task in work]
                return codes, removed.status_code
        finally:
            runtime.close()

    codes, removed = asyncio.run(scenario())
    assert codes == [200, 200, 200, 200] and removed == 200
