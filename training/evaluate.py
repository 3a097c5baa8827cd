"""Score every image explanation method of a served archive on held-out generated shapes.

`python -m training evaluate [model_store/cnn.mar] [-n 200]` opens the archive
with the handler that serves it and, for every registered image method, measures
(training/faithfulness.py holds the measures):

- pointing game: share of maps whose maximum (upsampled to the image) falls
  inside the shape's true box (1 px tolerance); higher is better;
- deletion AUC: the predicted class's probability as the most-attributed pixels
  are replaced by a blurred copy first, averaged over 20 steps; lower is better;
- insertion AUC: the same probability as the most-attributed pixels are put back
  into the blurred copy first; higher is better; signed maps rank pixels by |value|
  (the by-value figure is shown beside it);
- class-discriminative pointing on `n` two-object scenes: each scene explained for each
  of its two classes, a hit when the map for a class peaks in that class's box;
- Integrated Gradients' completeness: mean |convergence delta|, steps and ms per image
  at the fixed 50 steps and with `delta_tol`, on the first `completeness_n` images;

each beside a random map's score. It writes docs/evaluation.md (the tables, keeping the
hand-written part below NOTES) and docs/gallery.png (single shapes, then two-object
scenes explained for each of their classes; each method's overlay), and the
interpretation reports of training/reports.py (confusion matrix, top losses with
Grad-CAM, activations per conv stage).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from service import render
from service.archive import open_archive
from service.explain import REGISTRY, build, methods_for
from service.handlers.image import ImageHandler
from training.faithfulness import (
    Completeness,
    SceneScores,
    class_pointing,
    completeness,
    curve,
    deletion_insertion,
    full_size,
    pointing_game,
    ranking,
)
from training.reports import write_reports
from training.shapes import ScenesData, ShapesData, make_scenes, make_shapes

__all__ = ["evaluate_archive", "score_methods"]

EVAL_SEED = 20_000  # neither the training nor the training-time test seed
SCENE_SEED = 30_000  # the two-object scenes'
DELTA_TOL = 1e-3
COARSE_TOL = 5e-2  # where the two baselines are compared: zeros needs far more steps
NOTES = "<!-- Below: written by hand; `python -m training evaluate` keeps it. -->"


@dataclass
class Score:
    method: str
    pointing: float
    deletion: float
    insertion: float
    seconds_per_image: float
    delta: float | None = None
    insertion_by_value: float | None = None  # signed maps: the curve ranked by value


def evaluate_archive(
    archive: Path, n: int = 200, out: Path = Path("docs"), completeness_n: int = 50
) -> str:
    """Score every image method; write the tables and the gallery; return the tables."""
    with tempfile.TemporaryDirectory() as workdir:
        handler = open_archive(archive, Path(workdir)).handler
        if not isinstance(handler, ImageHandler):
            raise SystemExit(f"{archive} is not an image model")
        data = make_shapes(n, seed=EVAL_SEED, size=handler.size[0])
        table, maps = score_methods(handler, data)
        scenes = make_scenes(n, seed=SCENE_SEED, size=handler.size[0])
        scored = class_pointing(handler, scenes, methods_for("image"))
        converging = score_completeness(handler, data, completeness_n)
        sections = [table, format_scenes(scored, len(scenes))]
        text = "\n\n".join([*sections, format_completeness(converging, completeness_n)])
        out.mkdir(parents=True, exist_ok=True)
        _write_keeping_notes(out / "evaluation.md", text)
        gallery(handler, data, maps, scenes, scored).save(out / "gallery.png")
        reports = write_reports(handler, data, out)  # confusion, top losses, layer activations
        wrote = f"wrote {out / 'evaluation.md'} and {out / 'gallery.png'}"
        return f"{text}\n\n{wrote}\n\n{reports}"


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
        full = full_size(maps, size)
        all_maps[name] = maps
        deltas = [abs(e["convergence_delta"]) for e in attribution.extras]
        signed = REGISTRY[name].signed
        by_value = (
            float(np.mean(curve(handler, inputs, targets, full, insert=True))) if signed else None
        )
        scores.append(
            Score(
                name,
                pointing_game(full, data.boxes),
                *deletion_insertion(handler, inputs, targets, ranking(full, signed)),
                seconds,
                float(np.mean(deltas)) if deltas else None,
                by_value,
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


def score_completeness(handler: ImageHandler, data: ShapesData, n: int) -> list[Completeness]:
    """IG at its fixed default steps and with delta_tol on `n` images; the baselines are
    compared at a coarser tolerance (the mean-colour one needs far more steps)."""
    inputs = handler.preprocess([Image.fromarray(a) for a in data.images[:n]])
    targets = handler.infer(inputs).probabilities.argmax(dim=1)
    coarse = {"delta_tol": COARSE_TOL}
    settings = {
        "steps=50 (default), baseline=blur": {},
        f"delta_tol={DELTA_TOL:g}, baseline=blur": {"delta_tol": DELTA_TOL},
        f"delta_tol={COARSE_TOL:g}, baseline=blur": coarse,
        f"delta_tol={COARSE_TOL:g}, baseline=zeros": {**coarse, "baseline": "zeros"},
    }
    return completeness(handler, inputs, targets, settings)


def format_table(scores: list[Score], random: Score, n: int, accuracy: float) -> str:
    lines = [
        f"Held-out generated shapes: n={n}, classifier accuracy {accuracy:.1%}. "
        "Pointing game and insertion: higher is better; deletion: lower is better. "
        "Deletion and insertion rank signed maps by |value|; the last column ranks them by "
        "value (the measurement before issue 16).",
        "",
        "| method | pointing game | deletion AUC | insertion AUC | ms / image | IG delta "
        "| insertion AUC by value |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in [*scores, random]:
        delta = f"{s.delta:.2e}" if s.delta is not None else ""
        by_value = f"{s.insertion_by_value:.3f}" if s.insertion_by_value is not None else ""
        lines.append(
            f"| {s.method} | {s.pointing:.3f} | {s.deletion:.3f} | {s.insertion:.3f} "
            f"| {s.seconds_per_image * 1000:.1f} | {delta} | {by_value} |"
        )
    return "\n".join(lines)


def format_scenes(scored: SceneScores, n: int) -> str:
    lines = [
        f"Two-object scenes: n={n}, two shapes of different classes each; each scene "
        f"explained for each of its two classes ({2 * n} maps per method). Class-"
        "discriminative pointing: the map for a class peaks in that class's box. Activation "
        "ignores the class asked for, so it should sit near 0.5. The classifier ranks both "
        f"shapes' classes as its top two on {scored.both_in_top2:.1%} of the scenes.",
        "",
        "| method | class-discriminative pointing |",
        "|---|---|",
        *(f"| {name} | {score:.3f} |" for name, score in scored.pointing.items()),
    ]
    return "\n".join(lines)


def format_completeness(rows: list[Completeness], n: int) -> str:
    lines = [
        f"Integrated Gradients' completeness on images (the first {n} of the held-out set): "
        "|convergence delta| = |sum(attributions) - (f(x) - f(baseline))| on the target's logit.",
        "",
        "| setting | mean abs delta | max abs delta | mean steps | converged | ms / image |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r.setting} | {r.mean_delta:.2e} | {r.max_delta:.2e} | {r.mean_steps:.0f} "
            f"| {'n/a' if r.converged is None else f'{r.converged:.1%}'} | {r.ms_per_image:.0f} |"
            for r in rows
        ),
    ]
    return "\n".join(lines)


def _write_keeping_notes(path: Path, text: str) -> None:
    """Write `text`, then NOTES and whatever followed NOTES in the file already."""
    notes = ""
    if path.exists() and NOTES in (old := path.read_text()):
        notes = old.split(NOTES, 1)[1]
    path.write_text(text + "\n\n" + NOTES + (notes or "\n"))


def gallery(
    handler: ImageHandler,
    data: ShapesData,
    maps: dict[str, np.ndarray],
    scenes: ScenesData | None = None,
    scored: SceneScores | None = None,
    rows: int = 4,
    scene_rows: int = 3,
    cell: int = 96,
) -> Image.Image:
    """A grid: each row an image, then each method's overlay; then each of `scene_rows`
    two-object scenes twice, explained for one class then the other (its box drawn)."""
    columns = ["image", *maps]
    tiles: list[tuple[str, list[Image.Image]]] = []
    for r in range(rows):
        per_method = {m: maps[m][r] for m in maps}
        image = _tile(data.images[r], cell)
        tiles.append((data.classes[data.labels[r]], _overlays(image, per_method)))
    if scenes is not None and scored is not None:
        for r in range(scene_rows):
            for j in (0, 1):
                boxed = _tile(scenes.images[r], cell)
                scale = cell / scenes.images.shape[1]
                ImageDraw.Draw(boxed).rectangle(
                    [float(v) * scale for v in scenes.boxes[r, j]], outline="white"
                )
                per_method = {m: scored.maps[m][j][r] for m in maps}
                label = f"scene {r + 1} as {scenes.classes[scenes.labels[r, j]]}"
                tiles.append((label, _overlays(boxed, per_method)))
    sheet = Image.new("RGB", (cell * len(columns), (cell + 12) * len(tiles) + 16), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(columns):
        draw.text((c * cell + 3, 2), title[:15], fill="black")
    for r, (label, row) in enumerate(tiles):
        top = 16 + r * (cell + 12)
        draw.text((3, top), label, fill="black")
        for c, tile in enumerate(row):
            sheet.paste(tile, (c * cell, top + 12))
    return sheet


def _tile(pixels: np.ndarray, cell: int) -> Image.Image:
    return Image.fromarray(pixels).resize((cell, cell), Image.Resampling.NEAREST)


def _overlays(image: Image.Image, maps: dict[str, np.ndarray]) -> list[Image.Image]:
    """The image, then each method's map laid over it."""
    return [image] + [
        render.overlay(
            image, render.normalise(grid, REGISTRY[m].signed), REGISTRY[m].signed, alpha=0.6
        )
        for m, grid in maps.items()
    ]
