"""The one pipeline behind every door: find the model, validate, then run its flow.

Doors decode their wire format into a `PredictRequest` or `ExplainRequest` of
`Payload`s and encode the typed results back; the model's flow (picked once, when
the archive was loaded) does decode -> queue -> inference (+hooks) -> explain -> encode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from service.errors import BadInput, SchemaError
from service.explain import REGISTRY, Explainer, build
from service.flows import Call, ExplainRequest, Payload, PredictRequest, Tensor
from service.handlers.base import GlimpseHandler
from service.lifecycle import Health, Lifecycle
from service.limits import DEFAULT_LIMITS, Gate, Limits
from service.results import Explanation, MapResult, Prediction
from service.runtime import Model, Runtime
from service.timing import Timings

__all__ = ["ExplainRequest", "Payload", "Pipeline", "PredictRequest", "Tensor", "split_params"]


class Pipeline:
    """Runs requests against the runtime, each within `limits` (inputs per request, the
    explanation budget, overlay size, time limit; the doors read the concurrency limit).

    Example: ``await pipeline.predict(PredictRequest("cnn", [Payload(png_bytes)]))``
    """

    def __init__(
        self,
        runtime: Runtime,
        limits: Limits = DEFAULT_LIMITS,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.runtime = runtime
        self.metrics = runtime.metrics
        self.limits = limits
        self.lifecycle = lifecycle or Lifecycle()  # drain state and admission, for both doors
        self._gates: dict[str, Gate] = {}

    def gate(self, door: str) -> Gate:
        """The concurrency gate of `door` ("HTTP", "gRPC"): one per door, however many apps
        or servers are made for it."""
        if door not in self._gates:
            self._gates[door] = Gate(self.limits.max_concurrency, door)
        return self._gates[door]

    def health(self) -> Health:
        """Health now: draining, and each model whose worker has ended or is stuck."""
        workers = {name: model.worker for name, model in self.runtime.models.items()}
        return self.lifecycle.health(workers)

    async def predict(self, request: PredictRequest) -> Sequence[Prediction]:
        """What the handler answers inside TorchServe, one answer per payload."""
        with self.runtime.get(request.model).in_use() as model:
            self._check_inputs(request.inputs)
            call = self._call(model, request.timeout)
            work = model.flow.predict(call, request.inputs, request.all_classes)
            return await call.within(work)

    async def explain(
        self, request: ExplainRequest
    ) -> tuple[Sequence[Explanation], dict[str, float]]:
        """One result per input (image or row), and the stage timings in ms."""
        with self.runtime.get(request.model).in_use() as model:
            self._check_inputs(request.inputs)
            explainers = self.explainers(model, request)  # validated before anything is queued
            call = self._call(model, request.timeout)
            results = await call.within(model.flow.explain(call, request, explainers))
            return results, call.timings.ms

    async def heatmap(self, request: ExplainRequest) -> bytes:
        """The first requested method's overlay for the first input, as encoded bytes."""
        overlay = (await self.overlay(request)).overlay
        assert overlay is not None, "heatmaps are explained with overlay=True"
        return overlay

    async def overlay(self, request: ExplainRequest) -> MapResult:
        """The first requested method's map for the first input, with its overlay (scaled
        down to fit the overlay pixel limit when the image is larger)."""
        with self.runtime.get(request.model).in_use() as model:
            self._check_inputs(request.inputs)
            first = replace(request, inputs=request.inputs[:1], methods=request.methods[:1])
            first = replace(first, overlay=True)
            explainers = self.explainers(model, first)
            call = self._call(model, request.timeout)
            return await call.within(model.flow.heatmap(call, first, explainers))

    def explainers(self, model: Model, request: ExplainRequest) -> dict[str, Explainer]:
        """Validated method instances, with "param" / "method.param" values routed to them."""
        return explainers_for(model.handler, request)

    def _call(self, model: Model, timeout: float | None = None) -> Call:
        """A request's passage, with the pipeline's limits and a deadline from now: the time
        limit, or the client's `timeout` when that is shorter."""
        timings = Timings(model.name, self.metrics)
        deadline = self.limits.deadline(timeout)
        return Call(
            model.name,
            model.worker,
            self.metrics,
            timings,
            self.limits,
            deadline,
            self.runtime.decoders,
            self.runtime.alone,
        )

    def _check_inputs(self, inputs: list[Payload]) -> None:
        _require_inputs(inputs)
        self.limits.check_inputs(len(inputs))


def explainers_for(handler: GlimpseHandler, request: ExplainRequest) -> dict[str, Explainer]:
    """The request's methods (the handler's default when it names none), built and validated,
    with "param" / "method.param" values routed to them; SchemaError otherwise."""
    names = request.methods or [handler.default_method]
    if len(set(names)) != len(names):
        raise SchemaError(f"methods lists a method twice: {names}")
    per_method = split_params(names, request.params)
    return {name: build(handler.kind, name, per_method[name]) for name in names}


def split_params(methods: list[str], raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Route "param" to every requested method that takes it, "method.param" to that method."""
    per_method: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for key, value in raw.items():
        if "." in key:
            method, name = key.split(".", 1)
            if method not in per_method:
                raise SchemaError(
                    f"parameter {key!r} is for {method!r}, which is not among "
                    f"the requested methods {methods}"
                )
            per_method[method][name] = value
            continue
        owners = [m for m in methods if m in REGISTRY and key in REGISTRY[m].params]
        if not owners:
            raise SchemaError(f"unknown parameter {key!r}: none of {methods} takes it")
        for method in owners:
            per_method[method][key] = value
    return per_method


def _require_inputs(inputs: list[Payload]) -> None:
    if not inputs:
        raise BadInput("the request has no inputs")
