"""SIGTERM and SIGINT drain a real `python -m service`: health turns NOT_SERVING, new work is
refused on both doors, the work in flight on both doors finishes, the process exits 0 and
leaves no temp dir; a failed start leaves none either."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from service.proto.glimpse.v1 import glimpse_pb2 as pb
from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc
from tests.helpers import free_port, png
from tests.servers.glimpse import Glimpse, glimpse
from training.shapes import make_shapes

pytestmark = pytest.mark.integration

# An explanation that keeps the model's worker busy for about a second (8 of them in a row:
# long enough to look at the drain while they run, short enough for the suite).
SLOW = {"methods": "integrated_gradients", "steps": "100", "internal_batch_size": "100"}
WAIT = 120  # seconds: the longest any single step of these tests may take
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

PICTURE = png(Image.fromarray(make_shapes(1, seed=3).images[0]))


def environment(tmp: Path) -> dict[str, str]:
    """The server's environment, with its temp dir in `tmp` so that we see exactly its own."""
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp)}


def unpacked(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("glimpse-models-*"))


def explain_http(server: Glimpse) -> int:
    reply = httpx.post(
        f"{server.http}/explanations/cnn",
        params={**SLOW, "overlay": "false"},
        content=PICTURE,
        headers={"content-type": "image/png"},
        timeout=WAIT,
    )
    return reply.status_code


def explain_grpc(server: Glimpse) -> grpc.StatusCode:
    request = pb.ExplainRequest(
        model="cnn",
        inputs=[pb.Input(image=PICTURE)],
        methods=[SLOW["methods"]],
        params={k: v for k, v in SLOW.items() if k != "methods"},
    )
    with grpc.insecure_channel(server.grpc) as channel:
        try:
            pb_grpc.GlimpseStub(channel).Explain(request, timeout=WAIT)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def in_flight(server: Glimpse) -> dict[str, float]:
    """glimpse_inflight_requests by protocol (the /metrics request itself counts on http)."""
    text = httpx.get(f"{server.http}/metrics", timeout=10).text
    pattern = r'^glimpse_inflight_requests\{protocol="(\w+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.M)}


def wait_in_flight(server: Glimpse, http: int, grpc_calls: int) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        now = in_flight(server)
        if now.get("http", 0) >= http + 1 and now.get("grpc", 0) >= grpc_calls:
            return
        time.sleep(0.1)
    raise AssertionError(f"the requests never were all in flight: {in_flight(server)}")


def wait_unhealthy(server: Glimpse) -> httpx.Response:
    deadline = time.monotonic() + 10
    while (ping := httpx.get(f"{server.http}/ping", timeout=10)).status_code == 200:
        assert time.monotonic() < deadline, "/ping still says Healthy after the signal"
        time.sleep(0.05)
    return ping


def health_of(channel: grpc.Channel, name: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status)


def results(calls: list[Future[Any]]) -> list[Any]:
    return [call.result(timeout=WAIT) for call in calls]


def test_sigterm_finishes_work_in_flight_on_both_doors_and_refuses_new_work(
    cnn_archive: Path, tmp_path: Path
) -> None:
    tmp = tmp_path / "tmp"
    env = environment(tmp)
    with (
        glimpse([cnn_archive], tmp_path, env=env, args=["--drain-seconds", "100"]) as server,
        ThreadPoolExecutor(8) as pool,
    ):
        assert len(unpacked(tmp)) == 1  # the server's own temp dir, with its archive
        over_http = [pool.submit(explain_http, server) for _ in range(4)]
        over_grpc = [pool.submit(explain_grpc, server) for _ in range(4)]
        wait_in_flight(server, http=4, grpc_calls=4)
        server.process.send_signal(signal.SIGTERM)

        ping = wait_unhealthy(server)
        assert ping.status_code == 503 and ping.json()["status"] == "Unhealthy"
        assert "draining" in ping.json()
        refused = httpx.post(f"{server.http}/predictions/cnn", content=PICTURE, timeout=WAIT)
        assert refused.status_code == 503 and refused.json()["code"] == "draining"
        with grpc.insecure_channel(server.grpc) as channel:
            with pytest.raises(grpc.RpcError) as error:
                pb_grpc.GlimpseStub(channel).Predict(
                    pb.PredictRequest(model="cnn", inputs=[pb.Input(image=PICTURE)]),
                    timeout=WAIT,
                )
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            for name in ("", "glimpse.v1.Glimpse", "cnn"):
                assert health_of(channel, name) == NOT_SERVING, name
        still_running = sum(not call.done() for call in over_http + over_grpc)
        assert still_running, "the work ended before the checks: make SLOW slower"

        assert results(over_http) == [200] * 4
        assert results(over_grpc) == [grpc.StatusCode.OK] * 4
        assert server.process.wait(timeout=WAIT) == 0
    assert unpacked(tmp) == []


def test_sigint_drains_too(cnn_archive: Path, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    with (
        glimpse([cnn_archive], tmp_path, env=environment(tmp)) as server,
        ThreadPoolExecutor(2) as pool,
    ):
        calls = [pool.submit(explain_http, server)]
        wait_in_flight(server, http=1, grpc_calls=0)
        server.process.send_signal(signal.SIGINT)
        assert wait_unhealthy(server).status_code == 503
        assert results(calls) == [200]
        assert server.process.wait(timeout=WAIT) == 0
    log = (tmp_path / "glimpse.log").read_text()
    assert "SIGINT: draining" in log and "Traceback" not in log
    assert unpacked(tmp) == []


@pytest.mark.parametrize("taken", ["http", "grpc"])
def test_a_failed_start_leaves_no_temp_dir(cnn_archive: Path, tmp_path: Path, taken: str) -> None:
    tmp = tmp_path / "tmp"
    store = tmp_path / "model_store"
    store.mkdir()
    (store / "cnn.mar").write_bytes(cnn_archive.read_bytes())
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        ports = {"http": free_port(), "grpc": free_port(), taken: holder.getsockname()[1]}
        command = [
            sys.executable,
            "-m",
            "service",
            "--model-store",
            str(store),
            "--http-port",
            str(ports["http"]),
            "--grpc-port",
            str(ports["grpc"]),
        ]
        done = subprocess.run(
            command, env=environment(tmp), capture_output=True, text=True, timeout=WAIT
        )
    assert done.returncode != 0, done.stderr[-2000:]
    assert "loaded cnn" in done.stderr  # it failed after unpacking its archive
    assert unpacked(tmp) == []
