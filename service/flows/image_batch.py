"""What an image model's worker does with a batch of jobs (predictions and explanations).

One forward pass for every input of every job, with a hook on each layer some job's
method reads (under `torch.inference_mode` when no job's method takes gradients). Then
each method runs once for all the inputs that asked for it with the same options: the
inputs, their targets (which may differ) and their captured activations are concatenated,
so Grad-CAM for several images and targets is one backward. A method whose answer for one
input depends on the others in its call (`batchable = False`: noise drawn per call) runs
job by job. Hooks live for one forward pass, and gradients are taken per method call, on
tensors of that call only. A job whose deadline has passed is answered DeadlineExceeded
before the forward pass or before its next method, and takes no further part in the batch.

Answers hold numpy arrays, made once per batch here: the event loop reads them without
calling into torch, whose calls let go of the GIL and then wait for it behind this worker.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import torch

from service.errors import DeadlineExceeded
from service.explain import Attribution, Explainer
from service.flows.base import Job
from service.handlers.image import ImageHandler, Inference


@dataclass
class ImageJob(Job):
    """One request: its inputs [n, 3, H, W], and for explanations the methods, the targets
    (class indices, None for each input's predicted class) and the layers they read."""

    inputs: torch.Tensor
    explainers: dict[str, Explainer] = field(default_factory=dict)
    wanted: list[int | None] = field(default_factory=lambda: [None])
    layers: frozenset[str] = frozenset()


@dataclass
class TargetRun:
    """Every method's attribution for one choice of target ([n] class indices, int64)."""

    targets: np.ndarray
    attributions: dict[str, Attribution] = field(default_factory=dict)


@dataclass
class ImageAnswer:
    """A job's probabilities [n, K] (float32) and, for an explanation, one run per wanted
    target."""

    probabilities: np.ndarray
    runs: list[TargetRun] = field(default_factory=list)


@dataclass
class _Unit:
    """One job's inputs with one of its targets, for one method."""

    job: int
    run: int
    method: str
    explainer: Explainer


def answer_batch(
    handler: ImageHandler, model: str, jobs: list[ImageJob]
) -> list[ImageAnswer | DeadlineExceeded]:
    """Each job's answer, from one forward pass and one call per method; DeadlineExceeded
    for a job whose deadline passed before its forward pass or one of its methods."""
    late: dict[int, DeadlineExceeded] = {}
    for k, job in enumerate(jobs):
        if (error := job.call.overdue("before its forward pass")) is not None:
            late[k] = error
    on_time = [job for k, job in enumerate(jobs) if k not in late]
    answers = iter(_answer(handler, model, on_time) if on_time else [])
    return [late[k] if k in late else next(answers) for k in range(len(jobs))]


def _answer(
    handler: ImageHandler, model: str, jobs: list[ImageJob]
) -> list[ImageAnswer | DeadlineExceeded]:
    inputs = torch.cat([job.inputs for job in jobs]) if len(jobs) > 1 else jobs[0].inputs
    layers = frozenset().union(*(job.layers for job in jobs))
    gradients = any(e.needs_gradients for job in jobs for e in job.explainers.values())
    started = time.perf_counter()
    result = handler.infer(inputs, capture=False, layers=layers, inference=not gradients)
    seconds = time.perf_counter() - started
    jobs[0].call.metrics.batch_size.labels(model).observe(len(inputs))
    spans = _spans([len(job.inputs) for job in jobs])
    numbers = result.probabilities.detach().numpy()
    answers = []
    for job, (start, stop) in zip(jobs, spans, strict=True):
        job.call.timings.record("inference", seconds)
        probabilities = numbers[start:stop]
        runs = [TargetRun(_targets(i, probabilities)) for i in job.wanted]
        answers.append(ImageAnswer(probabilities, runs if job.explainers else []))
    late: dict[int, DeadlineExceeded] = {}
    for units in _groups(jobs, answers).values():
        method = units[0].method
        for k in {u.job for u in units} - set(late):
            if (error := jobs[k].call.overdue(f"before {method} ran")) is not None:
                late[k] = error
        units = [u for u in units if u.job not in late]
        if units:
            _explain(handler, result, jobs, answers, spans, units)
    for job, answer in zip(jobs, answers, strict=True):  # the request's order, not the groups'
        for run in answer.runs:
            run.attributions = {
                m: run.attributions[m] for m in job.explainers if m in run.attributions
            }
    return [late.get(k, answer) for k, answer in enumerate(answers)]


def _groups(jobs: list[ImageJob], answers: list[ImageAnswer]) -> dict[Hashable, list[_Unit]]:
    """Units that can share one call: same method and options (or one unit alone)."""
    groups: dict[Hashable, list[_Unit]] = defaultdict(list)
    for k, (job, answer) in enumerate(zip(jobs, answers, strict=True)):
        for r in range(len(answer.runs)):
            for name, explainer in job.explainers.items():
                key = explainer.same_call() if explainer.batchable else (name, k, r)
                groups[key].append(_Unit(k, r, name, explainer))
    return groups


def _explain(
    handler: ImageHandler,
    result: Inference,
    jobs: list[ImageJob],
    answers: list[ImageAnswer],
    spans: list[tuple[int, int]],
    units: list[_Unit],
) -> None:
    """One call of `units[0].explainer` over every unit's inputs; each unit gets its part."""
    explainer = units[0].explainer
    layer = handler.layer_for(explainer)
    pieces = [slice(*spans[u.job]) for u in units]
    captured = result.activations.get(layer) if layer is not None else None
    activations = {}
    if layer is not None and captured is not None:
        activations[layer] = _rows(captured, pieces)
    sub = Inference(_rows(result.inputs, pieces), _rows(result.probabilities, pieces), activations)
    targets = torch.from_numpy(np.concatenate([answers[u.job].runs[u.run].targets for u in units]))
    started = time.perf_counter()
    attribution = handler.explain(sub, explainer, targets)
    seconds = time.perf_counter() - started
    offset = 0
    for unit, piece in zip(units, pieces, strict=True):
        size = piece.stop - piece.start
        answers[unit.job].runs[unit.run].attributions[unit.method] = attribution.part(
            offset, offset + size
        )
        offset += size
    for k in {u.job for u in units}:
        jobs[k].call.timings.record(explainer.stage, seconds, units[0].method)


def _rows(tensor: torch.Tensor, pieces: list[slice]) -> torch.Tensor:
    """The rows of `tensor` in `pieces`, in order (one piece: a view, not a copy)."""
    return _joined([tensor[p] for p in pieces])


def _joined(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _spans(sizes: list[int]) -> list[tuple[int, int]]:
    """[start, stop) of each job's inputs in the concatenated batch."""
    spans, start = [], 0
    for size in sizes:
        spans.append((start, start + size))
        start += size
    return spans


def _targets(index: int | None, probabilities: np.ndarray) -> np.ndarray:
    """[n] class indices: each input's predicted class (the first, on a tie, as torch's
    argmax), or `index` for all of them."""
    if index is None:
        return np.asarray(probabilities.argmax(axis=1), dtype=np.int64)
    return np.full(len(probabilities), index, dtype=np.int64)
