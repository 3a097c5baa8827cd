"""Score every image explanation method of a served archive on held-out generated shapes.

`python -m training evaluate [model_store/cnn.mar] [-n 200]` opens the archive
with the handler that serves it and, for every registered
image method, measures:

- pointing game: share of maps whose maximum (upsampled to the image) falls
  inside the shape's true box (1 px tolerance); higher is better;
- deletion AUC: the predicted class's probability as the most-attributed pixels
  are replaced by a blurred copy first, averaged over 20 steps; lower is better;
- insertion AUC: the same probability as the most-attributed pixels are put back
  into the blurred copy first; higher is better;

each beside a random map's score, plus Integrated Gradients' mean |convergence delta|.
It writes docs/evaluation.md (the table) and docs/gallery.png (image, then each
method's overlay), and the interpretation reports of training/reports.py (confusion
matrix, top losses with Grad-CAM, activations per conv stage).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from service import render
from service.archive import open_archive
from service.explain import REGISTRY, build, methods_for
from service.explain.base import blur
from service.handlers.image import ImageHandler
from training.reports import write_reports
from training.shapes import ShapesData, make_shapes

EVAL_SEED = 20_000  # neither the training nor the training-time test seed
STEPS = 20


@dataclass
class Score:
    method: str
    pointing: float
    deletion: float
    insertion: float
    seconds_per_image: float
    delta: float | None = None


def evaluate_archive(archive: Path, n: int = 200, out: Path = Path("docs")) -> str:
    """Score every image method; write the table and the gallery; return the table."""
    with tempfile.TemporaryDirectory() as workdir:
        handler = open_archive(archive, Path(workdir)).handler
        if not isinstance(handler, ImageHandler):
            raise SystemExit(f"{archive} is not an image model")
        data = make_shapes(n, seed=EVAL_SEED, size=handler.size[0])
        table, maps = score_methods(handler, data)
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.md").write_text(table + "\n")
        gallery(handler, data, maps).save(out / "gallery.png")
        reports = write_reports(handler, data, out)  # confusion, top losses, layer activations
        return table + f"\n\nwrote {out / 'evaluation.md'} and {out / 'gallery.png'}\n\n{reports}"


def score_methods(handler: ImageHandler, data: ShapesData) -> tuple[str, dict[str, np.ndarray]]:
    images = [Image.fromarray(a) for a in data.images]
    inputs = handler.preprocess(images)
    result = handler.infer(inputs)
    targets = result.probabilities.argmax(dim=1)
    accuracy = float((targets.numpy() == data.labels).mean())
    size = inputs.shape[-1]
    scores, all_maps = [], {}
    for name in tqdm(methods_for("image"), desc="scoring methods"):
        explainer = build("image", name, {})
        started = time.perf_counter()
        attribution = handler.explain(result, explainer, targets)
        maps = attribution.maps
        seconds = (time.perf_counter() - started) / len(images)
        full = np.stack([render.upsample(m, (size, size)) for m in maps])
        all_maps[name] = maps
        deltas = [abs(e["convergence_delta"]) for e in attribution.extras]
        scores.append(
            Score(
                name,
                pointing_game(full, data.boxes),
                *deletion_insertion(handler, inputs, targets, full),
                seconds,
                float(np.mean(deltas)) if deltas else None,
            )
        )
    rng = np.random.default_rng(0)
    random_maps = rng.random((len(images), size, size)).astype(np.float32)
    random = Score(
        "random map",
        pointing_game(random_maps, data.boxes),
        *deletion_insertion(handler, inputs, targets, random_maps),
        0.0,
    )
    return format_table(scores, random, len(images), accuracy), all_maps


def pointing_game(maps: np.ndarray, boxes: np.ndarray | None) -> float:
    """Share of [N, H, W] maps whose maximum lies inside the box (1 px tolerance)."""
    assert boxes is not None, "the pointing game needs ground-truth boxes"
    hits = 0
    for full, (x0, y0, x1, y1) in zip(maps, boxes, strict=True):
        y, x = np.unravel_index(int(full.argmax()), full.shape)
        hits += int(x0 - 1 <= x <= x1 + 1 and y0 - 1 <= y <= y1 + 1)
    return hits / len(maps)


def deletion_insertion(
    handler: ImageHandler, inputs: torch.Tensor, targets: torch.Tensor, maps: np.ndarray
) -> tuple[float, float]:
    """Mean target probability over STEPS+1 fractions of pixels deleted / inserted, by rank."""
    n, _, height, width = inputs.shape
    blurred = blur(inputs)
    order = torch.from_numpy(np.argsort(-maps.reshape(n, -1), axis=1, kind="stable").copy())
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(height * width).expand(n, -1).contiguous())
    rank = rank.view(n, 1, height, width)
    deletion, insertion = [], []
    for step in range(STEPS + 1):
        top = rank < round(step / STEPS * height * width)
        deletion.append(_probability(handler, torch.where(top, blurred, inputs), targets))
        insertion.append(_probability(handler, torch.where(top, inputs, blurred), targets))
    return float(np.mean(deletion)), float(np.mean(insertion))


def _probability(handler: ImageHandler, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    probabilities = handler.infer(inputs, capture=False).probabilities
    return float(probabilities.gather(1, targets.view(-1, 1)).mean())


def format_table(scores: list[Score], random: Score, n: int, accuracy: float) -> str:
    lines = [
        f"Held-out generated shapes: n={n}, classifier accuracy {accuracy:.1%}. "
        "Pointing game and insertion: higher is better; deletion: lower is better.",
        "",
        "| method | pointing game | deletion AUC | insertion AUC | ms / image | IG delta |",
        "|---|---|---|---|---|---|",
    ]
    for s in [*scores, random]:
        delta = f"{s.delta:.2e}" if s.delta is not None else ""
        lines.append(
            f"| {s.method} | {s.pointing:.3f} | {s.deletion:.3f} | {s.insertion:.3f} "
            f"| {s.seconds_per_image * 1000:.1f} | {delta} |"
        )
    return "\n".join(lines)


def gallery(
    handler: ImageHandler,
    data: ShapesData,
    maps: dict[str, np.ndarray],
    rows: int = 6,
    cell: int = 96,
) -> Image.Image:
    """A grid: each row an image with its box, then each method's overlay."""
    columns = ["image", *maps]
    sheet = Image.new("RGB", (cell * len(columns), cell * rows + 16), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(columns):
        draw.text((c * cell + 3, 2), title[:15], fill="black")
    for r in range(rows):
        image = Image.fromarray(data.images[r]).resize((cell, cell), Image.Resampling.NEAREST)
        tiles = [image] + [
            render.overlay(
                image,
                render.normalise(maps[m][r], REGISTRY[m].signed),
                REGISTRY[m].signed,
                alpha=0.6,
            )
            for m in maps
        ]
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (c * cell, 16 + r * cell))
    return sheet
