"""Health is computed from the workers and the drain, and both doors report it; the drain's
admission refuses new work on both doors while what was admitted goes on."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.config import Settings
from service.errors import Draining
from service.grpc_server import SERVICE
from service.http import create_app
from service.lifecycle import Health, Lifecycle
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.proto.glimpse.v1 import glimpse_pb2 as pb
from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc
from service.runtime import Runtime
from service.worker import Batching, Worker
from tests.helpers import LOCAL
from tests.servers.grpc_inprocess import grpc_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def pipeline(cnn_archive: Path) -> Iterator[Pipeline]:
    """A runtime of its own: these tests break its worker or drain it."""
    runtime = Runtime.load([cnn_archive], metrics=Metrics())
    yield Pipeline(runtime)
    runtime.close()


@pytest.fixture
def doors(settings: Settings, pipeline: Pipeline) -> Iterator[tuple[TestClient, grpc.Channel]]:
    """Both doors onto `pipeline`: an HTTP test client and a channel to a gRPC server."""
    with (
        TestClient(create_app(settings, pipeline), base_url=LOCAL) as http,
        grpc_server(settings, pipeline) as address,
        grpc.insecure_channel(address) as channel,
    ):
        yield http, channel


def health_of(channel: grpc.Channel, name: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
    return int(reply.status)


def eventually(check: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_dead_worker_makes_its_model_not_serving(
    pipeline: Pipeline,
    doors: tuple[TestClient, grpc.Channel],
    shapes_png: bytes,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    http, channel = doors
    assert http.get("/ping").json() == {"status": "Healthy"}
    assert health_of(channel, "cnn") == SERVING
    worker = pipeline.runtime.get("cnn").worker

    def broken_loop() -> Any:
        raise RuntimeError("a bug in the worker's own loop")

    # The thread waits for a job in its loop; after that job the loop calls this and dies.
    # (A batch's own errors, even SystemExit, go to its jobs and never end the thread.)
    monkeypatch.setattr(worker, "_gather", broken_loop)
    with caplog.at_level(logging.CRITICAL, logger="glimpse"):
        assert http.post("/predictions/cnn", content=shapes_png).status_code == 200
        assert eventually(lambda: not worker.alive)
    assert "its worker thread failed" in caplog.text

    ping = http.get("/ping")
    assert ping.status_code == 503
    assert ping.json()["status"] == "Unhealthy"
    assert "worker thread has ended" in ping.json()["models"]["cnn"]
    assert eventually(lambda: health_of(channel, "cnn") == NOT_SERVING)  # refreshed each second
    assert health_of(channel, "") == health_of(channel, SERVICE) == NOT_SERVING
    refused = http.post("/predictions/cnn", content=shapes_png)
    assert refused.status_code == 503 and refused.json()["code"] == "model_unavailable"
    assert "restart glimpse" in refused.json()["message"]


def test_a_stuck_batch_makes_its_model_unhealthy_until_it_moves() -> None:
    release = threading.Event()

    def slow(batch: Sequence[tuple[str, float]]) -> list[str]:
        release.wait(10)
        return [job for job, _ in batch]

    worker: Worker[str] = Worker("slow", slow, Batching(1, 0), 8, lambda depth: None)
    lifecycle = Lifecycle(stuck_seconds=0.2)
    try:
        assert lifecycle.health({"slow": worker}).serving
        done = worker.submit("a")
        time.sleep(0.4)
        health = lifecycle.health({"slow": worker})
        assert not health.serving and not health.serves("slow")
        assert "over stuck_seconds=0.2 (GLIMPSE_STUCK_SECONDS)" in health.problems["slow"]
        release.set()
        assert done.result(timeout=10) == "a"
        assert lifecycle.health({"slow": worker}) == Health(False, {})
    finally:
        release.set()
        worker.close()


def test_drain_reports_first_then_refuses_then_waits_for_what_is_in_flight() -> None:
    lifecycle = Lifecycle(drain_seconds=10)
    seen: list[tuple[bool, bool]] = []

    async def on_drain() -> None:  # e.g. gRPC health: told before any request is refused
        seen.append((lifecycle.draining, lifecycle.refusing))

    lifecycle.on_drain(on_drain)

    async def scenario() -> tuple[bool, float]:
        lifecycle.enter()  # a request in flight
        asyncio.get_running_loop().call_later(0.3, lifecycle.leave)
        started = time.monotonic()
        finished = await lifecycle.drain()
        return finished, time.monotonic() - started

    finished, seconds = asyncio.run(scenario())
    assert finished and 0.25 < seconds < 5
    assert seen == [(True, False)]
    assert lifecycle.health({}).as_json()["status"] == "Unhealthy"
    with pytest.raises(Draining, match="drain_seconds=10 s"):
        lifecycle.enter()
    assert lifecycle.inflight == 0


def test_drain_gives_up_after_drain_seconds() -> None:
    lifecycle = Lifecycle(drain_seconds=0.2)
    lifecycle.enter()  # never leaves
    started = time.monotonic()
    assert asyncio.run(lifecycle.drain()) is False
    assert time.monotonic() - started < 5


def test_both_doors_refuse_new_work_while_draining(
    pipeline: Pipeline, doors: tuple[TestClient, grpc.Channel], shapes_png: bytes
) -> None:
    http, channel = doors
    pipeline.lifecycle.drain_seconds = 0
    assert asyncio.run(pipeline.lifecycle.drain())  # nothing in flight: over at once

    ping = http.get("/ping")
    assert ping.status_code == 503 and "draining" in ping.json()
    assert http.get("/metrics").status_code == 200
    refused = http.post("/explanations/cnn", content=shapes_png)
    assert refused.status_code == 503 and refused.json()["code"] == "draining"
    assert refused.headers["connection"] == "close"
    assert "drain_seconds" in refused.json()["message"]

    stub = pb_grpc.GlimpseStub(channel)
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(pb.PredictRequest(model="cnn", inputs=[pb.Input(image=shapes_png)]))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in str(error.value.details())
    assert eventually(lambda: health_of(channel, "") == NOT_SERVING)
    assert health_of(channel, "cnn") == health_of(channel, SERVICE) == NOT_SERVING
