"""Images: decode -> queue -> one forward pass (+hooks) -> every method and target -> encode.

Example: ``await ImageFlow("cnn", handler).predict(call, [Payload(png_bytes)])``
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from service import render
from service.decoding import Drawn, Forgotten, decode_uploads, draw_overlays
from service.errors import BadInput, SchemaError, UnsupportedMediaType
from service.explain import Attribution, Explainer
from service.explain.base import ModelInput
from service.flows.base import Call, ExplainRequest, Payload, Tensor, run_batch
from service.flows.image_batch import ImageAnswer, ImageJob, answer_batch
from service.handlers.image import TOP_K, ImageHandler
from service.results import ImageResult, MapResult, Target, TargetMaps

# Keys under which an explanation's pictures wait, where they were decoded, for its overlays.
_KEYS = itertools.count()


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
        inputs = await self.decode(call, payloads)
        answer: ImageAnswer = await call.queued(ImageJob(call, inputs))
        return self.top_classes(answer.probabilities, all_classes)

    def top_classes(self, probabilities: np.ndarray, all_classes: bool) -> list[dict[str, float]]:
        """Each input's top 5 classes (TorchServe's answer), or with `all_classes` every one."""
        k = probabilities.shape[1] if all_classes else TOP_K
        return self.handler.top_classes(probabilities, k)

    async def explain(
        self,
        call: Call,
        request: ExplainRequest,
        explainers: dict[str, Explainer],
        top_classes: bool = True,
    ) -> list[ImageResult]:
        """Each input's top classes (none without `top_classes`) and maps, with overlays
        when the request asks for them."""
        wanted = self.target_indices(request.target)
        layers = {n for e in explainers.values() if (n := self.handler.layer_for(e)) is not None}
        model_input = ModelInput(self.handler.size)
        call.check_budget(explainers, model_input, len(request.inputs), len(wanted))
        keep = next(_KEYS) if request.overlay else None
        inputs = await self.decode(call, request.inputs, keep)
        job = ImageJob(call, inputs, explainers, wanted, frozenset(layers))
        answer: ImageAnswer = await call.queued(job)
        results = self.results(answer, explainers, request.all_classes, top_classes)
        if keep is not None:
            await self.draw(call, request, keep, results)
        return results

    async def heatmap(
        self, call: Call, request: ExplainRequest, explainers: dict[str, Explainer]
    ) -> MapResult:
        """The first map of the first input, with its overlay; no top classes (the answer
        is the picture alone)."""
        results = await self.explain(call, request, explainers, top_classes=False)
        return results[0].targets[0].maps[0]

    # -- the stages ---------------------------------------------------------------------------
    async def decode(
        self, call: Call, payloads: list[Payload], keep: int | None = None
    ) -> torch.Tensor:
        """Payloads -> the model's input batch [N, 3, H, W]. Files are decoded where the server
        decodes (service.decoding); with `keep`, their pictures are kept there for `draw`."""
        files = [self._file(i, p) for i, p in enumerate(payloads) if not isinstance(p.data, Tensor)]
        if not files:
            return torch.stack([self._tensor(i, p) for i, p in enumerate(payloads)])
        handler = self.handler
        decoded = torch.from_numpy(
            await call.in_process(
                "decode",
                decode_uploads,
                files,
                handler.max_pixels,
                handler.transform,
                keep,
                key=keep,
            )
        )
        if len(files) == len(payloads):
            return decoded
        rows = iter(decoded)
        return torch.stack(
            [
                self._tensor(i, p) if isinstance(p.data, Tensor) else next(rows)
                for i, p in enumerate(payloads)
            ]
        )

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

    def _file(self, index: int, payload: Payload) -> bytes | str:
        """An input's file bytes, refused before any decoding when it cannot be an image."""
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
        assert not isinstance(payload.data, Tensor)
        return payload.data

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

    def results(
        self,
        answer: ImageAnswer,
        explainers: dict[str, Explainer],
        all_classes: bool,
        top_classes: bool = True,
    ) -> list[ImageResult]:
        """Per input: its top classes (every class with `all_classes`; none without
        `top_classes`), and for each target every method's normalised map with its extras;
        no overlays yet."""
        probabilities = answer.probabilities
        if top_classes:
            predictions = self.top_classes(probabilities, all_classes)
        else:
            predictions = [{} for _ in range(len(probabilities))]
        results = []
        for i, prediction in enumerate(predictions):
            per_target = []
            for run in answer.runs:
                index = int(run.targets[i])  # numpy: no call into torch on the loop
                target = Target(index, self.handler.classes[index], float(probabilities[i, index]))
                maps = [
                    _map(name, attribution, i, explainers[name])
                    for name, attribution in run.attributions.items()
                ]
                per_target.append(TargetMaps(target, maps))
            results.append(ImageResult(prediction, per_target))
        return results

    async def draw(
        self, call: Call, request: ExplainRequest, keep: int, results: list[ImageResult]
    ) -> None:
        """Every map of every uploaded file laid over it, encoded as the request's format, at
        the upload's size or scaled to fit GLIMPSE_MAX_OVERLAY_PIXELS; drawn where the file
        was decoded (`keep`). An input sent as a tensor has no picture and no overlay."""
        uploads: list[bytes | str] = []
        maps: list[tuple[int, np.ndarray, bool]] = []
        places: list[tuple[TargetMaps, int]] = []
        for i, (payload, result) in enumerate(zip(request.inputs, results, strict=True)):
            if isinstance(payload.data, Tensor):
                continue
            for target in result.targets:
                for k, found in enumerate(target.maps):
                    maps.append((len(uploads), found.values, found.signed))
                    places.append((target, k))
            uploads.append(self._file(i, payload))
        if not maps:
            return
        handler, fmt = self.handler, request.overlay_format

        async def draw(sent: list[bytes | str] | None, key: int | None) -> list[Drawn]:
            return await call.in_process(
                "encode",
                draw_overlays,
                keep,
                sent,
                handler.max_pixels,
                handler.transform,
                call.limits.max_overlay_pixels,
                fmt,
                maps,
                key=key,
            )

        try:  # where the pictures were kept: the uploads need not cross the pipe again
            drawn = await draw(None, keep)
        except Forgotten:  # the bounds on what is kept dropped them: decoded again, anywhere
            drawn = await draw(uploads, None)
        for (target, k), overlay in zip(places, drawn, strict=True):
            target.maps[k] = replace(
                target.maps[k],
                overlay=overlay.picture,
                overlay_format=fmt,
                overlay_size=overlay.size,
                overlay_scale=overlay.scale,
            )


def _small_index(name: str) -> int | float:
    """`name` as a class index when it is a few ASCII digits, else infinity ("²" passes
    str.isdigit() and 5000 digits pass it too; int() refuses both)."""
    return int(name) if name.isascii() and name.isdigit() and len(name) < 10 else math.inf


def _map(method: str, attribution: Attribution, index: int, explainer: Explainer) -> MapResult:
    """Input `index`'s map, normalised, with its extras (its overlay comes later)."""
    grid = render.normalise(attribution.maps[index], explainer.signed)
    return MapResult(
        method=method,
        values=np.asarray(grid, dtype=np.float32),
        signed=explainer.signed,
        reduction=explainer.reduction,
        extras=attribution.extra(index),
    )
