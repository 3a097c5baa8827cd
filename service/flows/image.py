"""Images: decode -> queue -> one forward pass (+hooks) -> every method and target -> encode.

Example: ``await ImageFlow("cnn", handler).predict(call, [Payload(png_bytes)])``
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from service import render
from service.errors import BadInput, SchemaError, UnsupportedMediaType
from service.explain import Attribution, Explainer
from service.flows.base import Call, ExplainRequest, Payload
from service.handlers.image import ImageHandler
from service.results import ImageResult, MapResult, Target, TargetMaps


@dataclass
class _TargetRun:
    """Every method's attribution for one choice of target ([N] class indices)."""

    targets: torch.Tensor
    attributions: dict[str, Attribution]


class ImageFlow:
    """The flow of an image classifier."""

    def __init__(self, name: str, handler: ImageHandler) -> None:
        self.name = name
        self.handler = handler

    async def predict(self, call: Call, payloads: list[Payload]) -> list[dict[str, float]]:
        inputs, _ = await call.in_thread("decode", lambda: self.decode(payloads))

        def job() -> torch.Tensor:
            with call.timings.stage("inference"):
                return self.handler.infer(inputs, capture=False).probabilities

        probabilities = await call.queued(job, len(payloads))
        return self.handler.top_classes(probabilities)

    async def explain(
        self, call: Call, request: ExplainRequest, explainers: dict[str, Explainer]
    ) -> list[ImageResult]:
        wanted = self.target_indices(request.target)
        layers = {n for e in explainers.values() if (n := self.handler.layer_for(e)) is not None}
        inputs, images = await call.in_thread("decode", lambda: self.decode(request.inputs))

        def job() -> tuple[torch.Tensor, list[_TargetRun]]:
            with call.timings.stage("inference"):
                result = self.handler.infer(inputs, capture=False, layers=layers)
            runs = []
            for index in wanted:
                run = _TargetRun(_target_tensor(index, result.probabilities), {})
                for name, explainer in explainers.items():
                    with call.timings.stage(explainer.stage, method=name):
                        run.attributions[name] = self.handler.explain(
                            result, explainer, run.targets
                        )
                runs.append(run)
            return result.probabilities, runs

        probabilities, runs = await call.queued(job, len(request.inputs))
        return await call.in_thread(
            "encode",
            lambda: self.encode(images, probabilities, runs, explainers, request.overlay),
        )

    async def heatmap(
        self, call: Call, request: ExplainRequest, explainers: dict[str, Explainer]
    ) -> bytes:
        results = await self.explain(call, request, explainers)
        overlay = results[0].targets[0].maps[0].overlay
        assert overlay is not None, "heatmaps are explained with overlay=True"
        return overlay

    # -- the stages ---------------------------------------------------------------------------
    def decode(self, payloads: list[Payload]) -> tuple[torch.Tensor, list[Image.Image]]:
        """Payloads -> the model's input batch [N, 3, H, W] and the decoded RGB images."""
        images = [self._image(i, payload) for i, payload in enumerate(payloads)]
        return self.handler.preprocess(images), images

    def _image(self, index: int, payload: Payload) -> Image.Image:
        if isinstance(payload.data, Mapping):
            raise BadInput(
                f"input {index}: {self.name} is an image model; send the image file's bytes "
                "(gRPC: set Input.image)"
            )
        content_type = payload.content_type
        if content_type == "application/json" or content_type.startswith("text/"):
            raise UnsupportedMediaType(
                f"send the image file's bytes (e.g. image/png), not {content_type}"
            )
        return self.handler.decode(payload.data)

    def target_indices(self, target: str | None) -> list[int | None]:
        """Class indices named by `target` ("circle", "2" or "circle,square"); [None] when
        empty, meaning each input's predicted class. SchemaError for anything else."""
        if target is None or not target.strip():
            return [None]
        classes = self.handler.classes
        indices: list[int | None] = []
        for name in (part.strip() for part in target.split(",")):
            if name in classes:
                indices.append(classes.index(name))
            elif name.isdigit() and int(name) < len(classes):
                indices.append(int(name))
            else:
                raise SchemaError(
                    f"target {name!r} is neither a class of {self.name} "
                    f"({classes}) nor an index below {len(classes)}"
                )
        if len(set(indices)) != len(indices):
            raise SchemaError(f"target names a class twice: {target!r}")
        return indices

    def encode(
        self,
        images: list[Image.Image],
        probabilities: torch.Tensor,
        runs: list[_TargetRun],
        explainers: dict[str, Explainer],
        overlay: bool,
    ) -> list[ImageResult]:
        """Per image: its top classes, and for each target every method's normalised map."""
        predictions = self.handler.top_classes(probabilities)
        results = []
        for i, image in enumerate(images):
            per_target = []
            for run in runs:
                index = int(run.targets[i])
                target = Target(index, self.handler.classes[index], float(probabilities[i, index]))
                box = self.handler.overlay_box(image) if overlay else None
                maps = [
                    _map(image, name, attribution, i, explainers[name], box)
                    for name, attribution in run.attributions.items()
                ]
                per_target.append(TargetMaps(target, maps))
            results.append(ImageResult(predictions[i], per_target))
        return results


def _map(
    image: Image.Image,
    method: str,
    attribution: Attribution,
    index: int,
    explainer: Explainer,
    box: tuple[float, float, float, float] | None,
) -> MapResult:
    """Input `index`'s map, normalised, with its extras and, given the part of the image the
    model saw (`box`), an overlay of the image's own size."""
    grid = render.normalise(attribution.maps[index], explainer.signed)
    picture = None
    if box is not None:
        picture = render.png_bytes(render.overlay(image, grid, explainer.signed, box=box))
    return MapResult(
        method=method,
        values=np.asarray(grid, dtype=np.float32),
        signed=explainer.signed,
        reduction=explainer.reduction,
        extras=attribution.extra(index),
        overlay=picture,
    )


def _target_tensor(index: int | None, probabilities: torch.Tensor) -> torch.Tensor:
    """[N] class indices: each input's predicted class, or `index` for all of them."""
    if index is None:
        return probabilities.argmax(dim=1)
    return torch.full((probabilities.shape[0],), index, dtype=torch.long)
