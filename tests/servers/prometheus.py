"""Run Debian's `prometheus` on a free loopback port, scraping a target every second."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import free_port
from tests.servers import running, wait_until_ok


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        response.raise_for_status()
        return list(response.json()["data"]["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        """Values of `label` on series matching `match` (what Grafana's label_values() asks)."""
        response = httpx.get(
            f"{self.url}/api/v1/label/{label}/values", params={"match[]": match}, timeout=10
        )
        response.raise_for_status()
        return list(response.json()["data"])


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool`; skips with the install command if missing."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install -y prometheus (.ci/run does)")
    return found


@contextmanager
def prometheus(target: str, workdir: Path) -> Iterator[Prometheus]:
    """Prometheus scraping http://`target`/metrics every second, until the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: glimpse\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    command = [
        binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    log = workdir / "prometheus.log"
    with running(command, log) as process:
        server = Prometheus(f"http://127.0.0.1:{port}", process)
        wait_until_ok(f"{server.url}/-/ready", process, log, timeout=60)
        yield server
