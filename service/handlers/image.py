"""The image classifier handler: bytes in, top classes (and maps) out.

`handle` answers exactly what TorchServe's image classifier answers,
``{"<class>": probability, ...}`` for the top 5. `infer` is the same forward
pass with the last conv block's activations captured by a hook, and
`explain` runs any registered method on the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from service.explain import Explainer, ImageBatch
from service.handlers.base import GlimpseHandler, request_payload
from service.hooks import capture_output, find_layer
from service.imaging import DEFAULT_MAX_PIXELS, decode_image

TOP_K = 5


@dataclass
class Inference:
    """One batch's forward pass: probabilities [N, K] and activations [N, C, h, w] (or None)."""

    inputs: torch.Tensor
    probabilities: torch.Tensor
    activations: torch.Tensor | None


class ImageHandler(GlimpseHandler):
    """Classifies images and explains the answers. Metadata: classes, input size, mean/std."""

    kind = "image"
    default_method = "activation"
    max_pixels = DEFAULT_MAX_PIXELS

    def setup(self) -> None:
        meta = self.metadata
        self.classes: list[str] = list(meta["classes"])
        self.size = tuple(meta["input"]["size"])  # (height, width)
        self.mean = torch.tensor(meta["input"]["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(meta["input"]["std"]).view(1, 3, 1, 1)
        assert self.model is not None
        self.layer = find_layer(self.model, meta["explain"]["layer"])
        tail = meta["explain"].get("tail")
        self.tail = getattr(self.model, tail) if tail else None

    # -- TorchServe's entry point ------------------------------------------------------------
    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, float]]:
        images = [self.decode(request_payload(item)) for item in data]
        result = self.infer(self.preprocess(images), capture=False)
        return self.top_classes(result.probabilities)

    # -- the stages, each usable on its own --------------------------------------------------
    def decode(self, payload: Any) -> Image.Image:
        if isinstance(payload, str):
            payload = payload.encode("latin-1")
        return decode_image(payload or b"", self.max_pixels)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB images of any size -> [N, 3, H, W] normalised float tensor."""
        height, width = self.size
        arrays = [
            np.asarray(im.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
            for im in images
        ]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        return (batch - self.mean) / self.std

    def infer(self, inputs: torch.Tensor, capture: bool = True) -> Inference:
        """One forward pass; with `capture`, the last conv block's output is kept by a hook."""
        assert self.model is not None
        with torch.no_grad():
            if not capture:
                return Inference(inputs, torch.softmax(self.model(inputs), dim=1), None)
            with capture_output(self.layer) as seen:
                logits = self.model(inputs)
        return Inference(inputs, torch.softmax(logits, dim=1), seen.output)

    def top_classes(self, probabilities: torch.Tensor, k: int = TOP_K) -> list[dict[str, float]]:
        k = min(k, probabilities.shape[1])
        values, indices = probabilities.topk(k, dim=1)
        return [
            {self.classes[int(i)]: float(v) for v, i in zip(row_v, row_i, strict=True)}
            for row_v, row_i in zip(values, indices, strict=True)
        ]

    def explain(self, result: Inference, explainer: Explainer, targets: torch.Tensor) -> np.ndarray:
        """[N, h, w] map of `explainer` for each input's target."""
        assert self.model is not None
        batch = ImageBatch(
            self.model, self.layer, result.inputs, targets, result.activations, self.tail
        )
        return explainer.explain(batch)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "classes": self.classes,
            "input": {
                "type": "image",
                "size": list(self.size),
                "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist(),
            },
        }
