"""glimpse's in-process engine: the archives it serves and the queue in front of each model.

Each model has one `Worker`: a queue and a dedicated thread that runs jobs in
order, so the event loop never blocks on torch and hooks never race. A later
dynamic-batching worker drains several jobs from the same queue at once.
"""

from __future__ import annotations

import asyncio
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.archive import OpenedArchive, open_archive
from service.errors import ModelNotFound, Overloaded
from service.explain import REGISTRY, methods_for
from service.metrics import Metrics

Job = Callable[[float], Any]  # receives the seconds it waited in the queue


@dataclass
class _Queued:
    job: Job
    future: Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)


class Worker:
    """A bounded queue in front of one model; jobs run one at a time on its own thread."""

    def __init__(self, name: str, max_queue: int, on_depth: Callable[[int], None]) -> None:
        self.name = name
        self.max_queue = max_queue
        self._on_depth = on_depth
        self._jobs: queue.Queue[_Queued | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"glimpse-{name}", daemon=True)
        self._thread.start()

    async def run(self, job: Job) -> Any:
        """Queue `job` and await its result; Overloaded when the queue is full."""
        future = self.submit(job)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # a job that has not started yet is skipped
            raise

    def submit(self, job: Job) -> Future[Any]:
        if self._jobs.qsize() >= self.max_queue:
            raise Overloaded(
                f"model {self.name!r} has {self.max_queue} requests waiting; retry shortly"
            )
        item = _Queued(job, Future())
        self._jobs.put(item)
        self._on_depth(self._jobs.qsize())
        return item.future

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

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
    load_seconds: float

    @property
    def name(self) -> str:
        return self.archive.name

    @property
    def handler(self) -> Any:
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

    def __init__(self, models: dict[str, Model], workdir: Path, metrics: Metrics) -> None:
        self.models = models
        self.metrics = metrics
        self._workdir = workdir

    @classmethod
    def load(
        cls,
        archives: list[Path],
        max_queue: int = 64,
        metrics: Metrics | None = None,
        max_image_pixels: int | None = None,
    ) -> Runtime:
        workdir = Path(tempfile.mkdtemp(prefix="glimpse-models-"))
        metrics = metrics or Metrics()
        models: dict[str, Model] = {}
        for path in archives:
            started = time.perf_counter()
            opened = open_archive(path, workdir)
            if max_image_pixels is not None and hasattr(opened.handler, "max_pixels"):
                opened.handler.max_pixels = max_image_pixels  # type: ignore[attr-defined]
            seconds = time.perf_counter() - started
            gauge = metrics.queue_depth.labels(opened.name)
            worker = Worker(opened.name, max_queue, gauge.set)
            models[opened.name] = Model(opened, worker, seconds)
            metrics.model_load.labels(opened.name).set(seconds)
        metrics.models.update(models)
        metrics.methods.update(REGISTRY)
        return cls(models, workdir, metrics)

    def get(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"no model named {name!r}; this server has {sorted(self.models)}")
        return model

    def close(self) -> None:
        for model in self.models.values():
            model.worker.close()
        shutil.rmtree(self._workdir, ignore_errors=True)
