"""`python -m training finetune ARCHIVE --data DIR`: adapt an image archive to new classes.

fastai's `fine_tune`, on a served archive:

1. open ARCHIVE with the handler that serves it, so the images of DIR (ImageFolder-style,
   `DIR/<class>/<image>` or `DIR/train` + `DIR/test`) are preprocessed exactly as
   serving will preprocess them;
2. replace the head (the model's last `nn.Linear`, which must output one logit per class
   of the archive) by a new one with one output per class of DIR;
3. train the head alone for `--frozen-epochs` (body frozen; one-cycle at `--lr`);
4. unfreeze and train everything for `--epochs` with discriminative learning rates:
   `slice(lo, hi)` with hi = lr / 2 and lo = hi / `--lr-mult`, spread geometrically over
   the layer groups (the body split into `groups - 1` contiguous groups by module, the
   head last), so early, generic layers move least;
5. write `<name>.mar` with the same contents as the original (architecture file and
   class, the state_dict, glimpse's image handler, metadata with the new classes, the
   same input preprocessing and explanation layer), so glimpse serves it with heatmaps.

Supported: glimpse's own image archives (`python -m training cnn`, `digits`, an earlier
`finetune`) and eager archives from `python -m training archive` whose class takes a
`num_classes` argument (the new head must be what the class builds for the new count).
Refused, with the reason: TorchScript archives (no class to rebuild with a new head),
TorchServe `image_classifier` archives (no glimpse metadata), tabular archives, classes
without `num_classes`, and models whose last Linear is not the classifier head.

No augmentation here (the user's data may not survive flips); `scratch=True` trains the
same architecture from random weights for frozen-epochs + epochs at `lr`, all layers at
once: the baseline that fine-tuning must beat.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from service.archive import UnservableArchive, open_archive
from service.handlers.base import load_architecture
from service.handlers.image import ImageHandler
from service.handlers.torchserve_image import TorchServeImageHandler
from training.archive import write_archive
from training.imagefolder import load_image_folder
from training.loop import epoch_batches, fit_one_cycle
from training.shapes import ShapesData


class FinetuneError(ValueError):
    """The archive or the data cannot be fine-tuned; the message says why and what to do."""


@dataclass
class FinetuneConfig:
    archive: Path
    data: Path
    name: str | None = None
    out: Path = Path("model_store")
    frozen_epochs: int = 1
    epochs: int = 4
    lr: float = 4e-3
    lr_mult: float = 100.0
    batch_size: int = 32
    weight_decay: float = 5e-4
    groups: int = 3  # layer groups: the body in groups - 1, the head
    seed: int = 0
    scratch: bool = False


def finetune(config: FinetuneConfig) -> Path:
    """Fine-tune (or, with `scratch`, retrain) and archive; returns the new .mar's path."""
    torch.manual_seed(config.seed)
    with tempfile.TemporaryDirectory() as workdir:
        try:
            opened = open_archive(config.archive, Path(workdir))
        except (UnservableArchive, KeyError, ValueError) as exc:
            raise FinetuneError(f"{config.archive} cannot be opened: {exc}") from None
        handler = opened.handler
        metadata_file = opened.model_dir / "metadata.json"
        metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
        architecture = check_supported(handler, metadata, config.archive)
        assert isinstance(handler, ImageHandler)
        model = handler.network
        head_name, head = find_head(model, len(handler.classes))
        train, test = read_data(config.data, handler)
        x_train, x_test = handler.preprocess(images(train)), handler.preprocess(images(test))
        new_head = nn.Linear(head.in_features, len(train.classes))
        set_module(model, head_name, new_head)
        if config.scratch:
            reset(model)
        history = train_head_then_body(model, new_head, x_train, train, config)
        evaluation = evaluate(model, x_test, test)
        print(f"held-out accuracy: {evaluation['test_accuracy']:.2%} (n={len(test)})")
        args = {**architecture.get("args", {}), "num_classes": len(train.classes)}
        check_rebuilds(opened.model_dir, {**architecture, "args": args}, model)
        name = config.name or f"{opened.name}-{config.data.name}"
        kept = {
            k: v
            for k, v in metadata.items()
            if k not in ("format_version", "name", "kind", "architecture")
        }
        kept.update(
            classes=list(train.classes),
            evaluation=evaluation,
            data={
                "dataset": "image folder",
                "path": str(config.data),
                "n_train": len(train),
                "n_test": len(test),
            },
            training={
                "finetuned_from": None if config.scratch else str(config.archive),
                "from_scratch": config.scratch,
                **history,
                "batch_size": config.batch_size,
                "weight_decay": config.weight_decay,
                "optimizer": "AdamW",
                "schedule": "one-cycle per phase",
            },
        )
        return write_archive(
            name=name,
            kind="image",
            model=model,
            architecture_file=opened.model_dir / architecture["file"],
            architecture_args=args,
            architecture_class=architecture["class"],
            metadata=kept,
            out_dir=config.out,
        )


def check_supported(handler: Any, metadata: dict[str, Any], path: Path) -> dict[str, Any]:
    """The archive's eager architecture, or FinetuneError saying why it cannot be fine-tuned."""
    if isinstance(handler, TorchServeImageHandler) or not metadata:
        raise FinetuneError(
            f"{path.name} is a TorchServe image_classifier archive without glimpse metadata; "
            "pack the model with `python -m training archive --model-file ... --weights ...` "
            "first, then fine-tune that archive"
        )
    if not isinstance(handler, ImageHandler):
        raise FinetuneError(f"{path.name} is not an image model: finetune adapts image classifiers")
    architecture: dict[str, Any] = metadata.get("architecture", {})
    if architecture.get("torchscript"):
        raise FinetuneError(
            f"{path.name} holds a TorchScript model: it has no class to rebuild with a new head; "
            "archive the eager model (--model-file, --class, --weights) and fine-tune that"
        )
    if "num_classes" not in architecture.get("args", {}):
        raise FinetuneError(
            f"{path.name}'s class {architecture.get('class')!r} is built without a num_classes "
            f"argument (its arguments: {sorted(architecture.get('args', {}))}); give the class a "
            "num_classes argument that sizes its last Linear layer, archive it with "
            "--args '{\"num_classes\": N}', and fine-tune that"
        )
    return architecture


def find_head(model: nn.Module, n_classes: int) -> tuple[str, nn.Linear]:
    """The model's last nn.Linear, which must output one logit per class."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1][1].out_features != n_classes:
        raise FinetuneError(
            f"the model's last Linear layer is not its classifier head (expected one with "
            f"{n_classes} outputs, found {[(n, m.out_features) for n, m in linears]})"
        )
    return linears[-1]


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def reset(model: nn.Module) -> None:
    """Random weights again (each layer's own initialisation), for the from-scratch baseline."""
    for module in model.modules():
        reset_parameters = getattr(module, "reset_parameters", None)
        if callable(reset_parameters) and module is not model:
            reset_parameters()


def read_data(root: Path, handler: ImageHandler) -> tuple[ShapesData, ShapesData]:
    if not Path(root).is_dir():
        raise FinetuneError(f"--data {root} is not a directory (expected DIR/<class>/<image>)")
    height, width = handler.transform.crop or handler.size
    size = max(height, width) if handler.transform.resize is None else handler.transform.resize
    try:
        train, test = load_image_folder(root, size=size)
    except SystemExit as exc:
        raise FinetuneError(str(exc)) from None
    if len(train.classes) < 2:
        raise FinetuneError(f"{root} has {len(train.classes)} class folder; a classifier needs 2+")
    return train, test


def images(data: ShapesData) -> list[Image.Image]:
    return [Image.fromarray(a) for a in data.images]


def layer_groups(model: nn.Module, head: nn.Module, n_groups: int) -> list[list[nn.Parameter]]:
    """The body's parameters in `n_groups - 1` contiguous groups of whole modules (in
    registration order, input side first), then the head's."""
    head_ids = {id(p) for p in head.parameters()}
    units: dict[str, list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if id(parameter) not in head_ids:
            unit = ".".join(name.split(".")[:-1][:2])
            units.setdefault(unit, []).append(parameter)
    chunks = np.array_split(np.arange(len(units)), max(1, min(n_groups - 1, len(units))))
    values = list(units.values())
    body = [[p for i in chunk for p in values[int(i)]] for chunk in chunks if len(chunk)]
    return [*body, list(head.parameters())]


def spread(lo: float, hi: float, n: int) -> list[float]:
    """`n` rates from lo to hi, geometrically (fastai's even_mults for slice(lo, hi))."""
    if n == 1:
        return [hi]
    step = (hi / lo) ** (1 / (n - 1))
    return [lo * step**i for i in range(n)]


def train_head_then_body(
    model: nn.Module,
    head: nn.Module,
    x: torch.Tensor,
    data: ShapesData,
    config: FinetuneConfig,
) -> dict[str, Any]:
    """Frozen-body epochs then unfrozen discriminative epochs (or, from scratch, one phase)."""
    y = torch.from_numpy(data.labels)
    generator = torch.Generator().manual_seed(config.seed)
    batches, steps = epoch_batches(
        len(y), config.batch_size, generator, lambda index: (x[index], y[index])
    )

    def fit(epochs: int, groups: list[tuple[list[nn.Parameter], float]], desc: str) -> None:
        fit_one_cycle(
            model,
            batches,
            steps,
            epochs,
            F.cross_entropy,
            weight_decay=config.weight_decay,
            desc=desc,
            groups=groups,
        )

    total = config.frozen_epochs + config.epochs
    if config.scratch:
        fit(total, [(list(model.parameters()), config.lr)], "training from scratch")
        return {"epochs": total, "lr": config.lr}
    groups = layer_groups(model, head, config.groups)
    if config.frozen_epochs > 0:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in head.parameters():
            parameter.requires_grad_(True)
        fit(config.frozen_epochs, [(list(head.parameters()), config.lr)], "finetune: head")
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    hi = config.lr / 2
    rates = spread(hi / config.lr_mult, hi, len(groups))
    if config.epochs > 0:
        fit(config.epochs, list(zip(groups, rates, strict=True)), "finetune: all layers")
    return {
        "frozen_epochs": config.frozen_epochs,
        "epochs": config.epochs,
        "lr_frozen": config.lr,
        "lr_groups": rates,
        "groups": len(groups),
    }


def evaluate(model: nn.Module, x: torch.Tensor, data: ShapesData) -> dict[str, Any]:
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in x.split(256)])
    accuracy = float((predictions == torch.from_numpy(data.labels)).float().mean())
    return {"test_accuracy": accuracy, "n_test": len(data)}


def check_rebuilds(model_dir: Path, architecture: dict[str, Any], model: nn.Module) -> None:
    """The archive's class built with the new num_classes must take the new weights as they are."""
    try:
        rebuilt = load_architecture(model_dir, architecture)
        rebuilt.load_state_dict(model.state_dict())
    except Exception as exc:  # noqa: BLE001 - any failure means the archive would not load
        raise FinetuneError(
            f"{architecture['class']}(**{architecture['args']}) does not take the fine-tuned "
            f"weights ({exc}); its num_classes argument must size its last Linear layer"
        ) from None
