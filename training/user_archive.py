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
import pickle
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from service.handlers import base as handlers_base
from service.handlers.base import import_file
from service.imaging import decode_image
from service.layers import (
    NO_SPATIAL_REASON,
    SCRIPT_MODULE_REASON,
    LayerInfo,
    pick_layer,
    spatial_layers,
)
from service.preprocess import (
    DEFAULT_CROP,
    DEFAULT_RESIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
)
from training.archive import write_archive

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")  # torch-model-archiver's rule
SHOWN = 5  # names listed in an error before "and N more"
TOP_K = 5


class ArchiveError(Exception):
    """Why the model cannot be archived, as one line for the user."""


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
    index_to_name = {str(i): c for i, c in enumerate(classes)}
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
            extra_files={"index_to_name.json": json.dumps(index_to_name, indent=2)},
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        raise ArchiveError(f"torch-model-archiver failed: {exc}") from None
    print(f"wrote {path}")
    return path


def load_torchscript(path: Path) -> nn.Module:
    try:
        model = handlers_base.load_torchscript(path)
    except Exception as exc:
        raise ArchiveError(
            f"cannot load {path} as TorchScript (a file from torch.jit.save): {_describe(exc)}"
        ) from None
    return model.eval()


def load_eager(
    model_file: Path, class_name: str | None, args: dict[str, Any], weights: Path
) -> tuple[nn.Module, str]:
    """Import the file, build its class with `args`, load the state_dict strictly."""
    _must_exist(weights, "--weights")
    try:
        module = import_file(model_file, "glimpse_user")
    except Exception as exc:
        raise ArchiveError(f"cannot import {model_file}: {_describe(exc)}") from None
    defined = [
        obj.__name__
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, nn.Module)
        and obj.__module__ == module.__name__
    ]
    if class_name is None:
        if len(defined) != 1:
            found = ", ".join(defined) if defined else "none"
            raise ArchiveError(
                f"{model_file.name} defines {len(defined)} nn.Module classes ({found}); "
                "name the model's class with --class"
            )
        class_name = defined[0]
    model_class = getattr(module, class_name, None)
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)):
        raise ArchiveError(
            f"{model_file.name} has no nn.Module class {class_name!r}; it defines "
            f"{', '.join(defined) or 'none'}"
        )
    try:
        model = model_class(**args)
    except Exception as exc:
        raise ArchiveError(
            f"cannot build {class_name}(**{json.dumps(args)}): {_describe(exc)}"
        ) from None
    load_weights(model, class_name, weights)
    return model.eval(), class_name


def load_weights(model: nn.Module, class_name: str, weights: Path) -> None:
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a page long; its last part says what was refused
        found = re.search(
            r"WeightsUnpickler error:\s*(.*?)(\.\s|\s+Check the documentation|$)",
            str(exc),
            re.DOTALL,
        )
        reason = _one_line(found.group(1)) if found else type(exc).__name__
        raise ArchiveError(
            f"torch.load(weights_only=True) refuses {weights.name} ({reason}); --weights must "
            "be a state_dict saved with torch.save(model.state_dict(), path), not a whole model"
        ) from None
    except Exception as exc:
        raise ArchiveError(f"cannot read {weights} as a state_dict: {_describe(exc)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = [str(k) for k in state] if isinstance(state, dict) else []
        nested = [
            k for k in keys if isinstance(state[k], dict) and k in ("state_dict", "model", "net")
        ]
        hint = (
            f"; the state_dict may be under {nested[0]!r}: save that on its own"
            if nested
            else "; save torch.save(model.state_dict(), path)"
        )
        raise ArchiveError(
            f"{weights.name} holds a {type(state).__name__}"
            + (f" with keys {_listing(keys)}" if keys else "")
            + ", not a state_dict of tensors"
            + hint
        )
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if unexpected and all(k.startswith("module.") for k in unexpected):
        problems.append("(saved from DataParallel? strip the 'module.' prefix)")
    shapes = [
        f"{k} is {list(state[k].shape)} in the weights but {list(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"shape mismatch: {_listing(shapes)}")
    if problems:
        raise ArchiveError(
            f"the weights in {weights.name} do not fit {class_name}: " + "; ".join(problems)
        )
    try:
        model.load_state_dict(state)
    except Exception as exc:
        raise ArchiveError(
            f"cannot load {weights.name} into {class_name}: {_describe(exc)}"
        ) from None


def trial_forward(model: nn.Module, example: torch.Tensor) -> int:
    """Run `example` through the model; the number of classes it scores."""
    try:
        with torch.no_grad():
            output = model(example)
    except Exception as exc:
        raise ArchiveError(
            f"the trial forward pass on a {list(example.shape)} input failed: {_describe(exc)}"
        ) from None
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != len(example):
        shown = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ArchiveError(
            f"the model returns {shown} for a {list(example.shape)} input; an image classifier "
            f"returns logits [{len(example)}, classes]"
        )
    return int(output.shape[1])


def read_classes(path: Path | None, n_outputs: int) -> list[str]:
    """Class names by index from index_to_name.json or a text file; numbered without a file.

    JSON is read the way TorchServe's load_label_mapping reads it: {"0": "cat", ...},
    a list value stands for its last element ({"0": ["n01440764", "tench"]} -> "tench"),
    and {"object_type_names": [...]} is a list of names; a plain JSON list is accepted too.
    A text file has one class per line; blank lines are skipped.
    """
    if path is None:
        return [str(i) for i in range(n_outputs)]
    _must_exist(path, "--classes")
    text = path.read_text()
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("{", "["):
        classes = _json_classes(path, text)
    else:
        classes = [line.strip() for line in text.splitlines() if line.strip()]
    if len(classes) != n_outputs:
        raise ArchiveError(
            f"{path.name} names {len(classes)} classes but the model outputs {n_outputs} scores"
        )
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        print(
            f"note: class names repeat ({_listing(duplicates)}); responses are keyed by name, "
            "so their scores share one key (as in TorchServe)"
        )
    return classes


def _json_classes(path: Path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArchiveError(f"{path.name} is not JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("object_type_names"), list):
        data = data["object_type_names"]
    if isinstance(data, list):
        data = {str(i): v for i, v in enumerate(data)}
    if not isinstance(data, dict):
        raise ArchiveError(f'{path.name} must map indices to names: {{"0": "cat", ...}}')
    names: dict[int, str] = {}
    for key, value in data.items():
        if not str(key).isdigit():
            raise ArchiveError(f"{path.name}: key {key!r} is not a class index")
        if isinstance(value, list) and value:
            value = value[-1]  # TorchServe keeps the last element of a list
        if not isinstance(value, str):
            raise ArchiveError(f"{path.name}: class {key} must be a name or a list of names")
        names[int(key)] = value
    gaps = [str(i) for i in range(len(names)) if i not in names]
    if gaps:
        raise ArchiveError(f"{path.name} has no name for index {_listing(gaps)}")
    return [names[i] for i in range(len(names))]


def choose_layer(model: nn.Module, example: torch.Tensor, wanted: str) -> dict[str, Any]:
    """The `explain` metadata: the layer named, or the automatic choice, or null and why."""
    if isinstance(model, torch.jit.ScriptModule):
        if wanted != "auto":
            raise ArchiveError(f"--layer {wanted}: {SCRIPT_MODULE_REASON}")
        print(f"layer: none ({SCRIPT_MODULE_REASON})")
        return {"layer": None, "reason": SCRIPT_MODULE_REASON}
    layers = spatial_layers(model, example[:1])
    if wanted == "auto":
        if not layers:
            print(f"layer: none ({NO_SPATIAL_REASON})")
            return {"layer": None, "reason": NO_SPATIAL_REASON}
        chosen = pick_layer(layers)
        print(
            f"layer: {chosen.name} {list(chosen.shape)} {chosen.type} (auto: the last spatial map)"
        )
    else:
        by_name = {layer.name: layer for layer in layers}
        if wanted not in by_name:
            exists = wanted in dict(model.named_modules())
            why = (
                "does not output a 4-D [N, C, h, w] map with h * w > 1 in the trial pass"
                if exists
                else "is not a module of the model"
            )
            raise ArchiveError(f"--layer {wanted} {why}; layers that do: {_layer_listing(layers)}")
        chosen = by_name[wanted]
        print(f"layer: {chosen.name} {list(chosen.shape)} {chosen.type}")
    if chosen.calls > 1:
        print(f"note: {chosen.name} runs {chosen.calls} times per forward; its last output is used")
    return {"layer": chosen.name}


def check_image(
    model: nn.Module, transform: ImageTransform, path: Path, classes: list[str]
) -> None:
    """Classify one image through the archive's preprocessing and print the top classes."""
    _must_exist(path, "--check-image")
    try:
        image = decode_image(path.read_bytes())
    except Exception as exc:
        raise ArchiveError(f"cannot read --check-image {path}: {_describe(exc)}") from None
    with torch.no_grad():
        probabilities = torch.softmax(model(transform([image])), dim=1)[0]
    values, indices = probabilities.topk(min(TOP_K, len(classes)))
    top = ", ".join(
        f"{classes[int(i)]} {float(v):.3f}" for v, i in zip(values, indices, strict=True)
    )
    print(f"check {path.name} ({image.width}x{image.height}): {top}")


# -- helpers ------------------------------------------------------------------------------------
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


def _layer_listing(layers: list[LayerInfo]) -> str:
    if not layers:
        return f"none ({NO_SPATIAL_REASON})"
    shown = [str(layer) for layer in layers[-SHOWN:]]
    more = len(layers) - len(shown)
    return ", ".join(shown) + (f" (and {more} earlier)" if more else "")


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    more = len(items) - SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _parameters(model: nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()):,}"


def _must_exist(path: Path, option: str) -> None:
    if not path.is_file():
        raise ArchiveError(f"{option} {path}: no such file")


def _describe(exc: BaseException, limit: int = 300) -> str:
    text = _one_line(str(exc))
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return f"{type(exc).__name__}: {text}"


def _one_line(text: str) -> str:
    """Whitespace collapsed, terminal colour codes dropped."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


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
