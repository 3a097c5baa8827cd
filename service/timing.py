"""Stage timing: one context manager feeds the per-request timings and the stage histogram."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from service.metrics import Metrics


class Timings:
    """Milliseconds per stage for one request. Example: ``with timings.stage("decode"): ...``"""

    def __init__(self, model: str, metrics: Metrics | None = None) -> None:
        self.model = model
        self.metrics = metrics
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, method: str = "") -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, time.perf_counter() - started, method)

    def record(self, name: str, seconds: float, method: str = "") -> None:
        key = f"{name}.{method}" if method else name
        self.ms[key] = round(self.ms.get(key, 0.0) + seconds * 1000, 3)
        if self.metrics is not None:
            self.metrics.observe_stage(self.model, name, seconds, method)
