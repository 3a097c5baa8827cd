"""What every glimpse handler shares: rebuild the model from the archive alone.

TorchServe calls `initialize(context)` once and `handle(data, context)` per
batch (answered through the model's flow, service.torchserve); glimpse's runtime
calls `initialize` with a context of the same shape and then uses the flows.
BaseHandler's own loader cannot rebuild a model from architecture arguments,
so this one does: import the architecture file shipped in the archive, build
the class named in metadata.json with its arguments, then
`load_state_dict(weights_only=True)`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

# 2 added `input.resize`/`input.crop` (TorchServe's preprocessing) and TorchScript models; a
# version-1 archive means the same under version 2, so both are read.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# torch 2.13 marks every torch.jit entry point deprecated; loading a user's file is still right.
JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"
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


def load_torchscript(path: Path) -> nn.Module:
    """A TorchScript file, on the CPU."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", JIT_DEPRECATED, DeprecationWarning)
        model: nn.Module = torch.jit.load(str(path), map_location="cpu")
    return model


class HandlerContext(Protocol):
    """The parts of TorchServe's `Context` a handler reads (glimpse's runtime passes its own)."""

    @property
    def manifest(self) -> dict[str, Any]: ...

    @property
    def system_properties(self) -> dict[str, Any]: ...


class GlimpseHandler:
    """Loads `metadata.json`, the architecture file and the state_dict from an unpacked archive.

    Subclasses name their `kind` (the explanation registry's key) and `default_method`, and
    read their part of the metadata in `setup`. Limits reach them as `system_properties`
    of the context (glimpse's runtime sets them; TorchServe leaves the defaults).
    """

    kind: ClassVar[str] = "base"
    default_method: ClassVar[str] = ""  # the explanation method used when a request names none

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.metadata: dict[str, Any] = {}
        self.properties: dict[str, Any] = {}
        self.model_dir = Path(".")
        self.initialized = False

    def initialize(self, context: HandlerContext) -> None:
        self.properties = dict(context.system_properties)
        self.model_dir = Path(context.system_properties["model_dir"])
        self.metadata = self.read_metadata(context)
        self.model = self.load_model(context).eval()
        self.setup()
        self.initialized = True

    def read_metadata(self, context: HandlerContext) -> dict[str, Any]:
        """The archive's metadata.json, refused when its format is not this glimpse's."""
        metadata: dict[str, Any] = json.loads((self.model_dir / METADATA_FILE).read_text())
        version = metadata.get("format_version")
        if version not in READABLE_VERSIONS:
            raise RuntimeError(
                f"archive format version {version} is not one of {READABLE_VERSIONS}; rebuild it "
                "with this version of glimpse (python -m training ...)"
            )
        return metadata

    def load_model(self, context: HandlerContext) -> nn.Module:
        """TorchScript when the metadata says so; else the architecture rebuilt from its
        arguments, then the state_dict (weights only)."""
        serialized = self.model_dir / context.manifest["model"]["serializedFile"]
        architecture = self.metadata["architecture"]
        if architecture.get("torchscript"):
            return load_torchscript(serialized)
        model = load_architecture(self.model_dir, architecture)
        model.load_state_dict(torch.load(serialized, map_location="cpu", weights_only=True))
        return model

    def setup(self) -> None:
        """Subclasses read their part of the metadata here."""

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """TorchServe's entry point: one answer per request of the batch `data`, predictions
        and (on TorchServe's `/explanations` route) explanations, through the model's flow
        (service.torchserve). A failed request's answer is its error object."""
        from service.torchserve import door_for  # it imports the flows, which import handlers

        return door_for(self, context).handle(data, context)

    def describe(self) -> dict[str, Any]:
        """What `GET /models/{name}` shows about this model besides its name."""
        return {"kind": self.kind}
