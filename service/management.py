"""Register and unregister models while the server runs, in TorchServe's management shape.

Off unless `--enable-management` (Settings.enable_management). `url` names a `.mar` file
directly inside the model store and nothing else: no scheme, no directory, no `..`.
TorchServe's management API fetching arbitrary URLs is how ShellTorch took servers over;
this one can only pick among archives the operator already put in the store.

    POST   /models?url=cnn.mar   -> {"status": "Model \"cnn\" Version: 1.0 registered ..."}
    DELETE /models/cnn           -> {"status": "Model \"cnn\" unregistered"} (after in-flight)
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from fastapi import FastAPI

from service.archive import UnservableArchive
from service.config import Settings
from service.errors import BadInput, Conflict, ModelNotFound
from service.runtime import DuplicateModel, Runtime

ARCHIVE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.mar")


def add_management_routes(app: FastAPI, settings: Settings, runtime: Runtime) -> None:
    """`POST /models` and `DELETE /models/{name}` on `app`."""

    @app.post("/models")
    async def register(url: str = "") -> dict[str, str]:
        """Serve `url`, the file name of a .mar archive in the model store."""
        path = store_file(settings.model_store, url)
        try:
            model = await asyncio.to_thread(runtime.add, path)
        except DuplicateModel as exc:
            raise Conflict(str(exc)) from None
        except (UnservableArchive, ValueError, KeyError, RuntimeError, OSError) as exc:
            raise BadInput(f"{url} cannot be served: {' '.join(str(exc).split())}") from None
        version = model.archive.manifest["model"].get("modelVersion", "1.0")
        return {"status": f'Model "{model.name}" Version: {version} registered with 1 worker'}

    @app.delete("/models/{name}")
    async def unregister(name: str) -> dict[str, str]:
        """Stop serving `name` once the requests already queued for it have finished."""
        await runtime.remove(name)
        return {"status": f'Model "{name}" unregistered'}


def store_file(store: Path, url: str) -> Path:
    """The archive `url` names inside `store`; BadInput for anything but a plain file name of
    a .mar there, ModelNotFound when no such file exists."""
    if not ARCHIVE_NAME.fullmatch(url) or ".." in url:
        raise BadInput(
            f"url must be the file name of a .mar archive in the model store, such as "
            f"cnn.mar (no URL, no directory), got {url!r}"
        )
    path = (store / url).resolve()
    if path.parent != store.resolve() or not path.is_file():
        raise ModelNotFound(f"the model store {store} has no archive {url!r}")
    return path
