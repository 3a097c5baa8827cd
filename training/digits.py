"""Train the CNN on real handwriting and archive it as digits.mar.

Data: scikit-learn's bundled handwritten digits (`sklearn.datasets.load_digits`: 1,797
scans of 8x8 pixels, 17 grey levels, ten classes; no download). A seeded, stratified
80/20 split (1,437 train / 360 held out). Each scan becomes dark ink on white paper and
is upsampled (bilinear) to `size` pixels, 32 by default: with the CNN's default strides
the activation map is then 8x8, one cell per pixel of the original scan. Training
augments with small rotations, scales and shifts (no flips: a flipped 2 is not a 2).

The archive has the same contents as cnn.mar (SmallResNet architecture file, state_dict,
glimpse's image handler, metadata with classes, input statistics, explanation layer,
evaluation and data provenance, index_to_name.json), so glimpse serves it with heatmaps.

Besides held-out accuracy, `train_digits` measures the ink pointing rate: the share of
held-out activation maps whose peak cell lies on ink (an original pixel of at least
`INK` of 16 grey levels), beside the same share for random maps (= the ink fraction).

Example: ``train_digits(DigitsConfig(out=tmp, epochs=1, subset=200))`` -> tmp / "digits.mar"
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from service.explain import ImageBatch, build
from service.hooks import capture_output, find_layer
from training.architectures import cnn as cnn_arch
from training.archive import write_archive
from training.image import normalise, to_tensor
from training.loop import epoch_batches, fit_one_cycle
from training.shapes import ShapesData

CLASSES = tuple(str(d) for d in range(10))
NATIVE = 8  # the scans are 8x8
INK = 4  # of 16 grey levels: a pixel at least this dark is ink
TEST_FRACTION = 0.2


@dataclass
class DigitsConfig:
    """How to build digits.mar."""

    out: Path = Path("model_store")
    name: str = "digits"
    epochs: int = 8
    size: int = 32
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 5e-4
    widths: tuple[int, ...] = (16, 32, 64, 96)
    strides: tuple[int, ...] = (2, 2, 1)
    seed: int = 0
    subset: int | None = None  # only this many scans (quick builds)


@dataclass
class DigitsData:
    """Upsampled RGB images (train, test) as ShapesData, and the held-out 8x8 scans (0..16)."""

    train: ShapesData
    test: ShapesData
    test_scans: np.ndarray


def load_digits_data(size: int = 32, seed: int = 0, subset: int | None = None) -> DigitsData:
    """The seeded stratified split, upsampled to `size` pixels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    scans, labels = bunch.images.astype(np.float32), bunch.target.astype(np.int64)
    if subset is not None:
        keep = np.random.default_rng(seed).permutation(len(labels))[:subset]
        scans, labels = scans[keep], labels[keep]
    index = np.arange(len(labels))
    train_index, test_index = train_test_split(
        index, test_size=TEST_FRACTION, random_state=seed, stratify=labels
    )
    train = ShapesData(upsample(scans[train_index], size), labels[train_index], None, CLASSES)
    test = ShapesData(upsample(scans[test_index], size), labels[test_index], None, CLASSES)
    return DigitsData(train, test, scans[test_index])


def upsample(scans: np.ndarray, size: int) -> np.ndarray:
    """[N, 8, 8] grey levels 0..16 -> [N, size, size, 3] uint8, dark ink on white."""
    paper = (255 - scans * (255 / 16)).clip(0, 255).astype(np.uint8)
    out = np.empty((len(scans), size, size, 3), dtype=np.uint8)
    for i, scan in enumerate(paper):
        image = Image.fromarray(scan).resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(image.convert("RGB"))
    return out


def save_digits_folder(root: Path, size: int = 32, seed: int = 0) -> Path:
    """The same split as an ImageFolder tree, root/{train,test}/<digit>/<n>.png (for finetune)."""
    data = load_digits_data(size, seed)
    for split, part in (("train", data.train), ("test", data.test)):
        for i, (image, label) in enumerate(zip(part.images, part.labels, strict=True)):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small rotations (+-10 degrees), scales (0.9-1.1) and shifts (+-8 %); no flips."""
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    angle = uniform(-10, 10) * math.pi / 180
    scale = uniform(0.9, 1.1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    shift_x, shift_y = uniform(-0.08, 0.08), uniform(-0.08, 0.08)
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # The paper is white (1.0): pad with it, not with zeros (black ink).
    shifted = F.grid_sample(1 - images, grid, padding_mode="zeros", align_corners=False)
    return 1 - shifted


def train_model(
    config: DigitsConfig, data: DigitsData, model: torch.nn.Module | None = None
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Train a SmallResNet (or `model`) on the training split; returns it with mean and std."""
    torch.manual_seed(config.seed)
    x_train = to_tensor(data.train.images)
    y_train = torch.from_numpy(data.train.labels)
    mean, std = x_train.mean(dim=(0, 2, 3)), x_train.std(dim=(0, 2, 3))
    if model is None:
        model = cnn_arch.SmallResNet(len(CLASSES), widths=config.widths, strides=config.strides)
    generator = torch.Generator().manual_seed(config.seed)
    batches, steps = epoch_batches(
        len(y_train),
        config.batch_size,
        generator,
        lambda index: (normalise(jitter(x_train[index], generator), mean, std), y_train[index]),
    )

    fit_one_cycle(
        model,
        batches,
        steps,
        config.epochs,
        F.cross_entropy,
        lr=config.lr,
        weight_decay=config.weight_decay,
        desc=f"training {config.name}",
    )
    return model, mean, std


def evaluate(
    model: torch.nn.Module,
    layer_name: str,
    data: DigitsData,
    mean: torch.Tensor,
    std: torch.Tensor,
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out accuracy and the ink pointing rate of the activation map vs a random map's."""
    model.eval()
    inputs = normalise(to_tensor(data.test.images), mean, std)
    layer = find_layer(model, layer_name)
    with torch.no_grad(), capture_output(layer) as seen:
        predictions = model(inputs).argmax(dim=1)
    labels = torch.from_numpy(data.test.labels)
    accuracy = float((predictions == labels).float().mean())
    batch = ImageBatch(model, layer, inputs, predictions, seen.output)
    maps = build("image", "activation", {}).attribute(batch).maps
    random_maps = np.random.default_rng(seed).random(maps.shape).astype(np.float32)
    return {
        "test_accuracy": accuracy,
        "n_test": len(labels),
        "ink_pointing_activation": ink_pointing(maps, data.test_scans),
        "ink_pointing_random": ink_pointing(random_maps, data.test_scans),
        "ink_fraction": float((data.test_scans >= INK).mean()),
        "map_cells": list(maps.shape[1:]),
    }


def ink_pointing(maps: np.ndarray, scans: np.ndarray) -> float:
    """Share of [N, h, w] maps whose peak cell lies on ink of the [N, 8, 8] scan (the cell's
    centre mapped onto the 8x8 grid; with 32-pixel inputs the map is 8x8, cell = pixel)."""
    hits = 0
    for full, scan in zip(maps, scans, strict=True):
        h, w = full.shape
        y, x = np.unravel_index(int(full.argmax()), full.shape)
        row, column = int((y + 0.5) * NATIVE / h), int((x + 0.5) * NATIVE / w)
        hits += int(scan[row, column] >= INK)
    return hits / len(maps)


def format_evaluation(evaluation: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"held-out accuracy: {evaluation['test_accuracy']:.2%} (n={evaluation['n_test']})",
            f"ink pointing rate (activation peak cell on ink): "
            f"{evaluation['ink_pointing_activation']:.2%}, random map "
            f"{evaluation['ink_pointing_random']:.2%} (ink covers "
            f"{evaluation['ink_fraction']:.1%} of the 8x8 cells)",
        ]
    )


def train_digits(config: DigitsConfig) -> Path:
    """Load, train, evaluate, archive; returns the .mar path."""
    data = load_digits_data(config.size, config.seed, config.subset)
    model, mean, std = train_model(config, data)
    layer_name = f"features.{len(config.widths) - 1}"
    evaluation = evaluate(model, layer_name, data, mean, std, config.seed)
    print(format_evaluation(evaluation))
    args = {
        "num_classes": len(CLASSES),
        "widths": list(config.widths),
        "strides": list(config.strides),
    }
    metadata = {
        "classes": list(CLASSES),
        "input": {
            "size": [config.size, config.size],
            "mean": mean.tolist(),
            "std": std.tolist(),
        },
        "explain": {"layer": layer_name, "tail": "classify"},
        "evaluation": evaluation,
        "data": {
            "dataset": "sklearn.datasets.load_digits",
            "split": "stratified, seeded",
            "seed": config.seed,
            "test_fraction": TEST_FRACTION,
            "n_train": len(data.train),
            "n_test": len(data.test),
            "upsampled_to": config.size,
            "subset": config.subset,
        },
        "training": {
            "epochs": config.epochs,
            "lr": config.lr,
            "batch_size": config.batch_size,
            "weight_decay": config.weight_decay,
            "optimizer": "AdamW",
            "schedule": "one-cycle",
            "augmentation": "rotation, scale, shift; no flips",
        },
    }
    return write_archive(
        name=config.name,
        kind="image",
        model=model,
        architecture_file=Path(cnn_arch.__file__),
        architecture_args=args,
        metadata=metadata,
        out_dir=config.out,
    )
