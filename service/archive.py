"""Open a `.mar` the way TorchServe does: unpack it, import its handler, initialize it.

Example: ``handler = open_archive(Path("model_store/cnn.mar"), workdir).handler``
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.handlers.base import GlimpseHandler


@dataclass
class Context:
    """The parts of TorchServe's `Context` that glimpse handlers read."""

    model_name: str
    model_dir: str
    manifest: dict[str, Any]
    system_properties: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.system_properties = {"model_dir": self.model_dir, "gpu_id": None,
                                  "batch_size": 1, **self.system_properties}  # fmt: skip


@dataclass
class OpenedArchive:
    name: str
    path: Path
    model_dir: Path
    manifest: dict[str, Any]
    handler: GlimpseHandler
    context: Context


def open_archive(path: Path, workdir: Path) -> OpenedArchive:
    """Unpack `path` under `workdir`, import the handler file it names, initialize it."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .mar archive (a zip file from torch-model-archiver)")
    model_dir = Path(workdir) / f"{path.stem}-{uuid.uuid4().hex[:8]}"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(model_dir)
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    name = manifest["model"]["modelName"]
    handler = _instantiate(model_dir / manifest["model"]["handler"])
    context = Context(model_name=name, model_dir=str(model_dir), manifest=manifest)
    handler.initialize(context)
    return OpenedArchive(name, path, model_dir, manifest, handler, context)


def _instantiate(handler_file: Path) -> GlimpseHandler:
    """Import the handler by path and build the one class it defines, as TorchServe does."""
    module_name = f"glimpse_handler_{handler_file.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, handler_file)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import the handler {handler_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if c.__module__ == module_name]  # fmt: skip
    if len(classes) != 1:
        raise ValueError(f"{handler_file} must define exactly one class, found {classes}")
    handler = classes[0]()
    if not isinstance(handler, GlimpseHandler):
        raise ValueError(f"{handler_file} does not define a glimpse handler")
    return handler
