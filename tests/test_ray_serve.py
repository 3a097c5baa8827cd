"""glimpse on a local Ray cluster (`python -m service.ray_app`, extra `[ray]`), 2 replicas.

200 requests of five kinds (predictions and explanations, images and rows) all come back,
spread over both replicas (X-Glimpse-Replica), with the answers of the single-process app
within 1e-5; at the end every process the command started is gone. Skipped only when
ray is not installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.helpers import ROWS, free_port, png, random_image

pytest.importorskip("ray", reason="the [ray] extra is not installed")
from service.ray_app import REPLICA_HEADER, processes_below  # noqa: E402

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
REQUESTS = 200
START_SECONDS = 150  # cluster, Serve and two replicas loading both archives, on 2 busy cores
STOP_SECONDS = 60


@pytest.fixture(scope="module")
def ray_glimpse(cnn_archive: Path, tabular_archive: Path) -> Iterator[tuple[str, dict[int, int]]]:
    """`python -m service.ray_app --replicas 2` on a free port, with its own short Ray session
    dir (unix socket paths must stay under 108 bytes); yields its URL and the processes it
    started (pid -> start time), and checks on the way out that SIGTERM stopped all of them."""
    workdir = Path(tempfile.mkdtemp(prefix="glray", dir="/tmp"))
    store = workdir / "store"
    store.mkdir()
    for archive in (cnn_archive, tabular_archive):
        shutil.copy(archive, store / archive.name)
    port = free_port()
    command = [sys.executable, "-m", "service.ray_app", "--model-store", str(store)]
    command += ["--replicas", "2", "--port", str(port), "--num-cpus", "2"]
    command += ["--ray-temp-dir", str(workdir / "ray")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # replicas import this checkout's service
    log = workdir / "ray_app.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    started: dict[int, int] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_ping(url, process, log)
        started = processes_below(process.pid)
        assert len(started) > 3, f"expected Ray's processes under {process.pid}: {started}"
        yield url, started
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STOP_SECONDS) == 0, log.read_text()[-3000:]
        left = still_running(started)
        assert not left, f"left running after the stop: {left}\n{log.read_text()[-3000:]}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in still_running(started):  # only after a failure: what this test started
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


def wait_for_ping(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/ping", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url}/ping did not answer:\n{log.read_text()[-4000:]}")


def still_running(started: dict[int, int]) -> list[int]:
    """The pids of `started` that still run as the same process (same start time)."""
    return [pid for pid, start in started.items() if processes_alive(pid, start)]


def processes_alive(pid: int, start: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0] != "Z" and int(fields[19]) == start


def request_kinds(shapes_png: bytes) -> list[dict[str, Any]]:
    """Five kinds of request, as httpx.request arguments (the explanations without overlays:
    a PNG's bytes are not a number to compare within 1e-5)."""
    image = png(random_image(80, 60, seed=7))
    raw = {"headers": {"content-type": "application/octet-stream"}}
    return [
        {"method": "POST", "url": "/predictions/cnn", "content": shapes_png, **raw},
        {"method": "POST", "url": "/explanations/cnn?overlay=false", "content": image, **raw},
        {
            "method": "POST",
            "url": "/explanations/cnn?methods=gradcam,saliency&overlay=false",
            "content": shapes_png,
            **raw,
        },
        {"method": "POST", "url": "/predictions/tabular", "json": ROWS},
        {"method": "POST", "url": "/explanations/tabular", "json": ROWS[:2]},
    ]


def assert_close(got: Any, want: Any, where: str = "") -> None:
    """Equal JSON values, numbers within 1e-5; stage timings are not compared."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: {got} != {want}"
        for key in want:
            if key != "timings_ms":
                assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length differs"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float | int) and not isinstance(want, bool):
        assert abs(got - want) <= 1e-5, f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def test_two_replicas_answer_as_one_process(
    ray_glimpse: tuple[str, dict[int, int]], http: TestClient, shapes_png: bytes
) -> None:
    url, _ = ray_glimpse
    kinds = request_kinds(shapes_png)
    expected = []
    for kind in kinds:
        answer = http.request(**kind)
        assert answer.status_code == 200, answer.text
        expected.append(answer.json())

    with httpx.Client(base_url=url, timeout=60) as client:

        def call(i: int) -> tuple[int, httpx.Response]:
            return i % len(kinds), client.request(**kinds[i % len(kinds)])

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, range(REQUESTS)))

    replicas: Counter[str] = Counter()
    for kind, answer in answers:
        assert answer.status_code == 200, f"{kinds[kind]['url']}: {answer.text[:500]}"
        assert_close(answer.json(), expected[kind], kinds[kind]["url"])
        replicas[answer.headers[REPLICA_HEADER]] += 1
    assert len(answers) == REQUESTS
    assert len(replicas) == 2, f"answers came from {dict(replicas)}, not from 2 replicas"


def test_errors_and_routes_are_glimpse_s(ray_glimpse: tuple[str, dict[int, int]]) -> None:
    """The same error shapes and routes as `python -m service`, through Ray's proxy."""
    url, _ = ray_glimpse
    unknown = httpx.post(f"{url}/predictions/nope", content=b"x", timeout=30)
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "model_not_found"
    assert REPLICA_HEADER in unknown.headers
    models = httpx.get(f"{url}/models", timeout=30).json()["models"]
    assert {m["name"] for m in models} == {"cnn", "tabular"}
    assert httpx.get(f"{url}/metrics", timeout=30).text.count("glimpse_requests_total") > 0
