"""Run the real `python -m service` (HTTP + gRPC) on free loopback ports for integration tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port
from tests.servers import running, wait_until_ok


@dataclass
class Glimpse:
    http: str  # base URL
    grpc: str  # host:port
    process: subprocess.Popen[bytes]


@contextmanager
def glimpse(
    archives: list[Path],
    workdir: Path,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[Glimpse]:
    """Serve `archives` from a model store under `workdir` until the block ends; `args` are
    more flags (e.g. ``["--host", "0.0.0.0"]``; it is still reached on 127.0.0.1), `env` the
    whole environment (default: this process's)."""
    store = workdir / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        shutil.copy(archive, store / archive.name)
    http_port, grpc_port = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "service",
        "--model-store",
        str(store),
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        *args,
    ]
    log = workdir / "glimpse.log"
    with running(command, log, env=env) as process:
        server = Glimpse(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", process)
        wait_until_ok(f"{server.http}/ping", process, log)
        yield server
