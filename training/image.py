"""Train the image classifier and archive it as cnn.mar.

Data: the generated shapes set by default (with boxes, so the activation
heatmap is scored by the pointing game), or an ImageFolder-style directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from service.explain import ImageBatch, build
from service.hooks import capture_output, find_layer
from training.architectures import cnn as cnn_arch
from training.archive import write_archive
from training.augment import augment
from training.faithfulness import full_size, pointing_game
from training.imagefolder import load_image_folder
from training.loop import epoch_batches, fit_one_cycle
from training.lr_find import LRFindResult, lr_find
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
    # Progressive resizing: train at each size in turn (empty: SIZE only); see `epoch_split`.
    sizes: tuple[int, ...] = ()
    # Run the learning-rate range test first and train with its suggestion instead of `lr`.
    lr_auto: bool = False


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """[N, H, W, 3] uint8 -> [N, 3, H, W] float in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def load_data(
    config: ImageConfig, size: int = SIZE
) -> tuple[ShapesData, ShapesData, dict[str, Any]]:
    """Train and held-out splits at `size` pixels: generated shapes rendered at that size, or
    the user's folder resized to it."""
    if config.data is None:
        train = make_shapes(config.n_train, seed=TRAIN_SEED + config.seed, size=size)
        test = make_shapes(config.n_test, seed=TEST_SEED + config.seed, size=size)
        source = {
            "dataset": "generated shapes",
            "train_seed": TRAIN_SEED + config.seed,
            "test_seed": TEST_SEED + config.seed,
            "n_train": config.n_train,
            "n_test": config.n_test,
        }
        return train, test, source
    train, test = load_image_folder(config.data, size=size, seed=config.seed)
    source = {
        "dataset": "image folder",
        "path": str(config.data),
        "n_train": len(train),
        "n_test": len(test),
    }
    return train, test, source


def epoch_split(epochs: int, sizes: tuple[int, ...]) -> list[int]:
    """Epochs per size: `epochs` split equally, the remainder going to the last (largest) sizes,
    and at least one epoch per size. ``epoch_split(8, (24, 48)) == [4, 4]``."""
    base, extra = divmod(max(epochs, len(sizes)), len(sizes))
    return [base + (1 if i >= len(sizes) - extra else 0) for i in range(len(sizes))]


@dataclass
class Stage:
    """One size's training data as tensors, with the statistics inputs are normalised by."""

    size: int
    train: ShapesData
    test: ShapesData
    source: dict[str, Any]
    x_train: torch.Tensor
    y_train: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def batches(self, batch_size: int, generator: torch.Generator) -> Any:
        """`batches(epoch)` for the fit loop: shuffled, augmented, normalised mini-batches."""

        def take(index: torch.Tensor) -> Any:
            images = augment(self.x_train[index], generator)
            return normalise(images, self.mean, self.std), self.y_train[index]

        return epoch_batches(len(self.train), batch_size, generator, take)


def load_stage(config: ImageConfig, size: int) -> Stage:
    train, test, source = load_data(config, size)
    x_train = to_tensor(train.images)
    mean, std = x_train.mean(dim=(0, 2, 3)), x_train.std(dim=(0, 2, 3))
    return Stage(size, train, test, source, x_train, torch.from_numpy(train.labels), mean, std)


def new_model(config: ImageConfig, num_classes: int) -> cnn_arch.SmallResNet:
    return cnn_arch.SmallResNet(num_classes, widths=config.widths, strides=config.strides)


def find_lr(
    config: ImageConfig,
    model: torch.nn.Module,
    stage: Stage,
    num: int = 100,
    rule: str = "minimum",
) -> LRFindResult:
    """The range test on `stage`'s batches, its suggestion by `rule`; the model comes back
    unchanged."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    batches, _ = stage.batches(config.batch_size, generator)
    return lr_find(
        model,
        batches,
        F.cross_entropy,
        num=num,
        weight_decay=config.weight_decay,
        desc="lr-find cnn",
        rule=rule,
    )


def train_cnn(config: ImageConfig) -> Path:
    """Train (at each of `sizes` in turn), evaluate on the held-out split, archive; returns
    the .mar path. The archive's input size is the last size trained at."""
    torch.manual_seed(config.seed)
    sizes = config.sizes or (SIZE,)
    epochs = epoch_split(config.epochs, sizes)
    stage = load_stage(config, sizes[0])
    model = new_model(config, len(stage.train.classes))
    generator = torch.Generator().manual_seed(config.seed)
    lr, lr_rule = config.lr, "given"
    if config.lr_auto:
        found = find_lr(config, model, stage)
        print(found.describe())
        lr, lr_rule = found.suggestion, f"lr-find: {found.rule}"
    for i, (size, size_epochs) in enumerate(zip(sizes, epochs, strict=True)):
        if i > 0:
            stage = load_stage(config, size)
        batches, steps = stage.batches(config.batch_size, generator)
        fit_one_cycle(
            model,
            batches,
            steps,
            size_epochs,
            F.cross_entropy,
            lr=lr,
            weight_decay=config.weight_decay,
            desc=f"training {config.name}" + (f" at {size}px" if len(sizes) > 1 else ""),
        )
    train, test, source, size = stage.train, stage.test, stage.source, stage.size
    mean, std = stage.mean, stage.std
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
        "input": {"size": [size, size], "mean": mean.tolist(), "std": std.tolist()},
        "explain": {"layer": layer_name, "tail": "classify"},
        "evaluation": evaluation,
        "data": source,
        "training": {
            "epochs": config.epochs,
            "lr": lr,
            "lr_rule": lr_rule,
            "sizes": list(sizes),
            "epochs_per_size": epochs,
            "batch_size": config.batch_size,
            "weight_decay": config.weight_decay,
            "optimizer": "AdamW",
            "schedule": "one-cycle" + (" per size" if len(sizes) > 1 else ""),
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
        full = full_size(maps, test.images.shape[1])
        result["pointing_game_activation"] = pointing_game(full, test.boxes)
    return result


def format_evaluation(evaluation: dict[str, Any]) -> str:
    lines = [f"held-out accuracy: {evaluation['test_accuracy']:.2%} (n={evaluation['n_test']})"]
    if "pointing_game_activation" in evaluation:
        lines.append(f"pointing game (activation): {evaluation['pointing_game_activation']:.2%}")
    return "\n".join(lines)
