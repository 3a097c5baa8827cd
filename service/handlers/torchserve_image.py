"""Archives made for TorchServe's built-in `image_classifier`, served as they are.

Such an archive holds a model file that defines one nn.Module class (built with no
arguments) and a state_dict, or a TorchScript file alone, plus an optional
`index_to_name.json`, and no glimpse metadata. This handler reads them the way
TorchServe's BaseHandler and ImageClassifier do (ts/torch_handler/base_handler.py,
image_classifier.py, ts/utils/util.py) and describes them with the metadata glimpse's
own image handler reads: TorchServe's preprocessing (Resize 256, CenterCrop 224,
ImageNet mean and std), the class names, and the explanation layer found by a trial
forward pass.

Example: ``handler = TorchServeImageHandler(); handler.initialize(context)``
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.handlers.base import FORMAT_VERSION, HandlerContext, import_file, load_torchscript
from service.handlers.image import ImageHandler
from service.preprocess import ImageTransform

LABELS_FILE = "index_to_name.json"


class TorchServeImageHandler(ImageHandler):
    """glimpse's image handler over a TorchServe `image_classifier` archive."""

    def read_metadata(self, context: HandlerContext) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "name": context.manifest["model"].get("modelName", ""),
            "classes": read_labels(self.model_dir / LABELS_FILE),
            "input": ImageTransform.torchserve().to_metadata(),
            "explain": {"layer": "auto"},
            "source": {"handler": "image_classifier", "engine": "torchserve archive"},
        }

    def load_model(self, context: HandlerContext) -> nn.Module:
        model = context.manifest["model"]
        serialized = self.model_dir / model["serializedFile"]
        if not model.get("modelFile"):
            return load_torchscript(serialized)
        network = one_module_class(self.model_dir / model["modelFile"])()
        network.load_state_dict(torch.load(serialized, map_location="cpu", weights_only=True))
        return network


def one_module_class(model_file: Path) -> type[nn.Module]:
    """The one nn.Module class `model_file` defines, as BaseHandler demands."""
    try:
        module = import_file(model_file, "torchserve_model")
    except Exception as exc:  # noqa: BLE001 - the user's file and whatever it imports
        raise ValueError(f"its model file {model_file.name} does not import: {exc!r}") from None
    classes = [
        value
        for _, value in inspect.getmembers(module, inspect.isclass)
        if issubclass(value, nn.Module) and value.__module__ == module.__name__
    ]
    if len(classes) != 1:
        names = [c.__name__ for c in classes]
        raise ValueError(f"{model_file.name} must define exactly one nn.Module class, not {names}")
    return classes[0]


def read_labels(path: Path) -> list[str] | None:
    """Class names by index from TorchServe's index_to_name.json ({"0": "cat"}; a list value
    shows its last item; {"object_type_names": [...]} too); None when the file is missing."""
    if not path.is_file():
        return None
    mapping = json.loads(path.read_text())
    if isinstance(mapping, dict) and isinstance(mapping.get("object_type_names"), list):
        mapping = dict(enumerate(mapping["object_type_names"]))
    if not isinstance(mapping, dict):
        raise ValueError(f'{path.name} must map "index" to "label"')
    labels = {int(k): (v[-1] if isinstance(v, list) else v) for k, v in mapping.items()}
    return [str(labels.get(i, i)) for i in range(max(labels) + 1)] if labels else []
