"""Images: decode -> queue -> one forward pass (+hooks) -> every method and target -> encode.

Example: ``await ImageFlow("cnn", handler).predict(call, [Payload(png_bytes)])``
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from service import render
from service.encode import encode
from service.errors import BadInput, SchemaError, UnsupportedMediaType
from service.explain import Attribution, Explainer
from service.explain.base import ModelInput
from service.flows.base import Call, ExplainRequest, Payload, Tensor, run_batch
from service.flows.image_batch import ImageAnswer, ImageJob, answer_batch
from service.handlers.image import TOP_K, ImageHandler
from service.results import ImageResult, MapResult, Target, TargetMaps


class ImageFlow:
    """The flow of an image classifier."""

    def __init__(self, name: str, handler: ImageHandler) -> None:
        self.name = name
        self.handler = handler

    def process(self, batch: Sequence[tuple[ImageJob, float]]) -> list[Any]:
        return run_batch(batch, lambda jobs: answer_batch(self.handler, self.name, jobs))

    async def predict(
        self, call: Call, payloads: list[Payload], all_classes: bool = False
    ) -> list[dict[str, float]]:
        inputs, _ = await call.in_thread("decode", lambda: self.decode(payloads))
        answer: ImageAnswer = await call.queued(ImageJob(call, inputs))
        return self.top_classes(answer.probabilities, all_classes)

    def top_classes(self, probabilities: torch.Tensor, all_classes: bool) -> list[dict[str, float]]:
        """Each input's top 5 classes (TorchServe's answer), or with `all_classes` every one."""
        k = probabilities.shape[1] if all_classes else TOP_K
        return self.handler.top_classes(probabilities, k)

    async def explain(
        self, call: Call, request: ExplainRequest, explainers: dict[str, Explainer]
    ) -> list[ImageResult]:
        wanted = self.target_indices(request.target)
        layers = {n for e in explainers.values() if (n := self.handler.layer_for(e)) is not None}
        model_input = ModelInput(self.handler.size)
        call.check_budget(explainers, model_input, len(request.inputs), len(wanted))
        inputs, images = await call.in_thread("decode", lambda: self.decode(request.inputs))
        job = ImageJob(call, inputs, explainers, wanted, frozenset(layers))
        answer: ImageAnswer = await call.queued(job)
        overlay = request.overlay_format if request.overlay else None
        return await call.in_thread(
            "encode",
            lambda: self.encode(
                images,
                answer,
                explainers,
                overlay,
                call.limits.max_overlay_pixels,
                request.all_classes,
            ),
        )

    async def heatmap(
        self, call: Call, request: ExplainRequest, explainers: dict[str, Explainer]
    ) -> MapResult:
        results = await self.explain(call, request, explainers)
        return results[0].targets[0].maps[0]

    # -- the stages ---------------------------------------------------------------------------
    def decode(self, payloads: list[Payload]) -> tuple[torch.Tensor, list[Image.Image | None]]:
        """Payloads -> the model's input batch [N, 3, H, W] and the decoded RGB images (None
        for an input sent as an already preprocessed `Tensor`: it has no picture)."""
        images = [
            None if isinstance(p.data, Tensor) else self._image(i, p)
            for i, p in enumerate(payloads)
        ]
        decoded = [image for image in images if image is not None]
        if len(decoded) == len(images):  # files only: the batch exactly as TorchServe's
            return self.handler.preprocess(decoded), images
        preprocessed: Iterator[torch.Tensor] = iter(
            self.handler.preprocess(decoded) if decoded else []
        )
        rows = [
            next(preprocessed) if image is not None else self._tensor(i, payload)
            for i, (payload, image) in enumerate(zip(payloads, images, strict=True))
        ]
        return torch.stack(rows), images

    def _tensor(self, index: int, payload: Payload) -> torch.Tensor:
        """A preprocessed input, checked against the model's input shape [3, H, W]."""
        assert isinstance(payload.data, Tensor)
        values = payload.data.values
        expected = (3, *self.handler.size)
        if tuple(values.shape) != expected:
            raise SchemaError(
                f"input {index}: {self.name} takes preprocessed images of shape "
                f"{list(expected)} (channels, height, width), not {list(values.shape)}; or send "
                "the encoded image file instead"
            )
        if not np.isfinite(values).all():
            raise BadInput(f"input {index}: the tensor holds NaN or infinite values")
        return torch.tensor(values, dtype=torch.float32)  # a copy: the wire buffer is read-only

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
            elif _small_index(name) < len(classes):
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
        images: list[Image.Image | None],
        answer: ImageAnswer,
        explainers: dict[str, Explainer],
        overlay: str | None,
        max_overlay_pixels: int | None = None,
        all_classes: bool = False,
    ) -> list[ImageResult]:
        """Per image: its top classes (every class with `all_classes`), and for each target
        every method's normalised map, with its overlay encoded as `overlay` (a format of
        service.encode; None: no overlay), at the image's size or scaled down to
        `max_overlay_pixels` (None: no limit). An input sent as a tensor has no overlay."""
        probabilities = answer.probabilities
        predictions = self.top_classes(probabilities, all_classes)
        results = []
        for i, image in enumerate(images):
            base = None
            if overlay is not None and image is not None:
                base = self._overlay_base(image, max_overlay_pixels)
            per_target = []
            for run in answer.runs:
                index = int(run.targets[i])
                target = Target(index, self.handler.classes[index], float(probabilities[i, index]))
                maps = [
                    _map(base, name, attribution, i, explainers[name], overlay)
                    for name, attribution in run.attributions.items()
                ]
                per_target.append(TargetMaps(target, maps))
            results.append(ImageResult(predictions[i], per_target))
        return results

    def _overlay_base(self, image: Image.Image, max_pixels: int | None) -> _OverlayBase:
        """The picture overlays are drawn on: the image, or a copy scaled to fit `max_pixels`,
        with the part the model saw in its pixels."""
        box = self.handler.overlay_box(image)
        picture, scale = render.fit(image, max_pixels) if max_pixels is not None else (image, 1.0)
        if picture is not image:
            sx, sy = picture.width / image.width, picture.height / image.height
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        return _OverlayBase(picture, box, scale)


@dataclass(frozen=True)
class _OverlayBase:
    """What one image's overlays are drawn on: the picture, the part of it the model saw
    (left, top, right, bottom) and the picture's scale relative to the upload."""

    picture: Image.Image
    box: tuple[float, float, float, float]
    scale: float


def _small_index(name: str) -> int | float:
    """`name` as a class index when it is a few ASCII digits, else infinity ("²" passes
    str.isdigit() and 5000 digits pass it too; int() refuses both)."""
    return int(name) if name.isascii() and name.isdigit() and len(name) < 10 else math.inf


def _map(
    base: _OverlayBase | None,
    method: str,
    attribution: Attribution,
    index: int,
    explainer: Explainer,
    overlay: str | None,
) -> MapResult:
    """Input `index`'s map, normalised, with its extras and, given what to draw it on
    (`base`), an overlay of the image's own size (or the size it was scaled to)."""
    grid = render.normalise(attribution.maps[index], explainer.signed)
    picture, size, scale = None, None, 1.0
    if base is not None and overlay is not None:
        drawn = render.overlay(base.picture, grid, explainer.signed, box=base.box)
        picture, size, scale = encode(drawn, overlay), drawn.size, base.scale
    return MapResult(
        method=method,
        values=np.asarray(grid, dtype=np.float32),
        signed=explainer.signed,
        reduction=explainer.reduction,
        extras=attribution.extra(index),
        overlay=picture,
        overlay_format=overlay or "png",
        overlay_size=size,
        overlay_scale=scale,
    )
