"""What the pipeline answers: small typed values that each door encodes in its own wire shape.

Nothing here knows HTTP or gRPC: base64, `by_target` and proto messages are the
doors' business. Example: ``ImageResult(prediction={"circle": 0.9}, targets=[...])``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class MapResult:
    """One method's normalised [h, w] map for one input and target.

    `values` is in [0, 1] (unsigned) or [-1, 1] (signed); `extras` are the method's
    per-input figures (e.g. IG's convergence_delta), kept apart from the map itself;
    `overlay` is the encoded picture (`overlay_format`) when one was asked for, of
    `overlay_size` (width, height): the image's own, or scaled by `overlay_scale` (< 1) to fit
    the overlay pixel limit (GLIMPSE_MAX_OVERLAY_PIXELS).
    """

    method: str
    values: np.ndarray
    signed: bool
    reduction: str
    extras: dict[str, float] = field(default_factory=dict)
    overlay: bytes | None = None
    overlay_format: str = "png"
    overlay_size: tuple[int, int] | None = None
    overlay_scale: float = 1.0

    @property
    def overlay_scaled(self) -> bool:
        """Whether the overlay is smaller than the uploaded image."""
        return self.overlay_scale < 1.0


@dataclass(frozen=True)
class Target:
    """The class a map explains, and the probability the model gave it."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class TargetMaps:
    """Every requested method's map for one target."""

    target: Target
    maps: list[MapResult]


@dataclass(frozen=True)
class ImageResult:
    """One image's answer: top classes, and the maps for each requested target in order."""

    prediction: dict[str, float]
    targets: list[TargetMaps]


@dataclass(frozen=True)
class RowResult:
    """One row's answer: prediction in original units, base value and attributions in the
    model's output space (log of the target), keyed by method then column, so that
    `base_value + sum(attributions[m].values()) = log(prediction)` up to `convergence_delta[m]`."""

    prediction: float
    base_value: float
    attributions: dict[str, dict[str, float]]
    convergence_delta: dict[str, float] = field(default_factory=dict)
    # per method, any further figures it reports (IG with delta_tol: steps, converged)
    extras: dict[str, dict[str, float]] = field(default_factory=dict)


Explanation = ImageResult | RowResult
Prediction = dict[str, float] | list[float]  # an image's top classes, or a request's row values
