"""Drain on SIGTERM/SIGINT, and health computed from the workers: what both doors consult.

The drain (`Lifecycle.drain`), in order:

1. health turns NOT_SERVING: `GET /ping` answers 503, gRPC health says NOT_SERVING for
   "", the Glimpse service and every model;
2. new work is refused on both doors (HTTP 503 `draining`, gRPC UNAVAILABLE), while the
   requests already admitted go on;
3. it waits until none is in flight, at most `drain_seconds` (a second signal cuts the
   wait short).

Then `stop_on_signal` lets uvicorn close its listener and idle connections, and
`python -m service` stops gRPC, closes the runtime (workers joined, unpacked archives
removed) and exits 0.

Health is computed at every look, never stored: a model is NOT_SERVING when its worker
thread has ended, or when the batch it runs has run longer than `stuck_seconds` (the jobs
queued behind it cannot move); the server as a whole is NOT_SERVING while it drains or
while any model is.

Example: ``lifecycle.take_signals(); ...; await stop_on_signal(lifecycle, server)``
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from service.errors import Draining
from service.worker import Worker

log = logging.getLogger("glimpse")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
POLL_SECONDS = 0.05  # how often the drain looks at the requests in flight
CLOSE_SECONDS = 2  # after the drain: how long the doors may take to close their connections


@dataclass(frozen=True)
class Health:
    """One look at health: whether the server drains, and each unhealthy model with why."""

    draining: bool = False
    problems: Mapping[str, str] = field(default_factory=dict)

    @property
    def serving(self) -> bool:
        return not self.draining and not self.problems

    def serves(self, model: str) -> bool:
        return not self.draining and model not in self.problems

    def as_json(self) -> dict[str, Any]:
        """TorchServe's shape: `{"status": "Healthy"}`, else "Unhealthy" with the reasons."""
        if self.serving:
            return {"status": "Healthy"}
        body: dict[str, Any] = {"status": "Unhealthy"}
        if self.draining:
            body["draining"] = "shutting down: finishing the requests in flight, taking no new ones"
        if self.problems:
            body["models"] = dict(self.problems)
        return body


def worker_problem(worker: Worker[Any], stuck_seconds: float) -> str | None:
    """Why the model behind `worker` cannot serve, or None when it can."""
    if not worker.alive:
        return "its worker thread has ended (the log says why); restart glimpse"
    busy = worker.busy_seconds
    if busy > stuck_seconds:
        return (
            f"its batch has run for {busy:.0f} s, over stuck_seconds={stuck_seconds:g} "
            "(GLIMPSE_STUCK_SECONDS): the requests queued behind it cannot move; restart "
            "glimpse, or raise the bound if explanations this long are expected"
        )
    return None


class Lifecycle:
    """The drain's state and sequence, the count of requests in flight on both doors, and
    health. Doors call `enter`/`leave` (or `admitted()`) around each request.

    Example: ``with lifecycle.admitted(): ...`` raises Draining once the drain refuses work.
    """

    def __init__(self, drain_seconds: float = 30.0, stuck_seconds: float = 120.0) -> None:
        self.drain_seconds = drain_seconds
        self.stuck_seconds = stuck_seconds
        self.draining = False  # health reports NOT_SERVING
        self.refusing = False  # new requests are refused
        self._inflight = 0
        self._lock = threading.Lock()  # the doors may run on different threads (tests)
        self._signalled = asyncio.Event()
        self._cut_short = False
        self._on_drain: list[Callable[[], Awaitable[None]]] = []

    # -- admission ------------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        return self._inflight

    def enter(self) -> None:
        """Count a new request in flight; Draining once the drain refuses new work."""
        with self._lock:
            if self.refusing:
                raise Draining(
                    "glimpse is shutting down: it finishes the requests it has (for up to "
                    f"drain_seconds={self.drain_seconds:g} s, --drain-seconds / "
                    "GLIMPSE_DRAIN_SECONDS) and takes no new ones; send the request to "
                    "another replica, or retry once glimpse is back"
                )
            self._inflight += 1

    def leave(self) -> None:
        with self._lock:
            self._inflight -= 1

    @contextmanager
    def admitted(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    # -- health ---------------------------------------------------------------------------
    def health(self, workers: Mapping[str, Worker[Any]]) -> Health:
        """Health now, from the drain state and each model's worker."""
        problems = {
            name: problem
            for name, worker in workers.items()
            if (problem := worker_problem(worker, self.stuck_seconds)) is not None
        }
        return Health(self.draining, problems)

    def on_drain(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await `callback` when the drain turns health NOT_SERVING, before refusing work
        (e.g. to push the new status to gRPC health watchers). Runs on the draining loop."""
        self._on_drain.append(callback)

    # -- signals and the drain --------------------------------------------------------------
    def take_signals(self) -> None:
        """From now on SIGTERM and SIGINT start the drain (a second one cuts its wait short)
        instead of ending the process; the running loop's handlers go with the loop."""
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._signal, sig)

    def _signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if not self._signalled.is_set():
            log.info("%s: draining (for up to %g s)", name, self.drain_seconds)
            self._signalled.set()
        else:
            log.warning("%s again: no more waiting for the requests in flight", name)
            self._cut_short = True

    async def signalled(self) -> None:
        """Return once SIGTERM or SIGINT has arrived."""
        await self._signalled.wait()

    async def drain(self) -> bool:
        """NOT_SERVING, then refuse new work, then wait for the requests in flight (at most
        drain_seconds). True when they all finished."""
        self.draining = True
        for callback in self._on_drain:
            await callback()
        self.refusing = True
        deadline = time.monotonic() + self.drain_seconds
        while self.inflight and not self._cut_short and time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)
        if self.inflight:
            log.warning("drain over with %d request(s) still in flight: cut", self.inflight)
            return False
        log.info("drained: no request in flight")
        return True


class HttpServer(uvicorn.Server):
    """uvicorn's server without its own signal handlers. Its handlers would stop HTTP at
    once and re-raise the signal afterwards, ending the process before gRPC drains and
    the runtime cleans up. This one stops when `should_exit` is set (`stop_on_signal`)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def stop_on_signal(lifecycle: Lifecycle, server: uvicorn.Server) -> None:
    """At the first SIGTERM/SIGINT: drain, then let uvicorn close its listener and
    connections (its `serve()` then returns)."""
    await lifecycle.signalled()
    await lifecycle.drain()
    server.should_exit = True
