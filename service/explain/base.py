"""The base every explanation method subclasses, and the registry they join.

A method is one small class: a name, whether its maps are signed, how it
reduces channels, its parameters with defaults and bounds, and one `attribute`
method. The base owns the shared steps: parameter validation, target choice
and the conversion to an [N, h, w] float array. A method's name is written
once, in its class; HTTP, gRPC and the model metadata read the registry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from service.errors import SchemaError


@dataclass(frozen=True)
class Param:
    """One tunable parameter: its type, default and inclusive bounds."""

    type: type
    default: Any
    low: float | None = None
    high: float | None = None
    help: str = ""
    choices: tuple[str, ...] | None = None
    pattern: str | None = None  # what a free-text value must match in full
    kinds: frozenset[str] | None = None  # the model kinds it applies to (None: every kind)

    def parse(self, method: str, name: str, raw: Any) -> Any:
        if self.pattern is not None:
            if not isinstance(raw, str) or re.fullmatch(self.pattern, raw) is None:
                raise SchemaError(f"{method}.{name} must match {self.pattern}, got {raw!r}")
            return raw
        if self.choices is not None:
            if raw not in self.choices:
                raise SchemaError(
                    f"{method}.{name} must be one of {list(self.choices)}, got {raw!r}"
                )
            return raw
        try:
            value = self.type(raw)
        except (TypeError, ValueError):
            raise SchemaError(
                f"{method}.{name} must be a {self.type.__name__}, got {raw!r}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise SchemaError(
                f"{method}.{name} must be a finite number between {self.low} and {self.high}, "
                f"got {raw!r}"
            )
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            raise SchemaError(
                f"{method}.{name} must be between {self.low} and {self.high}, got {value}"
            )
        return value

    def describe(self) -> dict[str, Any]:
        described = {"type": self.type.__name__, "default": self.default, "help": self.help}
        if self.choices is not None:
            return {**described, "choices": list(self.choices)}
        if self.pattern is not None:
            return {**described, "pattern": self.pattern}
        return {**described, "min": self.low, "max": self.high}


LAYER = Param(
    str,
    "",
    help="module name (see `layers` in GET /models/{name}); default: the model's own",
    pattern=r"[A-Za-z0-9_.]{0,200}",
)


@dataclass(frozen=True)
class ModelInput:
    """What a method's cost depends on besides its options: the model input's (height,
    width) for images, and for tabular rows how many reference rows each row's attribution
    starts from (every path point is evaluated once per reference)."""

    size: tuple[int, int] = (1, 1)
    references: int = 1


# Input elements one forward (+backward) pass inside a method may take: IG's path points,
# SmoothGrad's and GradientShap's noisy copies and Occlusion's perturbed copies are split
# into passes of at most this many (at least one input per pass). About 190 MiB of autograd
# state for the shapes cnn at 48x48 (~2.5 MiB per 100 path points of one image).
PASS_ELEMENTS = 1 << 19


def per_pass(elements: int, wanted: int | None = None) -> int:
    """How many items of `elements` input elements each fit in one pass: `wanted` when
    given, but never more than PASS_ELEMENTS allows; at least 1."""
    fits = max(1, PASS_ELEMENTS // max(1, elements))
    return fits if wanted is None else max(1, min(wanted, fits))


@dataclass
class ImageBatch:
    """What an image method sees: inputs [N, 3, H, W], targets [N], the activations
    [N, C, h, w] of `layer` captured during the prediction's own forward, and, when the
    archive names one and `layer` is its default, the model's `tail` from those activations
    to the logits."""

    model: nn.Module
    layer: nn.Module | None  # the module a layer method reads; None for input-gradient methods
    inputs: torch.Tensor
    targets: torch.Tensor
    activations: torch.Tensor | None = None
    tail: Callable[[torch.Tensor], torch.Tensor] | None = None  # layer output -> logits

    def part(self, start: int, stop: int) -> ImageBatch:
        """Inputs [start, stop) of the batch, with their targets and activations."""
        activations = self.activations[start:stop] if self.activations is not None else None
        return ImageBatch(
            self.model,
            self.layer,
            self.inputs[start:stop],
            self.targets[start:stop],
            activations,
            self.tail,
        )

    def in_parts(self, attribute: Callable[[ImageBatch], Attribution]) -> Attribution:
        """`attribute` over runs of inputs that fit one pass each (PASS_ELEMENTS), joined;
        one call when they all fit."""
        size = per_pass(self.inputs[0].numel())
        if len(self.inputs) <= size:
            return attribute(self)
        parts = [
            attribute(self.part(start, start + size)) for start in range(0, len(self.inputs), size)
        ]
        return Attribution(
            np.concatenate([p.maps for p in parts]), tuple(e for p in parts for e in p.extras)
        )


@dataclass
class TabularBatch:
    """What a tabular method sees: `head(embedded [N, E], continuous [N, C]) -> [N]` (the
    model's output, in log space), each row's embedding outputs and continuous inputs, and
    K reference rows ([K, E] and [K, C], drawn from the training data) that attributions
    start from; a method averages over them, so the base value is the references' mean output."""

    head: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    embedded: torch.Tensor
    continuous: torch.Tensor
    baseline_embedded: torch.Tensor
    baseline_continuous: torch.Tensor


@dataclass(frozen=True)
class Attribution:
    """A method's answer for one batch: maps [N, h, w] (float32) and, per input, the figures
    it reports beside the map (e.g. IG's convergence delta). Nothing is kept on the method."""

    maps: np.ndarray
    extras: tuple[dict[str, float], ...] = ()

    @classmethod
    def of(cls, maps: torch.Tensor, extras: Sequence[dict[str, float]] = ()) -> Attribution:
        return cls(maps.detach().to(torch.float32).cpu().numpy(), tuple(extras))

    def extra(self, index: int) -> dict[str, float]:
        """Input `index`'s extras ({} when the method reports none)."""
        return self.extras[index] if self.extras else {}

    def part(self, start: int, stop: int) -> Attribution:
        """Inputs [start, stop) of the batch."""
        return Attribution(self.maps[start:stop], self.extras[start:stop])


@dataclass(frozen=True)
class TabularAttribution:
    """Attributions to the embedding outputs [N, E] and continuous inputs [N, C], and extras."""

    embedded: torch.Tensor
    continuous: torch.Tensor
    extras: tuple[dict[str, float], ...] = ()

    def extra(self, index: int) -> dict[str, float]:
        return self.extras[index] if self.extras else {}


class Explainer:
    """Base of all methods. Subclasses set the class attributes and implement `attribute`.

    An instance holds validated options only; `attribute` returns everything it computed, so
    one instance can serve any number of batches, in any order.

    Example: ``REGISTRY["gradcam"](steps=...)`` validates its parameters on entry;
    ``REGISTRY["integrated_gradients"]("tabular", steps=100)`` only those that apply to
    tabular models (see `params_for`).
    """

    name: ClassVar[str]
    signed: ClassVar[bool] = True
    reduction: ClassVar[str] = "sum over colour channels"
    reductions: ClassVar[dict[str, str]] = {}  # per kind, where it differs from `reduction`
    kinds: ClassVar[frozenset[str]] = frozenset({"image"})
    needs_activations: ClassVar[bool] = False
    # False for a method that takes no gradient (it reads the forward pass's activations):
    # a batch whose methods all take none runs under torch.inference_mode.
    needs_gradients: ClassVar[bool] = True
    stage: ClassVar[str] = "attribution"  # its label in glimpse_stage_duration_seconds
    # False when a method's answer for one input depends on the others in its call (noise
    # drawn for the whole batch at once): such a method runs request by request.
    batchable: ClassVar[bool] = True
    params: ClassVar[dict[str, Param]] = {}
    summary: ClassVar[str] = ""
    summaries: ClassVar[dict[str, str]] = {}  # per kind, where it differs from `summary`

    def __init__(self, kind: str | None = None, /, **raw: Any) -> None:
        params = self.params_for(kind)
        unknown = sorted(set(raw) - set(params))
        if unknown:
            where = f" for a {kind} model" if kind is not None else ""
            raise SchemaError(
                f"{self.name} has no parameter {unknown[0]!r}{where}; it takes {sorted(params)}"
            )
        self.options = {
            key: param.parse(self.name, key, raw[key]) if key in raw else param.default
            for key, param in params.items()
        }

    def same_call(self) -> tuple[str, tuple[tuple[str, Any], ...]]:
        """Instances with equal keys give the same answers: their inputs can share a call."""
        return self.name, tuple(sorted(self.options.items()))

    def cost(self, model_input: ModelInput) -> int:
        """Model evaluations (forward, or forward and backward) this method needs for one
        input and one target with its options, beyond the prediction's own forward pass;
        SchemaError when its options cannot apply to `model_input`. Default: one."""
        return 1

    def attribute(self, batch: ImageBatch) -> Attribution:
        """[N, h, w] maps for each input's target, with any per-input extras."""
        raise NotImplementedError(f"{self.name} has no image attribution")

    def attribute_tabular(self, batch: TabularBatch) -> TabularAttribution:
        """Attributions to the embedding outputs [N, E] and continuous inputs [N, C]."""
        raise NotImplementedError(f"{self.name} has no tabular attribution")

    @classmethod
    def params_for(cls, kind: str | None) -> dict[str, Param]:
        """The parameters that apply to a model of `kind` (all of them for None)."""
        return {
            key: p
            for key, p in cls.params.items()
            if kind is None or p.kinds is None or kind in p.kinds
        }

    @classmethod
    def describe(cls, kind: str | None = None) -> dict[str, Any]:
        """Name, sign, reduction, summary and parameters, as they apply to a model of `kind`."""
        return {
            "name": cls.name,
            "signed": cls.signed,
            "reduction": cls.reductions.get(kind, cls.reduction) if kind else cls.reduction,
            "summary": cls.summaries.get(kind, cls.summary) if kind else cls.summary,
            "params": {key: p.describe() for key, p in cls.params_for(kind).items()},
        }


def blur(images: torch.Tensor, sigma_fraction: float = 0.1) -> torch.Tensor:
    """A Gaussian blur of [N, C, H, W] images with sigma a fraction of the image size."""
    sigma = max(1.0, sigma_fraction * min(images.shape[-2:]))
    radius = int(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    pad = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    out = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="replicate")
    out = torch.nn.functional.pad(out, (radius - pad,) * 4, mode="replicate")
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    out = torch.nn.functional.conv2d(out, horizontal, groups=channels)
    return torch.nn.functional.conv2d(out, vertical, groups=channels)


REGISTRY: dict[str, type[Explainer]] = {}


def register(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator: add a method to the registry under its `name`."""
    REGISTRY[cls.name] = cls
    return cls


def methods_for(kind: str) -> list[str]:
    return [name for name, cls in REGISTRY.items() if kind in cls.kinds]


def build(kind: str, name: str, raw: dict[str, Any]) -> Explainer:
    """The method `name` for a model of `kind`, with validated parameters; SchemaError otherwise."""
    available = methods_for(kind)
    if name not in available:
        raise SchemaError(
            f"unknown explanation method {name!r} for a {kind} model; choose from {available}"
        )
    return REGISTRY[name](kind, **raw)
