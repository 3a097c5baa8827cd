"""Train the image classifier and archive it as cnn.mar.

Data: the generated shapes set by default (with boxes, so the activation
heatmap is scored by the pointing game), or an ImageFolder-style directory.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from service.explain import ImageBatch, build
from service.hooks import capture_output, find_layer
from service.render import upsample
from training.architectures import cnn as cnn_arch
from training.archive import write_archive
from training.augment import augment
from training.faithfulness import pointing_game
from training.imagefolder import load_image_folder
from training.loop import fit_one_cycle
from training.shapes import ShapesData, make_shapes

SIZE = 48
TRAIN_SEED, TEST_SEED = 0, 10_000  # disjoint seeds: held-out images are never seen in training


@dataclass
class ImageConfig:
    """How to build cnn.mar; the defaults meet the accuracy and pointing-game targets."""

    data: Path | None = None
    out: Path = Path("model_store")
    name: str = "cnn"
    epochs: int = 8
    n_train: int = 4000
    n_test: int = 400
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 5e-4
    widths: tuple[int, ...] = (16, 32, 64, 96)
    strides: tuple[int, ...] = (2, 2, 1)
    seed: int = 0


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """[N, H, W, 3] uint8 -> [N, 3, H, W] float in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def load_data(config: ImageConfig) -> tuple[ShapesData, ShapesData, dict[str, Any]]:
    if config.data is None:
        train = make_shapes(config.n_train, seed=TRAIN_SEED + config.seed, size=SIZE)
        test = make_shapes(config.n_test, seed=TEST_SEED + config.seed, size=SIZE)
        source = {
            "dataset": "generated shapes",
            "train_seed": TRAIN_SEED + config.seed,
            "test_seed": TEST_SEED + config.seed,
            "n_train": config.n_train,
            "n_test": config.n_test,
        }
        return train, test, source
    train, test = load_image_folder(config.data, size=SIZE, seed=config.seed)
    source = {
        "dataset": "image folder",
        "path": str(config.data),
        "n_train": len(train),
        "n_test": len(test),
    }
    return train, test, source


def train_cnn(config: ImageConfig) -> Path:
    """Train, evaluate on the held-out split, archive; returns the .mar path."""
    torch.manual_seed(config.seed)
    train, test, source = load_data(config)
    x_train = to_tensor(train.images)
    mean = x_train.mean(dim=(0, 2, 3))
    std = x_train.std(dim=(0, 2, 3))
    model = cnn_arch.SmallResNet(len(train.classes), widths=config.widths, strides=config.strides)
    generator = torch.Generator().manual_seed(config.seed)
    steps = math.ceil(len(train) / config.batch_size)
    y_train = torch.from_numpy(train.labels)

    def batches(epoch: int) -> Any:
        order = torch.randperm(len(train), generator=generator)
        for i in range(steps):
            index = order[i * config.batch_size : (i + 1) * config.batch_size]
            images = augment(x_train[index], generator)
            yield normalise(images, mean, std), y_train[index]

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
    layer_name = f"features.{len(config.widths) - 1}"
    evaluation = evaluate(model, find_layer(model, layer_name), test, mean, std)
    print(format_evaluation(evaluation))
    args = {
        "num_classes": len(train.classes),
        "widths": list(config.widths),
        "strides": list(config.strides),
    }
    metadata = {
        "classes": list(train.classes),
        "input": {"size": [SIZE, SIZE], "mean": mean.tolist(), "std": std.tolist()},
        "explain": {"layer": layer_name, "tail": "classify"},
        "evaluation": evaluation,
        "data": source,
        "training": {
            "epochs": config.epochs,
            "lr": config.lr,
            "batch_size": config.batch_size,
            "weight_decay": config.weight_decay,
            "optimizer": "AdamW",
            "schedule": "one-cycle",
        },
    }
    index_to_name = {str(i): c for i, c in enumerate(train.classes)}
    return write_archive(
        name=config.name,
        kind="image",
        model=model,
        architecture_file=Path(cnn_arch.__file__),
        architecture_args=args,
        metadata=metadata,
        out_dir=config.out,
        extra_files={"index_to_name.json": json.dumps(index_to_name, indent=2)},
    )


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def evaluate(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    test: ShapesData,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> dict[str, Any]:
    """Accuracy on the held-out split and, where boxes are known, the activation pointing game."""
    model.eval()
    inputs = normalise(to_tensor(test.images), mean, std)
    with torch.no_grad(), capture_output(layer) as seen:
        predictions = model(inputs).argmax(dim=1)
    accuracy = float((predictions == torch.from_numpy(test.labels)).float().mean())
    result: dict[str, Any] = {"test_accuracy": accuracy, "n_test": len(test)}
    if test.boxes is not None:
        batch = ImageBatch(model, layer, inputs, predictions, seen.output)
        maps = build("image", "activation", {}).attribute(batch).maps
        full = np.stack([upsample(m, (SIZE, SIZE)) for m in maps])
        result["pointing_game_activation"] = pointing_game(full, test.boxes)
    return result


def format_evaluation(evaluation: dict[str, Any]) -> str:
    lines = [f"held-out accuracy: {evaluation['test_accuracy']:.2%} (n={evaluation['n_test']})"]
    if "pointing_game_activation" in evaluation:
        lines.append(f"pointing game (activation): {evaluation['pointing_game_activation']:.2%}")
    return "\n".join(lines)
