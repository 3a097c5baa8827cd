"""A generated shapes data set whose images carry their ground-truth boxes.

Each image is a noisy, cluttered background with one shape (circle, square,
triangle or cross) of random size, position, colour and rotation. The same
seed always gives the same images, so a held-out split is reproducible and a
heatmap can be scored against the shape's box (the pointing game).

Example: ``ds = make_shapes(1000, seed=0); ds.images.shape == (1000, 64, 64, 3)``
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RADIUS = (0.13, 0.26)  # of the image size
CLASSES = ("circle", "square", "triangle", "cross")


@dataclass(frozen=True)
class ShapesData:
    """Images [N, H, W, 3] uint8, labels [N] int64, boxes [N, 4] (x0, y0, x1, y1) or None."""

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray | None
    classes: tuple[str, ...] = CLASSES

    def __len__(self) -> int:
        return len(self.labels)


def make_shapes(n: int, seed: int = 0, size: int = 64) -> ShapesData:
    """Generate `n` images of `size`x`size` pixels, deterministically from `seed`."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, len(CLASSES), size=n)
    boxes = np.empty((n, 4), dtype=np.float32)
    for i in range(n):
        images[i], boxes[i] = _render(int(labels[i]), size, rng)
    return ShapesData(images, labels.astype(np.int64), boxes)


def save_image_folder(data: ShapesData, root: Path) -> None:
    """Write `data` as an ImageFolder-style tree: root/<class>/<index>.png."""
    for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
        folder = root / data.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")


def _render(label: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    background = _background(size, rng)
    canvas = Image.fromarray(background)
    draw = ImageDraw.Draw(canvas)
    _clutter(draw, size, rng)
    radius = rng.uniform(RADIUS[0], RADIUS[1]) * size
    cx, cy = rng.uniform(radius + 2, size - radius - 2, size=2)
    points = _outline(CLASSES[label], radius, rng.uniform(0, 2 * math.pi))
    points = [(cx + x, cy + y) for x, y in points]
    draw.polygon(points, fill=_contrasting_colour(background, rng))
    noisy = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 8, size=(size, size, 3))
    xs, ys = zip(*points, strict=True)
    box = np.array([min(xs), min(ys), max(xs), max(ys)], dtype=np.float32).clip(0, size - 1)
    return noisy.clip(0, 255).astype(np.uint8), box


def _outline(kind: str, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "circle":
        corners = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40)]
    elif kind == "square":
        s = 0.75
        corners = [(-s, -s), (s, -s), (s, s), (-s, s)]
    elif kind == "triangle":
        corners = [(math.cos(t), math.sin(t)) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    else:  # cross: a plus sign with arms a third of the width
        a, b = 1.0, 0.33
        corners = [
            (-b, -a),
            (b, -a),
            (b, -b),
            (a, -b),
            (a, b),
            (b, b),
            (b, a),
            (-b, a),
            (-b, b),
            (-a, b),
            (-a, -b),
            (-b, -b),
        ]
    c, s_ = math.cos(angle), math.sin(angle)
    return [(r * (x * c - y * s_), r * (x * s_ + y * c)) for x, y in corners]


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A linear colour gradient between two random colours."""
    start, end = rng.uniform(0, 255, size=(2, 3))
    direction = rng.uniform(-1, 1, size=2)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = xx * direction[0] + yy * direction[1]
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    return (start + (end - start) * t[..., None]).astype(np.uint8)


def _clutter(draw: ImageDraw.ImageDraw, size: int, rng: np.random.Generator) -> None:
    """Thin lines and small dots: distractors that are not any of the classes."""
    for _ in range(rng.integers(2, 6)):
        x0, y0, x1, y1 = rng.uniform(0, size, size=4)
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=1)
    for _ in range(rng.integers(3, 9)):
        x, y = rng.uniform(0, size, size=2)
        r = rng.uniform(0.5, 1.8)
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def _contrasting_colour(background: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """A random colour at least 90 grey levels away from the background's mean."""
    mean = background.reshape(-1, 3).mean(axis=0)
    for _ in range(100):
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - mean).sum() > 200 and abs(colour.mean() - mean.mean()) > 30:
            break
    return tuple(int(v) for v in colour)  # type: ignore[return-value]


SCENE_RADIUS = (0.13, 0.19)  # of the image size: the low end of RADIUS, so two shapes fit apart


@dataclass(frozen=True)
class ScenesData:
    """Two-object scenes: images [N, H, W, 3] uint8, labels [N, 2] (two different classes)
    and boxes [N, 2, 4] (x0, y0, x1, y1), box j belonging to labels[:, j]."""

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    classes: tuple[str, ...] = CLASSES

    def __len__(self) -> int:
        return len(self.labels)


def make_scenes(n: int, seed: int = 0, size: int = 64) -> ScenesData:
    """`n` images with two shapes of different classes whose boxes do not touch (2 px apart),
    on the same cluttered backgrounds as `make_shapes`; deterministic in `seed`.

    Example: ``s = make_scenes(200, seed=1, size=48); s.boxes.shape == (200, 2, 4)``
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty((n, 2), dtype=np.int64)
    boxes = np.empty((n, 2, 4), dtype=np.float32)
    for i in range(n):
        labels[i] = rng.choice(len(CLASSES), size=2, replace=False)
        images[i], boxes[i] = _render_scene(labels[i], size, rng)
    return ScenesData(images, labels, boxes)


def _render_scene(
    labels: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    background = _background(size, rng)
    canvas = Image.fromarray(background)
    draw = ImageDraw.Draw(canvas)
    _clutter(draw, size, rng)
    boxes: list[np.ndarray] = []
    for label in labels:
        for _ in range(1000):  # rejection sampling: a place apart from the shapes drawn so far
            radius = rng.uniform(SCENE_RADIUS[0], SCENE_RADIUS[1]) * size
            cx, cy = rng.uniform(radius + 2, size - radius - 2, size=2)
            points = [
                (cx + x, cy + y)
                for x, y in _outline(CLASSES[label], radius, rng.uniform(0, 2 * math.pi))
            ]
            xs, ys = zip(*points, strict=True)
            box = np.array([min(xs), min(ys), max(xs), max(ys)], dtype=np.float32)
            if all(_apart(box, other, 2.0) for other in boxes):
                break
        draw.polygon(points, fill=_contrasting_colour(background, rng))
        boxes.append(box.clip(0, size - 1))
    noisy = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 8, size=(size, size, 3))
    return noisy.clip(0, 255).astype(np.uint8), np.stack(boxes)


def _apart(a: np.ndarray, b: np.ndarray, gap: float) -> bool:
    """Whether boxes `a` and `b` are at least `gap` pixels apart along x or along y."""
    return bool(a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1])
