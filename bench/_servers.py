"""Start glimpse and TorchServe 0.12 on free loopback ports for the benchmarks, and stop them.

Each server is stopped by the ids of the processes this module started (never by name):
glimpse by its pid, TorchServe with `torchserve --stop` (its own pid file, kept in the
server's own TMPDIR) and then, for anything still alive after 30 s, SIGKILL to the Java
frontend and its Python workers, which it recorded when it started them.

CPU: `cpu_seconds(pid)` is utime + stime (plus that of reaped children) of a process and
all its live descendants, from /proc; TorchServe's Python workers are children of its Java
frontend, so its figure covers both.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CONTENT_TYPE = "application/octet-stream"  # what both servers read as raw image bytes
REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    """The environment with this checkout first on PYTHONPATH: glimpse and the handler in
    TorchServe's worker both run the code the bench sits in, whatever the install points at."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{REPO}:{path}" if path else str(REPO)}


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (all sockets held open until every port is picked)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def model_name(archive: Path) -> str:
    """The model name in the archive's manifest (what glimpse serves it as)."""
    with zipfile.ZipFile(archive) as mar:
        return str(json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["modelName"])


# -- /proc ---------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, utime + stime + cutime + cstime in ticks) of `pid`; None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "
    # fields[0] is the state (field 3 of proc(5)); utime..cstime are fields 14..17.
    return fields[0], int(fields[1]), sum(int(v) for v in fields[11:15])


def descendants(root: int) -> list[int]:
    """`root` and every live process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                parents.setdefault(stat[1], []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def cpu_seconds(root: int) -> float:
    """CPU time of `root` and its live descendants (user + system, reaped children included)."""
    ticks = 0
    for pid in descendants(root):
        stat = _stat(pid)
        if stat is not None:
            ticks += stat[2]
    return ticks / CLOCK_TICKS


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _kill_survivors(pids: list[int], timeout: float) -> None:
    """Wait up to `timeout` s for `pids` to exit, then SIGKILL the ones left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# -- readiness -----------------------------------------------------------------------------------
def wait_for_prediction(
    url: str,
    body: bytes,
    alive: Callable[[], bool],
    log: Path,
    timeout: float = 120,
    final: bool = False,
) -> None:
    """POST `body` to `url` until it answers 200 (/ping is not enough: TorchServe says Healthy
    while its worker crash-loops). With `final`, the first HTTP answer that is not a 200 is
    the verdict (glimpse loads its models before it listens). RuntimeError with the log's
    tail when no prediction comes."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not alive():
            last = "the server exited"
            break
        try:
            response = httpx.post(
                url, content=body, headers={"content-type": CONTENT_TYPE}, timeout=10
            )
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:300]}"
            if final:
                break
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
    raise RuntimeError(f"{url} gave no prediction within {timeout:.0f} s ({last}):\n{tail}")


# -- glimpse -------------------------------------------------------------------------------------


def launch_glimpse(
    archives: list[Path], workdir: Path, log: Path
) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start `python -m service` on two free loopback ports, serving copies of `archives` from
    `workdir/store`, its output in `log`; return the process and its HTTP and gRPC ports. It runs
    in a session of its own: Ctrl-C reaches only the bench, which then stops it in order."""
    store = workdir / "store"
    store.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        shutil.copy(archive, store / archive.name)
    http_port, grpc_port = free_ports(2)
    command = [sys.executable, "-m", "service", "--model-store", str(store)]
    command += ["--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=_env(),
            start_new_session=True,
        )
    return process, http_port, grpc_port


@dataclass
class Glimpse:
    """`python -m service` on two free loopback ports, serving one archive."""

    name: str
    archive: Path
    workdir: Path
    http_port: int = 0
    grpc_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def log(self) -> Path:
        return self.workdir / "glimpse.log"

    def start(self) -> None:
        self.process, self.http_port, self.grpc_port = launch_glimpse(
            [self.archive], self.workdir, self.log
        )

    def wait(self, model: str, body: bytes) -> None:
        assert self.process is not None
        process = self.process
        wait_for_prediction(
            f"{self.url}/predictions/{model}",
            body,
            lambda: process.poll() is None,
            self.log,
            final=True,
        )

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        tree = descendants(process.pid) if process.poll() is None else [process.pid]
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _kill_survivors([p for p in tree if p != process.pid], timeout=5)


# -- TorchServe ----------------------------------------------------------------------------------
@dataclass
class TorchServe:
    """TorchServe 0.12 (Java frontend + 1 Python worker) on free loopback ports."""

    name: str
    archive: Path
    workdir: Path
    model: str
    ports: dict[str, int] = field(default_factory=dict)
    pid: int = 0  # the Java frontend's
    _started: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def log(self) -> Path:
        return self.workdir / "logs" / "model_log.log"

    def _env(self) -> dict[str, str]:
        # TMPDIR: TorchServe keeps its pid file there, so this instance never sees another's.
        return {
            **_env(),
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            "LOG_LOCATION": str(self.workdir / "logs"),
            "METRICS_LOCATION": str(self.workdir / "logs"),
            "TMPDIR": str(self.workdir / "tmp"),
        }

    def _config(self) -> Path:
        names = ("inference", "management", "metrics", "grpc_inf", "grpc_mgmt")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        lines = [
            f"inference_address=http://127.0.0.1:{self.ports['inference']}",
            f"management_address=http://127.0.0.1:{self.ports['management']}",
            f"metrics_address=http://127.0.0.1:{self.ports['metrics']}",
            "grpc_inference_address=127.0.0.1",
            "grpc_management_address=127.0.0.1",
            f"grpc_inference_port={self.ports['grpc_inf']}",
            f"grpc_management_port={self.ports['grpc_mgmt']}",
            "default_workers_per_model=1",
            "install_py_dep_per_model=false",
            "disable_token_authorization=true",
            "metrics_mode=prometheus",
            "enable_envvars_config=false",
            f"model_store={self.workdir / 'store'}",
        ]
        path = self.workdir / "config.properties"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        store = self.workdir / "store"
        for folder in (store, self.workdir / "tmp", self.workdir / "logs"):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.archive, store / self.archive.name)
        command = [
            str(VENV_BIN / "torchserve"),
            "--start",
            "--ncs",
            "--ts-config",
            str(self._config()),
            "--model-store",
            str(store),
            "--disable-token-auth",
            "--models",
            f"{self.model}={self.archive.name}",
        ]
        self._started = True
        with (self.workdir / "launcher.log").open("wb") as log:
            subprocess.run(
                command,
                cwd=self.workdir,
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=True,
                start_new_session=True,  # the JVM inherits it: Ctrl-C reaches only the bench
            )
        pid_file = self.workdir / "tmp" / ".model_server.pid"
        deadline = time.monotonic() + 10
        while not pid_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.pid = int(pid_file.read_text().split()[0])

    def wait(self, model: str, body: bytes) -> None:
        wait_for_prediction(
            f"{self.url}/predictions/{model}", body, lambda: _alive(self.pid), self.log
        )

    def stop(self) -> None:
        """`torchserve --stop` (this instance's own pid file), then SIGKILL what it left."""
        if not self._started:
            return
        self._started = False
        tree = descendants(self.pid) if self.pid and _alive(self.pid) else []
        tree += [p for p in self._own_processes() if p not in tree]
        subprocess.run(
            [str(VENV_BIN / "torchserve"), "--stop"],
            cwd=self.workdir,
            env=self._env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        # `torchserve --stop` returns before the JVM and its Python workers are gone.
        _kill_survivors(tree, timeout=30)

    def _own_processes(self) -> list[int]:
        """Java or worker processes whose command line or cwd lies in this instance's workdir
        (a worker the frontend was starting while we looked at its tree)."""
        found = []
        root = str(self.workdir)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if ("java" in cmdline or "model_service_worker" in cmdline) and (
                root in cmdline or cwd.startswith(root)
            ):
                found.append(int(entry.name))
        return found
