"""What every flow shares: the request values the doors build, and one request's passage
through a model (its stage timings and the model's queue).

A flow is one kind of model's route through the pipeline (decode -> queue -> run ->
encode); `service.flows.flow_for` picks it once, when the archive is loaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from service.explain import Explainer
from service.metrics import Metrics
from service.results import Explanation, Prediction
from service.timing import Timings

T = TypeVar("T")


@dataclass(frozen=True)
class Payload:
    """One input as a door received it: raw bytes (an image file, a JSON body) with the
    content type the client declared ("" when the door has none), or an already decoded row."""

    data: bytes | Mapping[str, Any]
    content_type: str = ""


@dataclass
class PredictRequest:
    model: str
    inputs: list[Payload]


@dataclass
class ExplainRequest:
    model: str
    inputs: list[Payload]
    methods: list[str] = field(default_factory=list)  # empty: the handler's default_method
    target: str | None = None  # class names or indices, comma-separated; None: the predicted one
    params: dict[str, Any] = field(default_factory=dict)  # "param" or "method.param" -> value
    overlay: bool = True  # include overlay pictures


class Runner(Protocol):
    """A model's queue: runs a job (given the seconds it waited) on the model's worker."""

    async def run(self, job: Callable[[float], T]) -> T: ...


@dataclass
class Call:
    """One request's passage through one model: stage timings, queue and batch metrics."""

    model: str
    runner: Runner
    metrics: Metrics
    timings: Timings

    async def queued(self, job: Callable[[], T], batch_size: int) -> T:
        """Run `job` on the model's worker; record its wait and its batch size."""

        def run(waited: float) -> T:
            self.timings.record("queue", waited)
            self.metrics.batch_size.labels(self.model).observe(batch_size)
            return job()

        return await self.runner.run(run)

    async def in_thread(self, stage: str, work: Callable[[], T]) -> T:
        """Run `work` off the event loop, timed as `stage`."""
        with self.timings.stage(stage):
            return await asyncio.to_thread(work)


class Flow(Protocol):
    """One kind of model's way through the pipeline. Each method gets the request's `Call`."""

    async def predict(self, call: Call, payloads: list[Payload]) -> Sequence[Prediction]:
        """One answer per payload, as the handler answers inside TorchServe."""
        ...

    async def explain(
        self, call: Call, request: ExplainRequest, explainers: dict[str, Explainer]
    ) -> Sequence[Explanation]:
        """One result per input (an image, or a row)."""
        ...

    async def heatmap(
        self, call: Call, request: ExplainRequest, explainers: dict[str, Explainer]
    ) -> bytes:
        """The first input's overlay for the first method and target, as encoded bytes."""
        ...
