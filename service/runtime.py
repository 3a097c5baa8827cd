"""glimpse's in-process engine: the archives it serves and the worker in front of each model.

Each model has one `Worker` (service/worker.py): a bounded queue and a dedicated thread
that runs the model's flow on batches of jobs, so the event loop never blocks on torch
and hooks never race.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from service.archive import OpenedArchive, open_archive
from service.decode_pool import DecodePool
from service.errors import ModelNotFound
from service.explain import REGISTRY, methods_for
from service.flows import Flow, flow_for
from service.handlers.base import GlimpseHandler
from service.metrics import Metrics
from service.worker import DEFAULT_BATCHING, Batching, Worker

T = TypeVar("T")
log = logging.getLogger("glimpse")


@dataclass
class Model:
    """One served archive: its handler, queue and what `GET /models/{name}` shows."""

    archive: OpenedArchive
    worker: Worker[Any]
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
            "explanations": [REGISTRY[m].describe(kind) for m in methods_for(kind)],
        }


class Runtime:
    """Loads archives and owns their workers. Example: ``Runtime.load([Path("cnn.mar")])``."""

    def __init__(
        self,
        workdir: Path,
        metrics: Metrics,
        max_queue: int = 64,
        max_image_pixels: int | None = None,
        batching: Batching = DEFAULT_BATCHING,
        decoders: DecodePool | None = None,
    ) -> None:
        self.models: dict[str, Model] = {}
        self.decoders = decoders  # where image uploads are decoded (None: the codec threads)
        self.metrics = metrics
        self.max_queue = max_queue
        self.max_image_pixels = max_image_pixels
        self.batching = batching
        self._workdir = workdir
        metrics.methods.update(REGISTRY)

    @classmethod
    def load(
        cls,
        archives: list[Path],
        max_queue: int = 64,
        metrics: Metrics | None = None,
        max_image_pixels: int | None = None,
        batching: Batching = DEFAULT_BATCHING,
        decode_processes: int = 0,
    ) -> Runtime:
        """Open every archive it can; one that cannot be served is skipped with one warning
        line naming it and the reason. Two archives with one model name are an error.
        `decode_processes` > 0 starts that many decode processes (service.decoding)."""
        workdir = Path(tempfile.mkdtemp(prefix="glimpse-models-"))
        decoders = DecodePool(decode_processes) if decode_processes > 0 else None
        runtime = cls(
            workdir, metrics or Metrics(), max_queue, max_image_pixels, batching, decoders
        )
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
        batching = archive_batching(opened, self.batching)
        worker = Worker(opened.name, flow.process, batching, self.max_queue, gauge.set)
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

    def alone(self) -> bool:
        """True while at most one request is in flight on all the models together."""
        return sum(model.active for model in self.models.values()) <= 1

    def get(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"no model named {name!r}; this server has {sorted(self.models)}")
        return model

    def close(self) -> None:
        for model in self.models.values():
            model.worker.close()
        if self.decoders is not None:
            self.decoders.close()
        shutil.rmtree(self._workdir, ignore_errors=True)


def archive_batching(opened: OpenedArchive, default: Batching) -> Batching:
    """The archive's own batch_size / max_batch_delay where it sets them, else `default`:
    glimpse metadata `{"batching": {"batch_size": 8, "max_batch_delay": 5}}`, or TorchServe's
    model-config.yaml (`batchSize`, `maxBatchDelay`) named by the manifest."""
    own = dict(opened.handler.metadata.get("batching", {}))
    config_file = opened.manifest["model"].get("configFile")
    if config_file and (opened.model_dir / config_file).is_file():
        config = yaml.safe_load((opened.model_dir / config_file).read_text()) or {}
        for ours, theirs in (("batch_size", "batchSize"), ("max_batch_delay", "maxBatchDelay")):
            if theirs in config:
                own.setdefault(ours, config[theirs])
    return Batching(
        int(own.get("batch_size", default.batch_size)),
        int(own.get("max_batch_delay", default.max_batch_delay)),
    )


class DuplicateModel(ValueError):
    """Two archives hold models of the same name."""
