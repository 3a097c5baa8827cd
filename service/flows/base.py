"""What every flow shares: the request values the doors build, and one request's passage
through a model (its stage timings and the model's queue).

A flow is one kind of model's route through the pipeline (decode -> queue -> run ->
encode); `service.flows.flow_for` picks it once, when the archive is loaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import numpy as np

from service.decode_pool import DecodePool
from service.encode import FORMATS
from service.errors import DeadlineExceeded, OverBudget, SchemaError
from service.explain import Explainer
from service.explain.base import ModelInput
from service.limits import DEFAULT_LIMITS, Deadline, Limits
from service.metrics import Metrics
from service.results import Explanation, MapResult, Prediction
from service.timing import Timings

T = TypeVar("T")

# Decode and encode (Pillow, numpy: they release the GIL) run here, beside the model's worker
# thread, with a bound so that a burst of uploads cannot crowd the forward passes out. Its
# queue is bounded too, by the doors' concurrency limits (GLIMPSE_MAX_CONCURRENCY, see
# service/limits.py's Gate): a request in progress has at most one decode or encode here at
# a time (a gRPC stream at most its window of inputs), and requests beyond the limit are
# refused at the door before they read their body, so a burst cannot queue unbounded work.
CODEC_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="glimpse-codec")


@dataclass(frozen=True)
class Payload:
    """One input as a door received it: raw bytes (an image file, a JSON body) with the
    content type the client declared ("" when the door has none), an already decoded row, or
    an image already preprocessed to the model's input (a `Tensor`: no decode, no resize)."""

    data: bytes | Mapping[str, Any] | Tensor
    content_type: str = ""


@dataclass(frozen=True)
class Tensor:
    """One image as the model takes it, already preprocessed: float32 [3, H, W] (the Open
    Inference Protocol's FP32 input). Example: ``Payload(Tensor(np.zeros((3, 64, 64))))``"""

    values: np.ndarray


@dataclass
class PredictRequest:
    model: str
    inputs: list[Payload]
    timeout: float | None = None  # seconds the client allows (a gRPC deadline); None: no own
    all_classes: bool = False  # an image's prediction lists every class, not just the top 5


@dataclass
class ExplainRequest:
    model: str
    inputs: list[Payload]
    methods: list[str] = field(default_factory=list)  # empty: the handler's default_method
    target: str | None = None  # class names or indices, comma-separated; None: the predicted one
    params: dict[str, Any] = field(default_factory=dict)  # "param" or "method.param" -> value
    overlay: bool = True  # include overlay pictures
    overlay_format: str = "png"  # one of service.encode.FORMATS
    timeout: float | None = None  # seconds the client allows (a gRPC deadline); None: no own
    all_classes: bool = False  # an image's prediction lists every class, not just the top 5

    def __post_init__(self) -> None:
        if self.overlay_format not in FORMATS:
            raise SchemaError(f"format must be one of {list(FORMATS)}, got {self.overlay_format!r}")

    @classmethod
    def from_options(
        cls, model: str, inputs: list[Payload], options: Mapping[str, str]
    ) -> ExplainRequest:
        """A request from glimpse's explanation options as text (HTTP's query parameters,
        TorchServe's fields): `methods` (or `method`), `target`, `overlay`, `format`, and every
        other name a method parameter."""
        raw_methods = options.get("methods") or options.get("method") or ""
        return cls(
            model,
            inputs,
            [m.strip() for m in raw_methods.split(",") if m.strip()],
            options.get("target"),
            {k: v for k, v in options.items() if k not in ROUTE_OPTIONS},
            options.get("overlay", "true").lower() not in ("0", "false", "no"),
            options.get("format", "png").lower(),
        )


# The explanation options that are not method parameters.
ROUTE_OPTIONS = frozenset({"methods", "method", "target", "overlay", "format"})


class Runner(Protocol):
    """A model's queue: its worker runs jobs in batches and answers each job."""

    async def run(self, job: Any) -> Any: ...


@dataclass
class Call:
    """One request's passage through one model: stage timings, queue and batch metrics, the
    limits it runs under and its deadline (None: none)."""

    model: str
    runner: Runner
    metrics: Metrics
    timings: Timings
    limits: Limits = DEFAULT_LIMITS
    deadline: Deadline | None = None
    decoders: DecodePool | None = None  # the runtime's decode processes, if it has any
    alone: Callable[[], bool] = lambda: False  # True while this is the only request in flight

    async def within(self, work: Awaitable[T]) -> T:
        """Await `work` until the deadline; DeadlineExceeded once it passes (work still queued
        for the model is then dropped, and the worker skips what is left of a running job)."""
        if self.deadline is None:
            return await work
        try:
            async with asyncio.timeout(self.deadline.remaining()):
                return await work
        except TimeoutError:
            raise self.deadline.error("before the answer was ready") from None

    def overdue(self, where: str) -> DeadlineExceeded | None:
        """The refusal to answer with when the deadline has passed at `where`, else None."""
        if self.deadline is not None and self.deadline.passed():
            return self.deadline.error(where)
        return None

    def check_budget(
        self,
        explainers: dict[str, Explainer],
        model_input: ModelInput,
        inputs: int,
        targets: int = 1,
    ) -> int:
        """The model evaluations `explainers` need for `inputs` inputs (images or rows) and
        `targets` targets each; OverBudget when that is more than the request's budget.
        Checked before anything is queued."""
        costs = {name: e.cost(model_input) for name, e in explainers.items()}
        total = inputs * targets * sum(costs.values())
        budget = self.limits.explain_budget
        if total > budget:
            each = " + ".join(f"{name} {cost}" for name, cost in costs.items())
            raise OverBudget(
                f"this explanation needs {total} model evaluations ({inputs} input(s) x "
                f"{targets} target(s) x ({each})), over the budget of {budget} per request "
                f"(GLIMPSE_EXPLAIN_BUDGET): ask for fewer steps or samples, a larger occlusion "
                "stride, fewer methods, targets, inputs or rows, or raise the budget"
            )
        return total

    async def queued(self, job: Job) -> Any:
        """Hand `job` to the model's worker and await its answer."""
        return await self.runner.run(job)

    async def in_thread(self, stage: str, work: Callable[[], T]) -> T:
        """Run `work` off the event loop (in the bounded codec pool), timed as `stage`."""
        with self.timings.stage(stage):
            return await asyncio.get_running_loop().run_in_executor(CODEC_POOL, work)

    async def in_process(
        self, stage: str, work: Callable[..., T], *args: Any, key: int | None = None
    ) -> T:
        """`work(*args)` in the runtime's decode processes (service.decode_pool), or in the
        codec pool when it has none; timed as `stage`. `work` and `args` must pickle. Calls
        with the same `key` run in the same process."""
        if self.decoders is None:
            return await self.in_thread(stage, partial(work, *args))
        with self.timings.stage(stage):
            return await self.decoders.run(work, *args, key=key, alone=self.alone())


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

    async def predict(
        self, call: Call, payloads: list[Payload], all_classes: bool = False
    ) -> Sequence[Prediction]:
        """One answer per payload, as the handler answers inside TorchServe (with
        `all_classes`, an image's answer lists every class instead of the top 5)."""
        ...

    async def explain(
        self, call: Call, request: ExplainRequest, explainers: dict[str, Explainer]
    ) -> Sequence[Explanation]:
        """One result per input (an image, or a row)."""
        ...

    async def heatmap(
        self, call: Call, request: ExplainRequest, explainers: dict[str, Explainer]
    ) -> MapResult:
        """The first input's map for the first method and target, with its overlay."""
        ...
