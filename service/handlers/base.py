"""What every glimpse handler shares: rebuild the model from the archive alone.

TorchServe calls `initialize(context)` once and `handle(data, context)` per
batch; glimpse's runtime calls the same two methods (with a context of the
same shape) plus the richer `explain` API. BaseHandler's own loader cannot
rebuild a model from architecture arguments, so this one does: import the
architecture file shipped in the archive, build the class named in
metadata.json with its arguments, then `load_state_dict(weights_only=True)`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"


def import_file(path: Path, prefix: str) -> ModuleType:
    """Import a file shipped in an archive under a unique module name (`prefix_<stem>_<id>`),
    so two archives' `model.py` or handler files never shadow each other."""
    module_name = f"{prefix}_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return module


def load_architecture(model_dir: Path, architecture: dict[str, Any]) -> nn.Module:
    """Import `architecture["file"]` from `model_dir`; build its class with its arguments."""
    module = import_file(model_dir / architecture["file"], "glimpse_arch")
    model_class = getattr(module, architecture["class"])
    model: nn.Module = model_class(**architecture.get("args", {}))
    return model


class GlimpseHandler:
    """Loads `metadata.json`, the architecture file and the state_dict from an unpacked archive."""

    kind = "base"
    default_method = ""  # the explanation method used when a request names none

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.metadata: dict[str, Any] = {}
        self.model_dir = Path(".")
        self.initialized = False

    def initialize(self, context: Any) -> None:
        self.model_dir = Path(context.system_properties["model_dir"])
        self.metadata = json.loads((self.model_dir / METADATA_FILE).read_text())
        version = self.metadata.get("format_version")
        if version != FORMAT_VERSION:
            raise RuntimeError(
                f"archive format version {version} is not {FORMAT_VERSION}; rebuild the archive "
                "with this version of glimpse (python -m training ...)"
            )
        serialized = context.manifest["model"]["serializedFile"]
        model = load_architecture(self.model_dir, self.metadata["architecture"])
        state = torch.load(self.model_dir / serialized, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        self.model = model.eval()
        self.setup()
        self.initialized = True

    def setup(self) -> None:
        """Subclasses read their part of the metadata here."""

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What `GET /models/{name}` shows about this model besides its name."""
        return {"kind": self.kind}


def request_payload(item: dict[str, Any]) -> Any:
    """TorchServe puts a multipart field `data` under "data" and a raw body under "body"."""
    payload = item.get("data")
    if payload is None:
        payload = item.get("body")
    if isinstance(payload, bytearray):
        payload = bytes(payload)
    return payload
