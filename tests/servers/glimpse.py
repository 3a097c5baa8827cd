"""Run the real `python -m service` (HTTP + gRPC) on free loopback ports for integration tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import free_port


@dataclass
class Glimpse:
    http: str  # base URL
    grpc: str  # host:port
    process: subprocess.Popen[bytes]


@contextmanager
def glimpse(archives: list[Path], workdir: Path) -> Iterator[Glimpse]:
    """Serve `archives` from a model store under `workdir` until the block ends."""
    store = workdir / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        shutil.copy(archive, store / archive.name)
    http_port, grpc_port = free_port(), free_port()
    log = (workdir / "glimpse.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--model-store", str(store),
         "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
        stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    server = Glimpse(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", process)
    try:
        _wait(server, workdir)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait(server: Glimpse, workdir: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            if httpx.get(f"{server.http}/ping", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"glimpse did not start:\n{(workdir / 'glimpse.log').read_text()[-3000:]}")
