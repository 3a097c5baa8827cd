"""Tabular rows: decode -> queue -> predict or attribute per method -> one result per row.

Example: ``await TabularFlow("tabular", handler).predict(call, [Payload(b'{"Store": 1}')])``
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from service.errors import BadInput, DeadlineExceeded, UnsupportedMediaType
from service.explain import Explainer
from service.explain.base import ModelInput
from service.flows.base import Call, ExplainRequest, Job, Payload, Tensor, run_batch
from service.handlers.tabular import Row, TabularHandler
from service.results import MapResult, RowResult


@dataclass
class TabularJob(Job):
    """One request's rows, and for an explanation the methods to attribute them with."""

    rows: list[Row]
    explainers: dict[str, Explainer] = field(default_factory=dict)


class TabularFlow:
    """The flow of a tabular model. A payload holds one row or a list of rows."""

    def __init__(self, name: str, handler: TabularHandler) -> None:
        self.name = name
        self.handler = handler

    def process(self, batch: Sequence[tuple[TabularJob, float]]) -> list[Any]:
        return run_batch(batch, self._answer)

    async def predict(
        self, call: Call, payloads: list[Payload], all_classes: bool = False
    ) -> list[list[float]]:
        """Per payload, the predicted value of each of its rows (what TorchServe answers)."""
        requests = await call.in_thread("decode", lambda: self.decode(payloads))
        call.limits.check_rows(sum(len(rows) for rows in requests))
        values = iter(await call.queued(TabularJob(call, [r for rows in requests for r in rows])))
        return [[next(values) for _ in rows] for rows in requests]

    async def explain(
        self, call: Call, request: ExplainRequest, explainers: dict[str, Explainer]
    ) -> list[RowResult]:
        requests = await call.in_thread("decode", lambda: self.decode(request.inputs))
        rows = [row for payload_rows in requests for row in payload_rows]
        call.limits.check_rows(len(rows))
        call.check_budget(explainers, self.model_input, len(rows))
        answer: list[RowResult] = await call.queued(TabularJob(call, rows, explainers))
        return answer

    @property
    def model_input(self) -> ModelInput:
        """What a method's cost depends on: each row is attributed from every reference row."""
        return ModelInput(references=int(self.handler.references[0].shape[0]))

    def _answer(self, jobs: list[TabularJob]) -> list[Any]:
        """Predictions for all predicting jobs in one pass; each method once over the rows of
        every job that asked for it; then each job's own rows back. A job whose deadline has
        passed before a pass it takes part in is answered DeadlineExceeded instead."""
        answers: dict[int, Any] = {}
        late: dict[int, DeadlineExceeded] = {}
        on_time = _on_time(jobs, range(len(jobs)), late, "before its forward pass")
        if on_time:
            rows = sum(len(jobs[k].rows) for k in on_time)
            jobs[0].call.metrics.batch_size.labels(self.name).observe(rows)
        predicting = [k for k in on_time if not jobs[k].explainers]
        if predicting:
            values = self._timed(
                jobs, predicting, "inference", "", lambda rows: self.handler.predict_rows(rows)
            )
            for k, part in zip(predicting, values, strict=True):
                answers[k] = part
        per_method: dict[int, list[list[RowResult]]] = {
            k: [] for k in on_time if jobs[k].explainers
        }
        groups: dict[Any, list[int]] = {}
        for k in per_method:
            for explainer in jobs[k].explainers.values():
                groups.setdefault(explainer.same_call(), []).append(k)
        for key, members in groups.items():
            explainer = next(
                e for e in jobs[members[0]].explainers.values() if e.same_call() == key
            )
            members = _on_time(jobs, members, late, f"before {explainer.name} ran")
            if not members:
                continue
            parts = self._timed(
                jobs,
                members,
                explainer.stage,
                explainer.name,
                partial(self.handler.explain_rows, method=explainer),
            )
            for k, part in zip(members, parts, strict=True):
                per_method[k].append(part)
        for k, results in per_method.items():
            if k not in late:
                answers[k] = [_merge(row) for row in zip(*results, strict=True)]
        return [late[k] if k in late else answers[k] for k in range(len(jobs))]

    def _timed(
        self,
        jobs: list[TabularJob],
        members: list[int],
        stage: str,
        method: str,
        run: Callable[[list[Row]], list[Any]],
    ) -> list[list[Any]]:
        """`run` over the rows of `members` at once, split back per job; each job records it."""
        rows = [row for k in members for row in jobs[k].rows]
        started = time.perf_counter()
        out = run(rows)
        seconds = time.perf_counter() - started
        parts, start = [], 0
        for k in members:
            jobs[k].call.timings.record(stage, seconds, method)
            parts.append(out[start : start + len(jobs[k].rows)])
            start += len(jobs[k].rows)
        return parts

    async def heatmap(
        self, call: Call, request: ExplainRequest, explainers: dict[str, Explainer]
    ) -> MapResult:
        raise UnsupportedMediaType(
            f"{self.name} is not an image model; use /explanations/{self.name}"
        )

    def decode(self, payloads: list[Payload]) -> list[list[Row]]:
        """Each payload's rows, decoded by the handler exactly as inside TorchServe."""
        decoded = [self._rows(i, payload) for i, payload in enumerate(payloads)]
        if not any(decoded):
            raise BadInput("the request has no inputs")
        return decoded

    def _rows(self, index: int, payload: Payload) -> list[Row]:
        content_type = payload.content_type
        if isinstance(payload.data, Tensor):
            raise BadInput(f"input {index}: {self.name} is a tabular model; send rows, not images")
        if not isinstance(payload.data, Mapping) and content_type not in ("application/json", ""):
            raise UnsupportedMediaType(
                f"input {index}: {self.name} is a tabular model; send rows as application/json, "
                f"not {content_type} (gRPC: set Input.row)"
            )
        return self.handler.decode(payload.data)


def _on_time(
    jobs: list[TabularJob], members: Sequence[int], late: dict[int, DeadlineExceeded], where: str
) -> list[int]:
    """The `members` not late: a job whose deadline has passed at `where` joins `late`."""
    for k in members:
        if k not in late and (error := jobs[k].call.overdue(where)) is not None:
            late[k] = error
    return [k for k in members if k not in late]


def _merge(results: tuple[RowResult, ...]) -> RowResult:
    """One row's results from several methods -> one result with attributions by method."""
    first = results[0]
    return RowResult(
        prediction=first.prediction,
        base_value=first.base_value,
        attributions={k: v for r in results for k, v in r.attributions.items()},
        convergence_delta={k: v for r in results for k, v in r.convergence_delta.items()},
        extras={k: v for r in results for k, v in r.extras.items()},
    )
