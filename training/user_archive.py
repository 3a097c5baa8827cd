"""`python -m training archive`: pack a user's trained image classifier as a glimpse `.mar`.

No retraining: the model comes either as a Python file plus a state_dict
(`--model-file model.py [--class Net] [--args JSON] --weights w.pth`) or as one
TorchScript file (`--torchscript model.pt`). Everything is checked before the
archive is written: the file imports, the weights fit the class key by key and
shape by shape, a trial forward pass on a crop-sized input gives [N, classes]
logits, the class names match that count, and the explanation layer exists and
outputs a spatial map. Any failure is one line on stderr, ``archive: ...``, and
exit code 2.

Preprocessing is TorchServe's image_classifier pipeline (Resize, CenterCrop,
ToTensor, Normalize; see service.preprocess.ImageTransform), ImageNet's by default.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from service.preprocess import (
    DEFAULT_CROP,
    DEFAULT_RESIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
)
from training.archive import write_archive
from training.user_model import (
    ArchiveError,
    _listing,
    _must_exist,
    _one_line,
    _parameters,
    check_image,
    choose_layer,
    load_eager,
    load_torchscript,
    read_classes,
    trial_forward,
)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")  # torch-model-archiver's rule


@dataclass
class UserArchiveConfig:
    """What `python -m training archive` packs; exactly one of model_file / torchscript."""

    model_file: Path | None = None
    weights: Path | None = None
    class_name: str | None = None
    args: dict[str, Any] | None = None
    torchscript: Path | None = None
    classes: Path | None = None
    transform: ImageTransform = ImageTransform.torchserve()
    name: str | None = None
    out: Path = Path("model_store")
    layer: str = "auto"
    check_image: Path | None = None


# -- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model-file",
        type=Path,
        metavar="FILE.py",
        help="Python file defining the nn.Module class",
    )
    source.add_argument(
        "--torchscript", type=Path, metavar="FILE", help="TorchScript file (torch.jit.save)"
    )
    parser.add_argument(
        "--class", dest="class_name", metavar="NAME", help="the class, if the file defines several"
    )
    parser.add_argument(
        "--args", default="{}", metavar="JSON", help="JSON keyword arguments of the class"
    )
    parser.add_argument(
        "--weights", type=Path, help="state_dict file (torch.save(model.state_dict()))"
    )
    parser.add_argument(
        "--classes", type=Path, help="index_to_name.json or a text file with one class per line"
    )
    parser.add_argument("--resize", default=str(DEFAULT_RESIZE), help="short side before the crop")
    parser.add_argument("--crop", default=str(DEFAULT_CROP), help="centre crop: SIZE or H,W")
    parser.add_argument("--mean", default=_join(IMAGENET_MEAN), help="R,G,B means")
    parser.add_argument("--std", default=_join(IMAGENET_STD), help="R,G,B standard deviations")
    parser.add_argument("--name", help="model name (default: the model file's stem)")
    parser.add_argument(
        "--out", type=Path, default=Path("model_store"), help="directory for the .mar"
    )
    parser.add_argument(
        "--layer",
        default="auto",
        metavar="NAME|auto",
        help="layer to explain: a module name, or auto",
    )
    parser.add_argument(
        "--check-image", type=Path, metavar="IMAGE", help="an image to classify as a check"
    )


def config_from_args(args: argparse.Namespace) -> UserArchiveConfig:
    """Parse the string options; ArchiveError names the one that is wrong."""
    if args.model_file is not None and args.weights is None:
        raise ArchiveError("--model-file needs --weights (the state_dict file)")
    if args.torchscript is not None and (args.weights or args.class_name):
        raise ArchiveError("--torchscript holds its weights and class: drop --weights/--class")
    if args.torchscript is not None and args.args != "{}":
        raise ArchiveError("--torchscript takes no --args")
    try:
        model_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise ArchiveError(f"--args is not JSON ({exc}): {args.args!r}") from None
    if not isinstance(model_args, dict):
        raise ArchiveError(f"--args must be a JSON object of keyword arguments, not {args.args!r}")
    resize = _ints("--resize", args.resize, 1)[0]
    crop = _ints("--crop", args.crop, 2)
    mean = _floats("--mean", args.mean)
    std = _floats("--std", args.std)
    try:
        transform = ImageTransform.torchserve(resize, crop, mean, std)
    except ValueError as exc:
        raise ArchiveError(str(exc)) from None
    return UserArchiveConfig(
        model_file=args.model_file,
        weights=args.weights,
        class_name=args.class_name,
        args=model_args,
        torchscript=args.torchscript,
        classes=args.classes,
        transform=transform,
        name=args.name,
        out=args.out,
        layer=args.layer,
        check_image=args.check_image,
    )


def run(args: argparse.Namespace) -> Path:
    """`python -m training archive`: archive, or one `archive: ...` line and exit code 2."""
    try:
        return archive_user_model(config_from_args(args))
    except ArchiveError as exc:
        fail(str(exc))


def fail(message: str) -> NoReturn:
    print(f"archive: {_one_line(message)}", file=sys.stderr)
    raise SystemExit(2)


# -- the work ---------------------------------------------------------------------------------


def archive_user_model(config: UserArchiveConfig) -> Path:
    """Check everything, then write `<out>/<name>.mar`; ArchiveError on the first problem."""
    source = config.torchscript or config.model_file
    assert source is not None
    _must_exist(source, "--torchscript" if config.torchscript else "--model-file")
    name = config.name or source.stem
    if not NAME_PATTERN.match(name):
        raise ArchiveError(
            f"model name {name!r} is not allowed (letters, digits, _ - . and no leading "
            "punctuation); pass --name"
        )
    transform = config.transform
    class_name: str | None = None
    if config.torchscript is not None:
        model = load_torchscript(config.torchscript)
        print(f"model: TorchScript {config.torchscript.name}, {_parameters(model)} parameters")
    else:
        assert config.model_file is not None and config.weights is not None
        model, class_name = load_eager(
            config.model_file, config.class_name, config.args or {}, config.weights
        )
        print(
            f"model: {class_name}(**{json.dumps(config.args or {})}) from "
            f"{config.model_file.name}, {_parameters(model)} parameters; "
            f"weights {config.weights.name} fit"
        )
    height, width = transform.size
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    n_outputs = trial_forward(model, example)
    print(f"trial forward pass: {list(example.shape)} -> [2, {n_outputs}]")
    classes = read_classes(config.classes, n_outputs)
    print(
        f"classes: {n_outputs}"
        + (f" from {config.classes.name}" if config.classes else " (numbered; no --classes)")
        + f": {_listing(classes)}"
    )
    explain = choose_layer(model, example, config.layer)
    if config.check_image is not None:
        check_image(model, transform, config.check_image, classes)
    metadata = {
        "classes": classes,
        "input": transform.to_metadata(),
        "explain": explain,
        "source": _source(config),
    }
    try:
        path = write_archive(
            name=name,
            kind="image",
            model=model,
            metadata=metadata,
            out_dir=config.out,
            architecture_file=config.model_file,
            architecture_args=config.args or {},
            architecture_class=class_name,
            torchscript_file=config.torchscript,
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        raise ArchiveError(f"torch-model-archiver failed: {exc}") from None
    print(f"wrote {path}")
    return path


def _source(config: UserArchiveConfig) -> dict[str, Any]:
    source: dict[str, Any] = {"command": "archive"}
    files = {
        "model_file": config.model_file,
        "weights": config.weights,
        "torchscript": config.torchscript,
        "classes_file": config.classes,
    }
    for key, path in files.items():
        if path is not None:
            source[key] = path.name
            if key in ("weights", "torchscript"):
                source[f"{key}_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    if config.check_image is not None:
        source["check_image"] = config.check_image.name
    return source


def _ints(option: str, text: str, count: int) -> list[int]:
    """`count` = 2 also accepts one integer, for a square."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if count == 2 and len(values) == 1:
        values = values * 2
    if len(values) != count or any(v < 1 for v in values):
        expected = "a positive integer" if count == 1 else "SIZE or H,W (positive integers)"
        raise ArchiveError(f"{option} must be {expected}, not {text!r}")
    return values


def _floats(option: str, text: str) -> tuple[float, float, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise ArchiveError(f"{option} must be three numbers R,G,B, not {text!r}")
    return values[0], values[1], values[2]


def _join(values: Sequence[float]) -> str:
    return ",".join(str(v) for v in values)
