"""`python -m service.ray_app`: glimpse's HTTP door as replicas on Ray Serve (extra `[ray]`).

Each replica is a whole glimpse: it loads the archives into its own `Runtime` (so batching
is glimpse's own: the model's `Worker` gathers up to `batch_size` jobs per forward pass)
and answers through the same FastAPI app as `python -m service` (service/http.py), behind
Ray Serve's HTTP proxy. Routes, answer shapes and errors are therefore the same; every
answer also carries `X-Glimpse-Replica`, the id of the replica that answered. gRPC is not
served here (Ray's proxy speaks HTTP to this app).

Example: ``python -m service.ray_app --model-store model_store --replicas 2 --port 8000``;
``--min-replicas 1 --max-replicas 4`` autoscales on requests in flight instead. Every replica
reads the archives from the same --model-store path: on a cluster of several machines it
must be on each of them (a shared volume).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from ray import serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import load_token
from service.auth import prepare as prepare_auth
from service.config import ConfigError, Settings, parse_names
from service.http import create_app
from service.lifecycle import Lifecycle
from service.pipeline import Pipeline
from service.runtime import Runtime
from service.threads import configure as configure_threads
from service.worker import Batching

log = logging.getLogger("glimpse")

REPLICA_HEADER = "x-glimpse-replica"
APP_NAME = "glimpse"


@dataclasses.dataclass(frozen=True)
class Scaling:
    """How many replicas, and what each may take.

    `replicas` fixes the count; `min_replicas`/`max_replicas` (both set) autoscale it on
    requests in flight per replica around `target_ongoing_requests`. `max_ongoing_requests`
    is what Ray's router sends one replica at once: glimpse batches only what it is sent.
    Example: ``Scaling(replicas=2).deployment_options()["num_replicas"] == 2``.
    """

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 4.0
    max_ongoing_requests: int = 32
    replica_cpus: float = 1.0

    def __post_init__(self) -> None:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ConfigError("--min-replicas and --max-replicas go together: set both or none")
        if self.min_replicas is not None and self.max_replicas is not None:
            if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
                raise ConfigError(
                    f"need 0 <= --min-replicas <= --max-replicas and --max-replicas >= 1, got "
                    f"{self.min_replicas} and {self.max_replicas}"
                )
        if self.replicas < 1 or self.max_ongoing_requests < 1 or self.replica_cpus <= 0:
            raise ConfigError(
                "--replicas and --max-ongoing-requests must be 1 or more and --replica-cpus "
                f"above 0, got {self.replicas}, {self.max_ongoing_requests}, {self.replica_cpus}"
            )

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments of `serve.deployment(...).options`."""
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.replica_cpus},
        }
        if self.min_replicas is None:
            options["num_replicas"] = self.replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        return options


class ReplicaHeader:
    """ASGI middleware: adds `X-Glimpse-Replica: <replica id>` to every HTTP answer."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)


@serve.ingress()
class GlimpseReplica:
    """One replica: glimpse's runtime and pipeline over `settings`' archives, served by the
    app of service/http.py (built per replica by `__serve_build_asgi_app__`)."""

    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        self.settings = settings
        self.replica = serve.get_replica_context().replica_id.unique_id
        threads = configure_threads(settings.torch_threads)
        self.runtime = Runtime.load(
            settings.archives(),
            max_queue=settings.max_queue,
            max_image_pixels=settings.max_image_pixels,
            batching=Batching(settings.batch_size, settings.max_batch_delay),
        )
        lifecycle = Lifecycle(settings.drain_seconds, settings.stuck_seconds)
        self.pipeline = Pipeline(self.runtime, settings.limits(), lifecycle)
        log.info(
            "replica %s (pid %d): %s, torch threads %d",
            self.replica,
            os.getpid(),
            ", ".join(self.runtime.models) or "no models",
            threads,
        )

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return ReplicaHeader(create_app(self.settings, self.pipeline), self.replica)

    def check_health(self) -> None:
        """Ray Serve's health check: raises (so Ray restarts the replica) when a model's
        worker has ended or is stuck, as `/ping` would answer 503."""
        health = self.pipeline.health()
        if not health.serving:
            raise RuntimeError(f"replica {self.replica} unhealthy: {health.as_json()}")

    def __del__(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()


def application(settings: Settings, scaling: Scaling) -> serve.Application:
    """The Serve application: `GlimpseReplica` with `scaling`, each replica on `settings`.
    Ray stops a replica after it has had `drain_seconds` to finish what it was sent."""
    deployment = serve.deployment(
        name=APP_NAME,
        graceful_shutdown_timeout_s=settings.drain_seconds,
        **scaling.deployment_options(),
    )(GlimpseReplica)
    app: serve.Application = deployment.bind(settings)
    return app


def serve_logging(settings: Settings) -> dict[str, Any]:
    """Ray Serve's log settings for the application: a line per request only with
    access_log (GLIMPSE_ACCESS_LOG), as glimpse alone; it costs time on every request."""
    return {"enable_access_log": settings.access_log}


def replica_settings(settings: Settings, scaling: Scaling) -> Settings:
    """`settings` as replicas read them: the token itself rather than a file only this machine
    has, and torch threads matched to a replica's CPUs (unless set)."""
    token = load_token(settings)
    if token is not None:
        settings = dataclasses.replace(settings, auth_token=token.decode(), auth_token_file=None)
    if not settings.torch_threads:
        threads = max(1, int(scaling.replica_cpus))
        settings = dataclasses.replace(settings, torch_threads=threads)
    return dataclasses.replace(settings, grpc=False)


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Scaling, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m service.ray_app", description=__doc__)
    parser.add_argument("--model-store", type=Path, help="directory of .mar files")
    parser.add_argument("--models", help="comma-separated model names (default: all)")
    parser.add_argument("--host", help="Ray Serve's HTTP proxy address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="Ray Serve's HTTP port (default 8000)")
    parser.add_argument("--replicas", type=int, default=1, help="fixed replica count (1)")
    parser.add_argument("--min-replicas", type=int, help="autoscale: fewest replicas")
    parser.add_argument("--max-replicas", type=int, help="autoscale: most replicas")
    parser.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=4.0,
        help="autoscale: requests in flight per replica to aim at (4)",
    )
    parser.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=32,
        help="requests Ray sends one replica at once (32)",
    )
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per replica (1)")
    parser.add_argument(
        "--address", help="an existing Ray cluster (e.g. auto); default: start a local one"
    )
    parser.add_argument("--num-cpus", type=int, help="local cluster's CPUs (default: all)")
    parser.add_argument("--ray-temp-dir", help="local cluster's session directory (/tmp/ray)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(
            os.environ,
            model_store=args.model_store,
            models=parse_names("--models", args.models) if args.models else None,
            host=args.host,
            http_port=args.port,
        )
        scaling = Scaling(
            args.replicas,
            args.min_replicas,
            args.max_replicas,
            args.target_ongoing_requests,
            args.max_ongoing_requests,
            args.replica_cpus,
        )
    except ConfigError as exc:
        parser.error(str(exc))
        raise
    return settings, scaling, args


def main(argv: list[str] | None = None) -> None:
    """Start (or join) Ray, deploy glimpse, serve until SIGTERM/SIGINT, then stop what it
    started: Serve and the local cluster, or only this application on a cluster it joined."""
    import ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings, scaling, args = parse_args(argv)
    try:
        settings.archives()
        settings = replica_settings(prepare_auth(settings), scaling)
    except ConfigError as exc:
        raise SystemExit(f"glimpse: {exc}") from None
    ray.init(
        address=args.address or "local",  # "local": a new cluster, even if RAY_ADDRESS is set
        num_cpus=None if args.address else args.num_cpus,
        include_dashboard=False,
        _temp_dir=None if args.address else args.ray_temp_dir,
    )
    stop = threading.Event()  # set after ray.init, which installs a SIGTERM handler that aborts
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    started = {} if args.address else processes_below(os.getpid())  # the local cluster's
    try:
        serve.start(http_options={"host": settings.host, "port": settings.http_port})
        serve.run(
            application(settings, scaling),
            name=APP_NAME,
            route_prefix="/",
            logging_config=serve_logging(settings),
        )
        log.info("glimpse on Ray Serve at http://%s:%d", settings.host, settings.http_port)
        while not stop.wait(1.0):  # a signal handler runs between two waits
            pass
        log.info("stopping")
    finally:
        if args.address:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()  # type: ignore[no-untyped-call]  # ray leaves it unannotated
        ray.shutdown()
        stop_leftovers({**started, **processes_below(os.getpid())})


def processes_below(root: int) -> dict[int, int]:
    """Every live process below `root`, as pid -> start time (clock ticks after boot, which
    tells a pid from a later process that reuses it), from /proc (empty where there is none)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        start = _start_time(pid)
        if start is not None:
            found[pid] = start
        todo.extend(children.get(pid, []))
    return found


def stop_leftovers(processes: dict[int, int], timeout: float = 10.0) -> None:
    """SIGKILL what is left of `processes` (pid -> start time) after `timeout` s: ray.shutdown()
    stops the local cluster, but its raylet's agents (dashboard, runtime env) can outlive it."""

    def left() -> list[int]:
        return [pid for pid, start in processes.items() if _start_time(pid) == start]

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and left():
        time.sleep(0.2)
    for pid in left():
        log.warning("pid %d of the local Ray cluster outlived ray.shutdown(): killing it", pid)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after "pid (comm)": state, ppid, ...; None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    """When `pid` started (field 22 of proc(5)), or None when it is gone or a zombie."""
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])


if __name__ == "__main__":
    main()
