"""Write a TorchServe `.mar` with the real torch-model-archiver.

The archive is the only contract between training and serving. It holds the
architecture file and the weights as a state_dict (or one TorchScript file), the
handler entry point, and metadata.json (format version, architecture arguments,
everything needed to preprocess inputs and name outputs, evaluation figures, data
provenance).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from service.handlers.base import FORMAT_VERSION

# The handler entry points ship as package data of service.entrypoints, so a wheel has them too.
HANDLERS = {
    "image": "glimpse_image_handler.py",
    "tabular": "glimpse_tabular_handler.py",
}


def write_archive(
    *,
    name: str,
    kind: str,
    model: torch.nn.Module,
    metadata: dict[str, Any],
    out_dir: Path,
    architecture_file: Path | None = None,
    architecture_args: dict[str, Any] | None = None,
    architecture_class: str | None = None,
    torchscript_file: Path | None = None,
    version: str = "1.0",
) -> Path:
    """Archive `model` as `out_dir/<name>.mar` and return its path.

    An eager model travels as `architecture_file` (its class, `architecture_class` or
    the model's class name, is built with `architecture_args`) plus its state_dict.
    A TorchScript model (a `torch.jit.ScriptModule`) travels as the TorchScript file
    itself, `torchscript_file` copied as is when given, else `torch.jit.save(model)`;
    its architecture is ``{"torchscript": true}`` and torch-model-archiver gets no
    `--model-file`, so TorchServe's own handlers would load it with `torch.jit.load` too.
    The serialized file is `<name>.pt` either way.

    `metadata` is merged under the fixed keys (format_version, kind, architecture). When it
    names `classes`, the archive also carries TorchServe's `index_to_name.json` built from them.
    """
    torchscript = isinstance(model, torch.jit.ScriptModule)
    if not torchscript and architecture_file is None:
        raise ValueError("an eager model needs its architecture_file")
    out_dir.mkdir(parents=True, exist_ok=True)
    entrypoint = resources.files("service.entrypoints") / HANDLERS[kind]
    with tempfile.TemporaryDirectory() as tmp, resources.as_file(entrypoint) as handler:
        staging = Path(tmp)
        weights = staging / f"{name}.pt"
        architecture: dict[str, Any]
        if torchscript:
            if torchscript_file is not None:
                shutil.copyfile(torchscript_file, weights)
            else:
                with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit; it still works
                    warnings.filterwarnings("ignore", r"`torch\.jit\.save`", DeprecationWarning)
                    torch.jit.save(model, str(weights))
            architecture = {"torchscript": True}
        else:
            assert architecture_file is not None
            torch.save(model.state_dict(), weights)
            architecture = {
                "file": architecture_file.name,
                "class": architecture_class or type(model).__name__,
                "args": architecture_args or {},
            }
        full = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "kind": kind,
            "architecture": architecture,
            **metadata,
        }
        files = {"metadata.json": json.dumps(full, indent=2)}
        if "classes" in metadata:
            names = {str(i): c for i, c in enumerate(metadata["classes"])}
            files["index_to_name.json"] = json.dumps(names, indent=2)
        for file_name, text in files.items():
            (staging / file_name).write_text(text)
        command = [
            _archiver(),
            "--model-name",
            name,
            "--version",
            version,
            *([] if torchscript else ["--model-file", str(architecture_file)]),
            "--serialized-file",
            str(weights),
            "--handler",
            str(handler),
            "--extra-files",
            ",".join(str(staging / f) for f in files),
            "--export-path",
            str(out_dir),
            "--force",
        ]
        # torch-model-archiver stages files in $TMPDIR/<model name>: give each build its own.
        subprocess.run(command, check=True, env={**os.environ, "TMPDIR": tmp})
    return out_dir / f"{name}.mar"


def _archiver() -> str:
    """The torch-model-archiver installed beside this Python (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "torch-model-archiver"
    found = str(beside) if beside.exists() else shutil.which("torch-model-archiver")
    if found is None:
        raise RuntimeError("torch-model-archiver is missing: pip install torch-model-archiver")
    return found
