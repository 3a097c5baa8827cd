"""The one pipeline behind both doors: decode -> queue -> inference (+hooks) -> explain -> encode.

HTTP and gRPC decode their wire format into a `PredictRequest` or
`ExplainRequest` and encode the result back; everything between lives here.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from service import render
from service.errors import BadInput, SchemaError
from service.explain import REGISTRY, Explainer, build
from service.runtime import Model, Runtime
from service.timing import Timings

DEFAULT_METHOD = "activation"


@dataclass
class PredictRequest:
    """Inputs are image bytes (image models) or row dicts (tabular models)."""

    model: str
    inputs: list[Any]


@dataclass
class ExplainRequest:
    model: str
    inputs: list[Any]
    methods: list[str] = field(default_factory=list)  # empty: the model's default method
    target: str | None = None  # index or class name; None: the predicted class
    params: dict[str, Any] = field(default_factory=dict)  # "param" or "method.param" -> value
    overlay: bool = True  # include overlay PNGs


@dataclass
class ImageExplanation:
    """One image's result; `maps` holds each method's [h, w] map (normalised) and its overlay."""

    prediction: dict[str, float]
    target: dict[str, Any]
    maps: dict[str, dict[str, Any]]
    image: Any = None


class Pipeline:
    """Runs requests against the runtime.

    Example: ``await pipeline.predict(PredictRequest("cnn", [png_bytes]))``
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.metrics = runtime.metrics

    # -- predictions ------------------------------------------------------------------------
    async def predict(self, request: PredictRequest) -> list[Any]:
        """What the handler answers inside TorchServe, one entry per input."""
        model = self.runtime.get(request.model)
        timings = Timings(model.name, self.metrics)
        _require_inputs(request.inputs)
        if model.handler.kind == "tabular":
            def predict_rows() -> Any:
                with timings.stage("inference"):
                    return model.handler.predict_rows(request.inputs)

            return list(await self._run(model, timings, predict_rows, len(request.inputs)))
        with timings.stage("decode"):
            inputs, _ = await asyncio.to_thread(self._decode_images, model, request.inputs)

        def job() -> Any:
            with timings.stage("inference"):
                return model.handler.infer(inputs, capture=False).probabilities

        probabilities = await self._run(model, timings, job, len(request.inputs))
        return list(model.handler.top_classes(probabilities))

    # -- explanations -----------------------------------------------------------------------
    async def explain(self, request: ExplainRequest) -> tuple[list[Any], dict[str, float]]:
        """Per input: prediction, target and maps (images) or attributions (rows); and timings."""
        model = self.runtime.get(request.model)
        timings = Timings(model.name, self.metrics)
        _require_inputs(request.inputs)
        if model.handler.kind == "tabular":
            return await self._explain_rows(model, request, timings), timings.ms
        explainers = self.explainers(model, request)
        with timings.stage("decode"):
            inputs, images = await asyncio.to_thread(self._decode_images, model, request.inputs)
        capture = any(e.needs_activations for e in explainers.values())

        def job() -> tuple[Any, torch.Tensor, dict[str, np.ndarray]]:
            with timings.stage("inference"):
                result = model.handler.infer(inputs, capture=capture)
            targets = self.targets(model, request.target, result.probabilities)
            maps = {}
            for name, explainer in explainers.items():
                stage = "heatmap" if name == DEFAULT_METHOD else "attribution"
                with timings.stage(stage, method=name):
                    maps[name] = model.handler.explain(result, explainer, targets)
            return result.probabilities, targets, maps

        probabilities, targets, maps = await self._run(model, timings, job, len(request.inputs))
        with timings.stage("encode"):
            results = await asyncio.to_thread(
                self._encode_images, model, images, probabilities, targets, maps, explainers,
                request.overlay)  # fmt: skip
        return results, timings.ms

    async def heatmap(self, request: ExplainRequest) -> bytes:
        """The first requested method's overlay for the first image, as PNG bytes."""
        request.overlay = True
        results, _ = await self.explain(request)
        first: ImageExplanation = results[0]
        overlay: bytes = next(iter(first.maps.values()))["overlay_png"]
        return overlay

    def explainers(self, model: Model, request: ExplainRequest) -> dict[str, Explainer]:
        """Validated method instances, with "param" / "method.param" values routed to them."""
        names = request.methods or [DEFAULT_METHOD]
        if len(set(names)) != len(names):
            raise SchemaError(f"methods lists a method twice: {names}")
        per_method = split_params(names, request.params)
        return {name: build(model.handler.kind, name, per_method[name]) for name in names}

    def targets(self, model: Model, target: str | None,
                probabilities: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The predicted class per input, or the one `target` names (index or class name)."""
        if target is None or target == "":
            return probabilities.argmax(dim=1)
        classes: list[str] = model.handler.classes
        if target in classes:
            index = classes.index(target)
        elif target.lstrip("-").isdigit() and 0 <= int(target) < len(classes):
            index = int(target)
        else:
            raise SchemaError(f"target {target!r} is neither a class of {model.name} "
                              f"({classes}) nor an index below {len(classes)}")  # fmt: skip
        return torch.full((probabilities.shape[0],), index, dtype=torch.long)

    # -- the stages -------------------------------------------------------------------------
    async def _run(self, model: Model, timings: Timings, job: Any, batch_size: int) -> Any:
        """Queue `job` in front of the model; record its wait and its batch size."""

        def queued(waited: float) -> Any:
            timings.record("queue", waited)
            self.metrics.batch_size.labels(model.name).observe(batch_size)
            return job()

        return await model.worker.run(queued)

    def _decode_images(self, model: Model, payloads: list[Any]) -> tuple[torch.Tensor, list[Any]]:
        images = [model.handler.decode(payload) for payload in payloads]
        return model.handler.preprocess(images), images

    def _encode_images(
        self, model: Model, images: list[Any], probabilities: torch.Tensor,
        targets: torch.Tensor, maps: dict[str, np.ndarray],
        explainers: dict[str, Explainer], overlay: bool,
    ) -> list[ImageExplanation]:  # fmt: skip
        predictions = model.handler.top_classes(probabilities)
        results = []
        for i, image in enumerate(images):
            index = int(targets[i])
            encoded = {}
            for name, grids in maps.items():
                signed = explainers[name].signed
                grid = render.normalise(grids[i], signed)
                entry: dict[str, Any] = {
                    "height": grid.shape[0], "width": grid.shape[1],
                    "values": np.round(grid, 6).tolist(), "signed": signed,
                    "reduction": explainers[name].reduction,
                }  # fmt: skip
                entry.update(explainers[name].extras(i))
                if overlay:
                    entry["overlay_png"] = render.png_bytes(render.overlay(image, grid, signed))
                encoded[name] = entry
            target = {"index": index, "label": model.handler.classes[index],
                      "probability": float(probabilities[i, index])}  # fmt: skip
            results.append(ImageExplanation(predictions[i], target, encoded, image))
        return results

    async def _explain_rows(self, model: Model, request: ExplainRequest,
                            timings: Timings) -> list[Any]:  # fmt: skip
        names = request.methods or ["integrated_gradients"]
        per_method = split_params(names, request.params)
        for name in names:
            build(model.handler.kind, name, per_method[name])  # validate before queueing

        def job() -> list[dict[str, Any]]:
            per_name = {}
            for name in names:
                with timings.stage("attribution", method=name):
                    per_name[name] = model.handler.explain_rows(
                        request.inputs, name, per_method[name])  # fmt: skip
            return [_merge_rows(dict(zip(names, row, strict=True)))
                    for row in zip(*per_name.values(), strict=True)]  # fmt: skip

        return list(await self._run(model, timings, job, len(request.inputs)))


def split_params(methods: list[str], raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Route "param" to every requested method that takes it, "method.param" to that method."""
    per_method: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for key, value in raw.items():
        if "." in key:
            method, name = key.split(".", 1)
            if method not in per_method:
                raise SchemaError(f"parameter {key!r} is for {method!r}, which is not among "
                                  f"the requested methods {methods}")  # fmt: skip
            per_method[method][name] = value
            continue
        owners = [m for m in methods if m in REGISTRY and key in REGISTRY[m].params]
        if not owners:
            raise SchemaError(f"unknown parameter {key!r}: none of {methods} takes it")
        for method in owners:
            per_method[method][key] = value
    return per_method


def _merge_rows(by_method: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row's results from several methods -> attributions keyed by method."""
    first = next(iter(by_method.values()))
    merged: dict[str, Any] = {"prediction": first["prediction"], "base_value": first["base_value"],
                              "attributions": {}, "convergence_delta": {}}  # fmt: skip
    for name, row in by_method.items():
        merged["attributions"][name] = row["attributions"]
        if row.get("convergence_delta") is not None:
            merged["convergence_delta"][name] = row["convergence_delta"]
    return merged


def as_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _require_inputs(inputs: list[Any]) -> None:
    if not inputs:
        raise BadInput("the request has no inputs")

