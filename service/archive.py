"""Open a `.mar` the way TorchServe does: unpack it, import its handler, initialize it.

Example: ``handler = open_archive(Path("model_store/cnn.mar"), workdir).handler``
"""

from __future__ import annotations

import inspect
import json
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.handlers.base import GlimpseHandler, import_file


@dataclass
class Context:
    """The parts of TorchServe's `Context` that glimpse handlers read."""

    model_name: str
    model_dir: str
    manifest: dict[str, Any]
    system_properties: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.system_properties = {
            "model_dir": self.model_dir,
            "gpu_id": None,
            "batch_size": 1,
            **self.system_properties,
        }


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
    module = import_file(handler_file, "glimpse_handler")
    classes = [
        c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__
    ]
    if len(classes) != 1:
        raise ValueError(f"{handler_file} must define exactly one class, found {classes}")
    handler = classes[0]()
    if not isinstance(handler, GlimpseHandler):
        raise ValueError(f"{handler_file} does not define a glimpse handler")
    return handler
