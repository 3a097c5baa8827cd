"""What every flow shares: the request values the doors build, and one request's passage
through a model (its stage timings and the model's queue).

A flow is one kind of model's route through the pipeline (decode -> queue -> run ->
encode); `service.flows.flow_for` picks it once, when the archive is loaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from service.encode import FORMATS
from service.errors import SchemaError
from service.explain import Explainer
from service.metrics import Metrics
from service.results import Explanation, Prediction
from service.timing import Timings

T = TypeVar("T")

# Decode and encode (Pillow, numpy: they release the GIL) run here, beside the model's worker
# thread, with a bound so that a burst of uploads cannot crowd the forward passes out.
CODEC_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="glimpse-codec")


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
    overlay_format: str = "png"  # one of service.encode.FORMATS

    def __post_init__(self) -> None:
        if self.overlay_format not in FORMATS:
            raise SchemaError(f"format must be one of {list(FORMATS)}, got {self.overlay_format!r}")


class Runner(Protocol):
    """A model's queue: its worker runs jobs in batches and answers each job."""

    async def run(self, job: Any) -> Any: ...


@dataclass
class Call:
    """One request's passage through one model: stage timings, queue and batch metrics."""

    model: str
    runner: Runner
    metrics: Metrics
    timings: Timings

    async def queued(self, job: Job) -> Any:
        """Hand `job` to the model's worker and await its answer."""
        return await self.runner.run(job)

    async def in_thread(self, stage: str, work: Callable[[], T]) -> T:
        """Run `work` off the event loop (in the bounded codec pool), timed as `stage`."""
        with self.timings.stage(stage):
            return await asyncio.get_running_loop().run_in_executor(CODEC_POOL, work)


@dataclass
class Job:
    """One request's work for the model's worker; each flow adds what it needs."""

    call: Call


JobT = TypeVar("JobT", bound=Job)


def run_batch(
    batch: Sequence[tuple[JobT, float]],
    run: Callable[[list[JobT]], list[Any]],
) -> list[Any]:
    """What every flow's worker does with a batch: record each job's wait in the queue, run
    the batch; if that fails, run each job alone, so that only the bad ones fail."""
    for job, waited in batch:
        job.call.timings.record("queue", waited)
    jobs = [job for job, _ in batch]
    try:
        return run(jobs)
    except Exception as exc:  # noqa: BLE001 - narrowed below, job by job
        if len(jobs) == 1:
            return [exc]
    answers: list[Any] = []
    for job in jobs:
        try:
            answers.extend(run([job]))
        except Exception as exc:  # noqa: BLE001 - this job's own failure is its answer
            answers.append(exc)
    return answers


class Flow(Protocol):
    """One kind of model's way through the pipeline. Each method gets the request's `Call`;
    `process` is what the model's worker runs on a batch of the flow's jobs."""

    def process(self, batch: Sequence[tuple[Any, float]]) -> list[Any]:
        """One answer (or exception) per (job, seconds waited), in order."""
        ...

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
