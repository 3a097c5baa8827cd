"""glimpse's in-process engine: the archives it serves and the queue in front of each model.

Each model has one `Worker`: a queue and a dedicated thread that runs jobs in
order, so the event loop never blocks on torch and hooks never race.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from service.archive import OpenedArchive, open_archive
from service.errors import ModelNotFound, Overloaded
from service.explain import REGISTRY, methods_for
from service.flows import Flow, flow_for
from service.handlers.base import GlimpseHandler
from service.metrics import Metrics

T = TypeVar("T")
log = logging.getLogger("glimpse")


@dataclass
class _Queued:
    job: Callable[[float], Any]
    future: Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)


class Worker:
    """A bounded queue in front of one model; jobs run one at a time on its own thread."""

    def __init__(self, name: str, max_queue: int, on_depth: Callable[[int], None]) -> None:
        self.name = name
        self.max_queue = max_queue
        self._on_depth = on_depth
        self._jobs: queue.Queue[_Queued | None] = queue.Queue()
        self.closed = False
        self._thread = threading.Thread(target=self._run, name=f"glimpse-{name}", daemon=True)
        self._thread.start()

    async def run(self, job: Callable[[float], T]) -> T:
        """Queue `job` and await its result; Overloaded when the queue is full."""
        future: Future[T] = self.submit(job)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # a job that has not started yet is skipped
            raise

    def submit(self, job: Callable[[float], T]) -> Future[T]:
        if self.closed:
            raise ModelNotFound(f"model {self.name!r} was unregistered")
        if self._jobs.qsize() >= self.max_queue:
            raise Overloaded(
                f"model {self.name!r} has {self.max_queue} requests waiting; retry shortly"
            )
        future: Future[T] = Future()
        item = _Queued(job, future)
        self._jobs.put(item)
        self._on_depth(self._jobs.qsize())
        return future

    def close(self, timeout: float | None = 10) -> None:
        """Take no more jobs; the queued ones run first, then the thread ends."""
        self.closed = True
        self._jobs.put(None)
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            self._on_depth(self._jobs.qsize())
            if not item.future.set_running_or_notify_cancel():
                continue
            try:
                item.future.set_result(item.job(time.perf_counter() - item.enqueued))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                item.future.set_exception(exc)


@dataclass
class Model:
    """One served archive: its handler, queue and what `GET /models/{name}` shows."""

    archive: OpenedArchive
    worker: Worker
    flow: Flow
    load_seconds: float
    active: int = 0  # requests between finding this model and their answer

    @contextmanager
    def in_use(self) -> Iterator[Model]:
        """Count a request as in flight on this model for the block's duration."""
        self.active += 1
        try:
            yield self
        finally:
            self.active -= 1

    @property
    def name(self) -> str:
        return self.archive.name

    @property
    def handler(self) -> GlimpseHandler:
        return self.archive.handler

    def describe(self) -> dict[str, Any]:
        kind = self.handler.kind
        return {
            "name": self.name,
            **self.handler.describe(),
            "archive": self.archive.path.name,
            "metadata": {
                k: v
                for k, v in self.handler.metadata.items()
                if k in ("format_version", "evaluation", "data", "training")
            },
            "explanations": [REGISTRY[m].describe() for m in methods_for(kind)],
        }


class Runtime:
    """Loads archives and owns their workers. Example: ``Runtime.load([Path("cnn.mar")])``."""

    def __init__(
        self,
        workdir: Path,
        metrics: Metrics,
        max_queue: int = 64,
        max_image_pixels: int | None = None,
    ) -> None:
        self.models: dict[str, Model] = {}
        self.metrics = metrics
        self.max_queue = max_queue
        self.max_image_pixels = max_image_pixels
        self._workdir = workdir
        metrics.methods.update(REGISTRY)

    @classmethod
    def load(
        cls,
        archives: list[Path],
        max_queue: int = 64,
        metrics: Metrics | None = None,
        max_image_pixels: int | None = None,
    ) -> Runtime:
        """Open every archive it can; one that cannot be served is skipped with one warning
        line naming it and the reason. Two archives with one model name are an error."""
        workdir = Path(tempfile.mkdtemp(prefix="glimpse-models-"))
        runtime = cls(workdir, metrics or Metrics(), max_queue, max_image_pixels)
        try:
            for path in archives:
                try:
                    runtime.add(path)
                except DuplicateModel:
                    raise
                except Exception as exc:  # noqa: BLE001 - a bad archive never stops the server
                    log.warning("skipping %s: %s", path.name, " ".join(str(exc).split()))
        except BaseException:
            runtime.close()
            raise
        return runtime

    def add(self, path: Path) -> Model:
        """Open `path` and serve it; DuplicateModel when its model name is already served."""
        started = time.perf_counter()
        opened = open_archive(path, self._workdir, {"max_image_pixels": self.max_image_pixels})
        if opened.name in self.models:
            shutil.rmtree(opened.model_dir, ignore_errors=True)
            first = self.models[opened.name].archive.path
            raise DuplicateModel(
                f"{path} and {first} both hold a model named {opened.name!r}; "
                "rename one (torch-model-archiver --model-name) or serve only one"
            )
        flow = flow_for(opened.name, opened.handler)
        seconds = time.perf_counter() - started
        gauge = self.metrics.queue_depth.labels(opened.name)
        worker = Worker(opened.name, self.max_queue, gauge.set)
        model = Model(opened, worker, flow, seconds)
        self.models[opened.name] = model
        self.metrics.models.add(opened.name)
        self.metrics.model_load.labels(opened.name).set(seconds)
        return model

    async def remove(self, name: str) -> None:
        """Stop serving `name`: new requests get 404 at once; those in flight finish first."""
        model = self.get(name)
        del self.models[name]
        while model.active:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(model.worker.close, None)
        shutil.rmtree(model.archive.model_dir, ignore_errors=True)

    def get(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"no model named {name!r}; this server has {sorted(self.models)}")
        return model

    def close(self) -> None:
        for model in self.models.values():
            model.worker.close()
        shutil.rmtree(self._workdir, ignore_errors=True)


class DuplicateModel(ValueError):
    """Two archives hold models of the same name."""
