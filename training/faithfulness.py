"""Faithfulness measures of image explanation maps, shared by `training.evaluate`.

- `pointing_game`: share of maps whose maximum lies in the true box;
- `class_pointing`: the same on two-object scenes, each scene explained once for each of
  its two classes (`target=`), a hit when the map for a class peaks in that class's box;
- `deletion_insertion`: the target's probability as pixels are removed (replaced by a
  blurred copy) or inserted (into the blurred copy), most important first;
- `completeness`: Integrated Gradients' |convergence delta| with a fixed number of steps
  or with `delta_tol`, with the steps and time it took.

Ranking for deletion and insertion: unsigned maps by value; signed maps by magnitude
(|value|), because a signed map explains the target's logit while the curves follow its
softmax probability, and the pixels with negative logit attribution are among those that
the probability needs most (docs/evaluation.md, "Insertion"). Ties (the zeros of a ReLU'd
map) are broken in a fixed random order, not in raster order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from service import render
from service.explain import build
from service.explain.base import blur
from service.handlers.image import ImageHandler
from training.shapes import ScenesData

STEPS = 20  # points of the deletion and insertion curves, besides the start
TIE_SEED = 1


def pointing_game(maps: np.ndarray, boxes: np.ndarray | None) -> float:
    """Share of [N, H, W] maps whose maximum lies inside the box (1 px tolerance)."""
    assert boxes is not None, "the pointing game needs ground-truth boxes"
    hits = 0
    for full, (x0, y0, x1, y1) in zip(maps, boxes, strict=True):
        y, x = np.unravel_index(int(full.argmax()), full.shape)
        hits += int(x0 - 1 <= x <= x1 + 1 and y0 - 1 <= y <= y1 + 1)
    return hits / len(maps)


def full_size(maps: np.ndarray, size: int) -> np.ndarray:
    """[N, h, w] maps upsampled (bilinear) to [N, size, size]."""
    return np.stack([render.upsample(m, (size, size)) for m in maps])


def ranking(maps: np.ndarray, signed: bool) -> np.ndarray:
    """What deletion and insertion rank pixels by: |value| for signed maps, else value."""
    return np.abs(maps) if signed else maps


def deletion_insertion(
    handler: ImageHandler, inputs: torch.Tensor, targets: torch.Tensor, scores: np.ndarray
) -> tuple[float, float]:
    """The means of the deletion and the insertion `curve` for `scores` [N, H, W]."""
    deletion = curve(handler, inputs, targets, scores, insert=False)
    insertion = curve(handler, inputs, targets, scores, insert=True)
    return float(np.mean(deletion)), float(np.mean(insertion))


def curve(
    handler: ImageHandler,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    scores: np.ndarray,
    insert: bool,
    logit: bool = False,
) -> list[float]:
    """The mean target probability (or, with `logit`, logit) at STEPS+1 fractions of pixels
    inserted into the blurred copy of each image (`insert`) or deleted from it (replaced by
    the blurred copy), highest `scores` [N, H, W] first, ties in a fixed random order."""
    n, _, height, width = inputs.shape
    blurred = blur(inputs)
    flat = scores.reshape(n, -1)
    ties = np.random.default_rng(TIE_SEED).random(flat.shape)
    order = torch.from_numpy(np.lexsort((ties, -flat), axis=1).copy())
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(height * width).expand(n, -1).contiguous())
    rank = rank.view(n, 1, height, width)
    points = []
    for step in range(STEPS + 1):
        top = rank < round(step / STEPS * height * width)
        mixed = torch.where(top, inputs, blurred) if insert else torch.where(top, blurred, inputs)
        if logit:
            with torch.no_grad():
                out = handler.network(mixed)
        else:
            out = handler.infer(mixed, capture=False).probabilities
        points.append(float(out.gather(1, targets.view(-1, 1)).mean()))
    return points


@dataclass
class SceneScores:
    """Class-discriminative pointing per method, and each scene's maps for its two classes."""

    pointing: dict[str, float]
    maps: dict[str, tuple[np.ndarray, np.ndarray]]  # method -> ([N, h, w] class 0, class 1)
    both_in_top2: float  # share of scenes whose two most probable classes are its two shapes


def class_pointing(handler: ImageHandler, scenes: ScenesData, methods: list[str]) -> SceneScores:
    """Explain every scene for each of its two classes with each method; score hits."""
    inputs = handler.preprocess([Image.fromarray(a) for a in scenes.images])
    result = handler.infer(inputs)
    top2 = result.probabilities.topk(2, dim=1).indices.numpy()
    pairs = zip(top2, scenes.labels, strict=True)
    both = float(np.mean([set(t) == set(pair) for t, pair in pairs]))
    size = inputs.shape[-1]
    pointing: dict[str, float] = {}
    maps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in methods:
        explainer = build("image", name, {})
        per_class = [
            handler.explain(result, explainer, torch.from_numpy(scenes.labels[:, j])).maps
            for j in (0, 1)
        ]
        hits = [pointing_game(full_size(per_class[j], size), scenes.boxes[:, j]) for j in (0, 1)]
        pointing[name] = float(np.mean(hits))
        maps[name] = (per_class[0], per_class[1])
    rng = np.random.default_rng(0)
    pointing["random map"] = float(
        np.mean(
            [
                pointing_game(rng.random((len(scenes), size, size)), scenes.boxes[:, j])
                for j in (0, 1)
            ]
        )
    )
    return SceneScores(pointing, maps, both)


@dataclass
class Completeness:
    """IG's completeness on images under one setting."""

    setting: str
    mean_delta: float
    max_delta: float
    mean_steps: float
    converged: float | None  # share of inputs at or under the tolerance (None without one)
    ms_per_image: float


def completeness(
    handler: ImageHandler, inputs: torch.Tensor, targets: torch.Tensor, settings: dict[str, Any]
) -> list[Completeness]:
    """IG run once per setting (name -> parameters) on the same inputs and targets."""
    result = handler.infer(inputs)
    rows = []
    for setting, params in settings.items():
        explainer = build("image", "integrated_gradients", params)
        started = time.perf_counter()
        extras = handler.explain(result, explainer, targets).extras
        seconds = time.perf_counter() - started
        deltas = np.abs([e["convergence_delta"] for e in extras])
        steps = [e.get("steps", explainer.options["steps"]) for e in extras]
        converged = [bool(e["converged"]) for e in extras if "converged" in e]
        rows.append(
            Completeness(
                setting,
                float(deltas.mean()),
                float(deltas.max()),
                float(np.mean(steps)),
                float(np.mean(converged)) if converged else None,
                seconds / len(extras) * 1000,
            )
        )
    return rows
