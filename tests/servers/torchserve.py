"""Start and stop a real TorchServe 0.12 (Java 17) on loopback for integration tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers import free_port

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


@dataclass
class TorchServe:
    inference_url: str
    management_url: str
    metrics_url: str
    workdir: Path


def _config(workdir: Path) -> tuple[Path, dict[str, int]]:
    ports = {
        name: free_port()
        for name in ("inference", "management", "metrics", "grpc_inf", "grpc_mgmt")
    }
    text = "\n".join(
        [
            f"inference_address=http://127.0.0.1:{ports['inference']}",
            f"management_address=http://127.0.0.1:{ports['management']}",
            f"metrics_address=http://127.0.0.1:{ports['metrics']}",
            "grpc_inference_address=127.0.0.1",
            "grpc_management_address=127.0.0.1",
            f"grpc_inference_port={ports['grpc_inf']}",
            f"grpc_management_port={ports['grpc_mgmt']}",
            "default_workers_per_model=1",
            "install_py_dep_per_model=false",
            "disable_token_authorization=true",
            "metrics_mode=prometheus",
            "enable_envvars_config=false",
            f"model_store={workdir / 'store'}",
        ]
    )
    path = workdir / "config.properties"
    path.write_text(text + "\n")
    return path, ports


@contextmanager
def torchserve(
    model_store: Path,
    models: dict[str, str],
    workdir: Path,
    probe: tuple[str, bytes, dict[str, str]],
) -> Iterator[TorchServe]:
    """Run TorchServe with `models` (name -> .mar file name) until a real prediction answers.

    `probe` is (model, body, headers) for the readiness check: /ping says Healthy even
    while a worker crash-loops, so only a real prediction proves the model is up.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "store"
    store.mkdir(exist_ok=True)
    for mar in models.values():
        shutil.copy(model_store / mar, store / mar)
    config, ports = _config(workdir)
    logs = str(workdir / "logs")
    # TMPDIR: TorchServe keeps its pid file there, so concurrent servers must not share it.
    (workdir / "tmp").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "LOG_LOCATION": logs,
        "METRICS_LOCATION": logs,
        "TMPDIR": str(workdir / "tmp"),
        # The workers import `service` from the tree under test, not from wherever the venv's
        # editable install points (another checkout).
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [
        str(VENV_BIN / "torchserve"),
        "--start",
        "--ncs",
        "--ts-config",
        str(config),
        "--model-store",
        str(store),
        "--disable-token-auth",
        "--models",
        *[f"{n}={m}" for n, m in models.items()],
    ]
    subprocess.run(command, check=True, cwd=workdir, env=env, timeout=60)
    server = TorchServe(
        f"http://127.0.0.1:{ports['inference']}",
        f"http://127.0.0.1:{ports['management']}",
        f"http://127.0.0.1:{ports['metrics']}",
        workdir,
    )
    try:
        _wait_for_prediction(server, *probe)
        yield server
    finally:
        subprocess.run(
            [str(VENV_BIN / "torchserve"), "--stop"], cwd=workdir, env=env, timeout=60, check=False
        )
        _wait_for_exit(workdir)


def _wait_for_prediction(
    server: TorchServe, model: str, body: bytes, headers: dict[str, str], timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.post(
                f"{server.inference_url}/predictions/{model}",
                content=body,
                headers=headers,
                timeout=10,
            )
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    logs = "\n".join(p.read_text()[-3000:] for p in (server.workdir / "logs").glob("*.log"))
    raise TimeoutError(f"TorchServe did not answer a prediction in {timeout} s: {last}\n{logs}")


def _wait_for_exit(workdir: Path, timeout: float = 30) -> None:
    """torchserve --stop returns before the JVM and its Python workers are gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _our_processes(workdir):
        time.sleep(0.5)
    for pid in _our_processes(workdir):
        os.kill(pid, 9)


def _our_processes(workdir: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if ("java" in cmdline or "model_service_worker" in cmdline) and (
            str(workdir) in cmdline or cwd.startswith(str(workdir))
        ):
            found.append(int(proc.name))
    return found


def leftover_processes(workdir: Path) -> list[int]:
    return _our_processes(workdir)
