"""Open a `.mar` the way TorchServe does: unpack it, import its handler, initialize it.

Example: ``handler = open_archive(Path("model_store/cnn.mar"), workdir).handler``
"""

from __future__ import annotations

import inspect
import json
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.handlers.base import GlimpseHandler, import_file
from service.handlers.torchserve_image import TorchServeImageHandler


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


def open_archive(
    path: Path, workdir: Path, properties: dict[str, Any] | None = None
) -> OpenedArchive:
    """Unpack `path` under `workdir`, build the handler its manifest names, initialize it with
    a context whose `system_properties` carry `properties` (limits such as max_image_pixels).
    ValueError (UnservableArchive) for an archive glimpse cannot serve; nothing is left behind."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise UnservableArchive(
            f"{path.name} is not a .mar archive (a zip file from torch-model-archiver)"
        )
    model_dir = Path(workdir) / f"{path.stem}-{uuid.uuid4().hex[:8]}"
    try:
        with zipfile.ZipFile(path) as archive:
            archive.extractall(model_dir)
        manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        name = manifest["model"]["modelName"]
        handler = make_handler(model_dir, manifest["model"].get("handler", ""))
        context = Context(name, str(model_dir), manifest, dict(properties or {}))
        handler.initialize(context)
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise
    return OpenedArchive(name, path, model_dir, manifest, handler, context)


def make_handler(model_dir: Path, handler: str) -> GlimpseHandler:
    """The one place that picks how an archive is served: TorchServe's built-in
    `image_classifier` by glimpse's image handler over the archive as it is; a handler file
    shipped in the archive when it defines a glimpse handler; nothing else."""
    module = handler.split(":")[0]
    if module == "image_classifier":
        return TorchServeImageHandler()
    if module in TORCHSERVE_BUILTINS:
        raise UnservableArchive(
            f"its handler is TorchServe's built-in {module!r}; glimpse serves image_classifier "
            "archives and its own"
        )
    handler_file = model_dir / (module if module.endswith(".py") else f"{module}.py")
    if not handler_file.is_file():
        raise UnservableArchive(f"its handler {handler!r} is neither a built-in nor in the archive")
    return _instantiate(handler_file)


def _instantiate(handler_file: Path) -> GlimpseHandler:
    """Import the handler by path and build the one class it defines, as TorchServe does."""
    try:
        module = import_file(handler_file, "glimpse_handler")
    except Exception as exc:  # noqa: BLE001 - a custom handler's own imports may fail here
        raise UnservableArchive(
            f"its handler {handler_file.name} does not import: {exc!r}"
        ) from None
    classes = [
        c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__
    ]
    if len(classes) != 1 or not issubclass(classes[0], GlimpseHandler):
        raise UnservableArchive(
            f"its handler {handler_file.name} is a custom handler, not a glimpse handler "
            "(glimpse serves its own archives and TorchServe image_classifier archives)"
        )
    return classes[0]()


class UnservableArchive(ValueError):
    """An archive glimpse cannot serve; the message says why."""


# TorchServe's built-in handlers (ts/torch_handler), named in a manifest without a file.
TORCHSERVE_BUILTINS = frozenset(
    {
        "base_handler",
        "image_classifier",
        "image_segmenter",
        "object_detector",
        "text_classifier",
        "text_handler",
        "vision_handler",
        "densenet_handler",
    }
)
