"""The one pipeline behind both doors: decode -> queue -> inference (+hooks) -> explain -> encode.

HTTP and gRPC decode their wire format into a `PredictRequest` or
`ExplainRequest` and encode the result back; everything between lives here.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from service import render
from service.errors import BadInput, SchemaError
from service.explain import REGISTRY, Explainer, build
from service.runtime import Model, Runtime
from service.timing import Timings


@dataclass
class PredictRequest:
    """Inputs are image bytes (image models) or row dicts (tabular models)."""

    model: str
    inputs: list[Any]


@dataclass
class ExplainRequest:
    model: str
    inputs: list[Any]
    methods: list[str] = field(default_factory=list)  # empty: the handler's default_method
    target: str | None = None  # class names or indices, comma-separated; None: the predicted one
    params: dict[str, Any] = field(default_factory=dict)  # "param" or "method.param" -> value
    overlay: bool = True  # include overlay PNGs


@dataclass
class ImageExplanation:
    """One image's result; `maps` holds each method's [h, w] map (normalised) and its overlay
    for `target`. When several targets were asked for, `by_target` holds (target, maps) for
    each of them, the first being `target` and `maps`."""

    prediction: dict[str, float]
    target: dict[str, Any]
    maps: dict[str, dict[str, Any]]
    image: Any = None
    by_target: list[tuple[dict[str, Any], dict[str, dict[str, Any]]]] = field(default_factory=list)


@dataclass
class _TargetRun:
    """Every method's maps [N, h, w] (and per-input extras) for one choice of target."""

    targets: torch.Tensor
    maps: dict[str, np.ndarray]
    extras: dict[str, list[dict[str, Any]]]


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
        explainers = self.explainers(model, request)  # validated before anything is queued
        if model.handler.kind == "tabular":
            return await self._explain_rows(model, request.inputs, explainers, timings), timings.ms
        with timings.stage("decode"):
            inputs, images = await asyncio.to_thread(self._decode_images, model, request.inputs)
        capture = any(e.needs_activations for e in explainers.values())
        wanted = self.target_indices(model, request.target)

        def job() -> tuple[torch.Tensor, list[_TargetRun]]:
            with timings.stage("inference"):
                result = model.handler.infer(inputs, capture=capture)
            runs = []
            for index in wanted:
                targets = _target_tensor(index, result.probabilities)
                run = _TargetRun(targets, {}, {})
                for name, explainer in explainers.items():
                    with timings.stage(explainer.stage, method=name):
                        run.maps[name] = model.handler.explain(result, explainer, targets)
                    run.extras[name] = [explainer.extras(i) for i in range(len(targets))]
                runs.append(run)
            return result.probabilities, runs

        probabilities, runs = await self._run(model, timings, job, len(request.inputs))
        with timings.stage("encode"):
            results = await asyncio.to_thread(
                self._encode_images, model, images, probabilities, runs, explainers, request.overlay
            )
        return results, timings.ms

    async def heatmap(self, request: ExplainRequest) -> bytes:
        """The first requested method's overlay for the first image, as PNG bytes."""
        first_only = replace(
            request, inputs=request.inputs[:1], methods=request.methods[:1], overlay=True
        )
        results, _ = await self.explain(first_only)
        overlay: bytes = next(iter(results[0].maps.values()))["overlay_png"]
        return overlay

    def explainers(self, model: Model, request: ExplainRequest) -> dict[str, Explainer]:
        """Validated method instances, with "param" / "method.param" values routed to them."""
        names = request.methods or [model.handler.default_method]
        if len(set(names)) != len(names):
            raise SchemaError(f"methods lists a method twice: {names}")
        per_method = split_params(names, request.params)
        return {name: build(model.handler.kind, name, per_method[name]) for name in names}

    def target_indices(self, model: Model, target: str | None) -> list[int | None]:
        """Class indices named by `target` ("circle", "2" or "circle,square"); [None] when
        empty, meaning each input's predicted class. SchemaError for anything else."""
        if target is None or not target.strip():
            return [None]
        classes: list[str] = model.handler.classes
        indices: list[int | None] = []
        for name in (part.strip() for part in target.split(",")):
            if name in classes:
                indices.append(classes.index(name))
            elif name.isdigit() and int(name) < len(classes):
                indices.append(int(name))
            else:
                raise SchemaError(
                    f"target {name!r} is neither a class of {model.name} "
                    f"({classes}) nor an index below {len(classes)}"
                )
        if len(set(indices)) != len(indices):
            raise SchemaError(f"target names a class twice: {target!r}")
        return indices

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
        self,
        model: Model,
        images: list[Any],
        probabilities: torch.Tensor,
        runs: list[_TargetRun],
        explainers: dict[str, Explainer],
        overlay: bool,
    ) -> list[ImageExplanation]:
        predictions = model.handler.top_classes(probabilities)
        results = []
        for i, image in enumerate(images):
            per_target = []
            for run in runs:
                index = int(run.targets[i])
                target = {
                    "index": index,
                    "label": model.handler.classes[index],
                    "probability": float(probabilities[i, index]),
                }
                encoded = {
                    name: self._encode_map(
                        image, grids[i], explainers[name], run.extras[name][i], overlay
                    )
                    for name, grids in run.maps.items()
                }
                per_target.append((target, encoded))
            target, encoded = per_target[0]
            by_target = per_target if len(per_target) > 1 else []
            results.append(ImageExplanation(predictions[i], target, encoded, image, by_target))
        return results

    def _encode_map(
        self,
        image: Any,
        grid: np.ndarray,
        explainer: Explainer,
        extras: dict[str, Any],
        overlay: bool,
    ) -> dict[str, Any]:
        """One normalised map as numbers, with its extras and optionally its overlay PNG."""
        signed = explainer.signed
        grid = render.normalise(grid, signed)
        entry: dict[str, Any] = {
            "height": grid.shape[0],
            "width": grid.shape[1],
            "values": np.round(grid, 6).tolist(),
            "signed": signed,
            "reduction": explainer.reduction,
            **extras,
        }
        if overlay:
            entry["overlay_png"] = render.png_bytes(render.overlay(image, grid, signed))
        return entry

    async def _explain_rows(
        self, model: Model, rows: list[Any], explainers: dict[str, Explainer], timings: Timings
    ) -> list[Any]:
        def job() -> list[dict[str, Any]]:
            per_name = {}
            for name, explainer in explainers.items():
                with timings.stage(explainer.stage, method=name):
                    per_name[name] = model.handler.explain_rows(rows, explainer)
            return [
                _merge_rows(dict(zip(per_name, row, strict=True)))
                for row in zip(*per_name.values(), strict=True)
            ]

        return list(await self._run(model, timings, job, len(rows)))


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


def _merge_rows(by_method: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row's results from several methods -> attributions keyed by method."""
    first = next(iter(by_method.values()))
    merged: dict[str, Any] = {
        "prediction": first["prediction"],
        "base_value": first["base_value"],
        "attributions": {},
        "convergence_delta": {},
    }
    for name, row in by_method.items():
        merged["attributions"][name] = row["attributions"]
        if row.get("convergence_delta") is not None:
            merged["convergence_delta"][name] = row["convergence_delta"]
    return merged


def _target_tensor(index: int | None, probabilities: torch.Tensor) -> torch.Tensor:
    """[N] class indices: each input's predicted class, or `index` for all of them."""
    if index is None:
        return probabilities.argmax(dim=1)
    return torch.full((probabilities.shape[0],), index, dtype=torch.long)


def as_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _require_inputs(inputs: list[Any]) -> None:
    if not inputs:
        raise BadInput("the request has no inputs")
