"""A user's image classifier, loaded and checked before it is archived.

Eager models are imported from their file and built from their class and arguments, then
the state_dict must fit key by key and shape by shape; TorchScript files are loaded as
they are. A trial forward pass gives the output size, the class names must match it, and
the explanation layer must exist and output a spatial map. Every failure is an
`ArchiveError` whose message is one line naming what does not fit.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    ImageTransform,
)

SHOWN = 5  # names listed in an error before "and N more"


TOP_K = 5  # classes shown for the check image


class ArchiveError(Exception):
    """Why the model cannot be archived, as one line for the user."""


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
