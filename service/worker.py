"""The queue in front of one model and the thread that serves it, in batches.

The worker takes every job already waiting (up to `batch_size`), waits at most
`max_batch_delay` ms for more when the batch is not full, and hands the batch to the
model's flow, which answers each job on its own: one result or one exception per job,
so a bad job fails alone. With `max_batch_delay=0` (the default) a lone request never
waits for company, and under load the jobs that queued while the previous batch ran
make the next batch. TorchServe's names: `batch_size`, `max_batch_delay` (ms).

Example: ``Worker("cnn", flow.process, Batching(16, 0), max_queue=64, on_depth=print)``
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from service.errors import ModelNotFound, ModelUnavailable, Overloaded

J = TypeVar("J")
R = TypeVar("R")
log = logging.getLogger("glimpse")
_ENDED = (
    "model {!r} cannot answer: its worker thread has ended (the log says why); "
    "restart glimpse to serve it again"
)

# The flow's batch function: (job, seconds it waited) for each job -> a result or an exception
# for each, in order.
Process = Callable[[Sequence[tuple[J, float]]], Sequence[Any]]


@dataclass(frozen=True)
class Batching:
    """How many jobs one pass may take and how long (ms) to wait for them to gather."""

    batch_size: int = 16
    max_batch_delay: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_batch_delay < 0:
            raise ValueError(
                f"batch_size must be at least 1 and max_batch_delay at least 0 ms, got "
                f"{self.batch_size} and {self.max_batch_delay}"
            )


DEFAULT_BATCHING = Batching()


@dataclass
class _Queued(Generic[J]):
    job: J
    future: Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)


class Worker(Generic[J]):
    """A bounded queue in front of one model; batches run one at a time on its own thread."""

    def __init__(
        self,
        name: str,
        process: Process[J],
        batching: Batching,
        max_queue: int,
        on_depth: Callable[[int], None],
    ) -> None:
        self.name = name
        self.batching = batching
        self.max_queue = max_queue
        self.closed = False
        self._process = process
        self._on_depth = on_depth
        self._jobs: queue.Queue[_Queued[J] | None] = queue.Queue()
        self._batch_started: float | None = None  # perf_counter() when the running batch began
        self._taken: list[_Queued[J]] = []  # the batch between the queue and its answers
        self._thread = threading.Thread(target=self._run, name=f"glimpse-{name}", daemon=True)
        self._thread.start()

    async def run(self, job: J) -> Any:
        """Queue `job` and await its result; Overloaded when the queue is full. A caller
        cancelled while its job waits takes the job out: it never reaches a batch."""
        future = self.submit(job)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def submit(self, job: J) -> Future[Any]:
        if self.closed:
            raise ModelNotFound(f"model {self.name!r} was unregistered")
        if not self.alive:
            raise ModelUnavailable(_ENDED.format(self.name))
        if self._jobs.qsize() >= self.max_queue:
            raise Overloaded(
                f"model {self.name!r} has {self.max_queue} requests waiting; retry shortly"
            )
        item: _Queued[J] = _Queued(job, Future())
        self._jobs.put(item)
        self._on_depth(self._jobs.qsize())
        return item.future

    def close(self, timeout: float | None = 10) -> None:
        """Take no more jobs; the queued ones run first, then the thread ends."""
        self.closed = True
        self._jobs.put(None)
        self._thread.join(timeout=timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def busy_seconds(self) -> float:
        """How long the running batch has run so far; 0 while the worker waits for jobs."""
        started = self._batch_started
        return 0.0 if started is None else time.perf_counter() - started

    def _run(self) -> None:
        """Serve batches until closed. Should the loop itself fail (a bug: the batch function's
        errors go to their jobs), log it and fail its batch and the jobs still queued; `alive`
        turns False and health reports the model NOT_SERVING."""
        try:
            self._serve()
        except BaseException:  # noqa: BLE001 - logged; health reports the dead worker
            log.critical("model %r: its worker thread failed", self.name, exc_info=True)
            self._fail_waiting()

    def _fail_waiting(self) -> None:
        waiting: list[_Queued[J] | None] = [*self._taken]
        while not self._jobs.empty():
            waiting.append(self._jobs.get_nowait())
        for item in waiting:
            with contextlib.suppress(InvalidStateError):  # its caller may cancel it meanwhile
                if item is not None and not item.future.done():
                    item.future.set_exception(ModelUnavailable(_ENDED.format(self.name)))

    def _serve(self) -> None:
        running = True
        while running:
            self._taken, running = self._gather()
            self._on_depth(self._jobs.qsize())
            live = [item for item in self._taken if item.future.set_running_or_notify_cancel()]
            if live:
                self._answer(live)
            self._taken = []

    def _gather(self) -> tuple[list[_Queued[J]], bool]:
        """The next batch, and False once the closing sentinel has been taken."""
        first = self._jobs.get()
        if first is None:
            return [], False
        batch = [first]
        deadline = time.perf_counter() + self.batching.max_batch_delay / 1000
        while len(batch) < self.batching.batch_size:
            wait = deadline - time.perf_counter()
            try:
                item = self._jobs.get(timeout=wait) if wait > 0 else self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, False
            batch.append(item)
        return batch, True

    def _answer(self, live: list[_Queued[J]]) -> None:
        started = self._batch_started = time.perf_counter()
        try:
            results = list(self._process([(item.job, started - item.enqueued) for item in live]))
        except BaseException as exc:  # noqa: BLE001 - handed to every awaiting request
            results = [exc] * len(live)
        finally:
            self._batch_started = None
        for item, result in zip(live, results, strict=True):
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
