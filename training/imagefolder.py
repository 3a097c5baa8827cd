"""Load a user's ImageFolder-style directory: root/<class>/<image>, any format Pillow reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from training.shapes import ShapesData

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_image_folder(
    root: Path, size: int, seed: int = 0, test_fraction: float = 0.2
) -> tuple[ShapesData, ShapesData]:
    """Read every image, resize to `size`, split by a seeded shuffle into train and test.

    A root with `train/` and `test/` (or `valid/`) subfolders keeps that split instead.
    """
    root = Path(root)
    for test_name in ("test", "valid", "val"):
        if (root / "train").is_dir() and (root / test_name).is_dir():
            train = _read(root / "train", size, None)
            return train, _read(root / test_name, size, train.classes)
    everything = _read(root, size, None)
    order = np.random.default_rng(seed).permutation(len(everything))
    cut = max(1, int(len(order) * test_fraction))
    return _subset(everything, order[cut:]), _subset(everything, order[:cut])


def _read(root: Path, size: int, classes: tuple[str, ...] | None) -> ShapesData:
    classes = classes or tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
        raise SystemExit(f"{root} has no class folders: expected {root}/<class>/<image files>")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in EXTENSIONS:
                with Image.open(path) as image:
                    rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                images.append(np.asarray(rgb, dtype=np.uint8))
                labels.append(label)
    if not images:
        raise SystemExit(f"no images found under {root}")
    return ShapesData(np.stack(images), np.array(labels, dtype=np.int64), None, classes)


def _subset(data: ShapesData, index: np.ndarray) -> ShapesData:
    return ShapesData(data.images[index], data.labels[index], None, data.classes)
