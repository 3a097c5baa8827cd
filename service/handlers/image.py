"""The image classifier handler: bytes in, top classes (and maps) out.

`handle` answers exactly what TorchServe's image classifier answers,
``{"<class>": probability, ...}`` for the top 5. `infer` is the same forward
pass with the last conv block's activations kept (answered by the compiled copy
of `service.lean`, or captured by a hook), and `explain` runs any registered
method on the result.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from service.errors import SchemaError
from service.explain import REGISTRY, Attribution, Explainer, ImageBatch, methods_for
from service.handlers.base import GlimpseHandler
from service.hooks import find_layer, run_capturing
from service.imaging import DEFAULT_MAX_PIXELS, allow_pixels
from service.layers import (
    SCRIPT_MODULE_REASON,
    NoSpatialLayer,
    is_script_module,
    pick_layer,
    spatial_layers,
)
from service.lean import channels_last, compiled_copy, lean_copy
from service.preprocess import ImageTransform

TOP_K = 5
log = logging.getLogger("glimpse")


@dataclass
class Inference:
    """One batch's forward pass: inputs [N, 3, H, W], probabilities [N, K] and the activations
    [N, C, h, w] of each captured layer, by name."""

    inputs: torch.Tensor
    probabilities: torch.Tensor
    activations: dict[str, torch.Tensor] = field(default_factory=dict)


class ImageHandler(GlimpseHandler):
    """Classifies images and explains the answers.

    Metadata: `classes`, `input` (an `ImageTransform`), `explain.layer` (a module name, or
    "auto": the last module with a spatial output) and optionally `explain.tail` (the
    model's function from that layer's output to the logits, which lets Grad-CAM skip a
    second pass through the body).
    """

    kind = "image"
    default_method = "activation"

    def setup(self) -> None:
        meta = self.metadata
        model = self.network
        self.max_pixels = int(self.properties.get("max_image_pixels") or DEFAULT_MAX_PIXELS)
        allow_pixels(self.max_pixels)
        self.transform = ImageTransform.from_metadata(meta["input"])
        self.size = self.transform.size  # (height, width)
        example = torch.zeros(1, 3, *self.size)
        self.layers = {layer.name: layer for layer in spatial_layers(model, example)}
        self.default_layer, self.no_layer_reason = self._default_layer(meta.get("explain", {}))
        with torch.no_grad():
            outputs = int(model(example).shape[1])
        self.classes: list[str] = list(meta.get("classes") or [str(i) for i in range(outputs)])
        if len(self.classes) != outputs:
            raise ValueError(
                f"the archive names {len(self.classes)} classes but the model has {outputs} outputs"
            )
        tail = meta.get("explain", {}).get("tail")
        self.tail = getattr(model, tail) if tail else None
        # Forward passes that hook at most the default layer run through a faster copy, when
        # one checks out: predictions, and the activation map and Grad-CAM on that layer.
        keep = frozenset({self.default_layer} if self.default_layer else ())
        self.lean, reason = lean_copy(model, example, keep)
        self.lean_layers = keep if self.lean is not None else frozenset()
        # And through that copy compiled, when it compiles and checks out: it answers the kept
        # layers' outputs itself, in `compiled_layers`' order, instead of through hooks.
        self.compiled_layers = tuple(sorted(self.lean_layers))
        self.compiled, why = (
            compiled_copy(self.lean, model, example, self.compiled_layers)
            if self.lean is not None
            else (None, reason)
        )
        # Each network's layers by name, for hooks: named_modules() walks the whole model.
        self._named: dict[bool, dict[str, nn.Module]] = {False: dict(model.named_modules())}
        if self.lean is not None:
            self._named[True] = dict(self.lean.named_modules())
        if self.lean is None:
            log.info("%s: forward passes run the model as built: %s", meta.get("name", "?"), reason)
        elif self.compiled is None:
            log.info("%s: the traced copy is not compiled: %s", meta.get("name", "?"), why)

    def _default_layer(self, explain: dict[str, Any]) -> tuple[str | None, str]:
        """The layer maps come from when a request names none, or (None, the reason)."""
        name = explain.get("layer")
        if name not in (None, "auto"):
            find_layer(self.network, name)  # a clear KeyError for an archive naming no layer
            return name, ""
        if is_script_module(self.network):
            return None, SCRIPT_MODULE_REASON
        try:
            return pick_layer(list(self.layers.values())).name, ""
        except NoSpatialLayer as exc:
            return None, str(exc)

    @property
    def network(self) -> nn.Module:
        assert self.model is not None, "initialize the handler first"
        return self.model

    # -- the stages, each usable on its own --------------------------------------------------
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB images of any size -> [N, 3, H, W] normalised float tensor."""
        return self.transform(images)

    def infer(
        self,
        inputs: torch.Tensor,
        capture: bool = True,
        layers: Collection[str] = (),
        inference: bool = False,
    ) -> Inference:
        """One forward pass; hooks keep the output of `layers` (and of the default layer, with
        `capture`) and are removed before it returns, also when the forward fails. With
        `inference`, the pass runs under torch.inference_mode (its tensors then cannot enter
        a later gradient computation: only for answers that need none). The pass runs
        through the lean copy (`service.lean`), compiled where it compiles, when the model has
        one and every layer it captures was kept in it (the default layer), else through the
        model as built."""
        names = set(layers) | ({self.default_layer} if capture and self.default_layer else set())
        lean = self.lean is not None and names <= self.lean_layers
        with torch.inference_mode() if inference else torch.no_grad():
            if lean and self.compiled is not None:
                logits, *outputs = self.compiled(channels_last(inputs))
                kept = zip(self.compiled_layers, outputs, strict=True)
                activations = {name: output for name, output in kept if name in names}
            else:
                logits, activations = self._hooked(inputs, names, lean)
            probabilities = torch.softmax(logits, dim=1)
        return Inference(inputs, probabilities, activations)

    def _hooked(
        self, inputs: torch.Tensor, names: set[str], lean: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The logits of the lean copy (or of the model as built), and the outputs of the
        layers in `names`, kept by hooks that are removed before it returns."""
        network = self.lean if lean and self.lean is not None else self.network
        layers = {name: self.module(name, lean=lean) for name in names}
        logits, seen = run_capturing(network, layers, channels_last(inputs) if lean else inputs)
        return logits, {name: output for name, output in seen.items() if output is not None}

    def module(self, name: str, lean: bool = False) -> nn.Module:
        """The layer called `name` of the model as built (or, with `lean`, of the lean copy)."""
        found = self._named[lean and self.lean is not None].get(name)
        if found is None:  # find_layer's KeyError names the layers there are
            return find_layer(self.lean if lean and self.lean is not None else self.network, name)
        return found

    def layer_for(self, explainer: Explainer) -> str | None:
        """The layer `explainer` reads: its `layer` option, else the default. SchemaError when
        the option names no choosable layer, or when the method needs one and there is none."""
        requested = explainer.options.get("layer") or None
        if not explainer.needs_activations:
            return None
        if self.default_layer is None:  # no layer can be hooked, named or not
            working = [m for m in methods_for(self.kind) if not REGISTRY[m].needs_activations]
            raise SchemaError(
                f"{explainer.name} needs a layer's activations and this model has none that can "
                f"be hooked ({self.no_layer_reason}); methods that work here: {working}"
            )
        if requested is not None and requested not in self.layers:
            raise SchemaError(
                f"{explainer.name}.layer {requested!r} is not a layer of this model with a "
                f"spatial output; choose from {list(self.layers)}"
            )
        return requested or self.default_layer

    def top_classes(self, probabilities: np.ndarray, k: int = TOP_K) -> list[dict[str, float]]:
        """Each row's `k` most probable classes, most probable first (on a tie, the lower
        index first), from numpy: this runs on the event loop, where a torch call would let
        go of the GIL and wait for it behind the worker."""
        k = min(k, probabilities.shape[1])
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        # Python lists first: indexing arrays element by element, or take_along_axis on rows
        # this small, costs more than the sort.
        return [
            {self.classes[i]: row[i] for i in ranked}
            for row, ranked in zip(probabilities.tolist(), order.tolist(), strict=True)
        ]

    def explain(
        self, result: Inference, explainer: Explainer, targets: torch.Tensor
    ) -> Attribution:
        """[N, h, w] maps of `explainer` for each input's target, with per-input extras."""
        name = self.layer_for(explainer)
        batch = ImageBatch(
            self.network,
            self.module(name) if name else None,
            result.inputs,
            targets,
            result.activations.get(name) if name else None,
            self.tail if name is not None and name == self.default_layer else None,
        )
        return explainer.attribute(batch)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "classes": self.classes,
            "input": {"type": "image", **self.transform.to_metadata()},
            "layers": [
                {"name": layer.name, "shape": list(layer.shape), "type": layer.type}
                for layer in self.layers.values()
            ],
            "default_layer": self.default_layer,
        }
