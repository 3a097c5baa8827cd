"""cnn.mar is self-describing: serving rebuilds the model from the archive alone."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import torch

from service.archive import open_archive
from service.handlers.base import FORMAT_VERSION

SERVICE = Path(__file__).resolve().parent.parent / "service"


def test_archive_contents(cnn_archive: Path) -> None:
    with zipfile.ZipFile(cnn_archive) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        metadata = json.loads(archive.read("metadata.json"))
        index_to_name = json.loads(archive.read("index_to_name.json"))
    assert {
        "cnn.py",
        "cnn.pt",
        "metadata.json",
        "index_to_name.json",
        "glimpse_image_handler.py",
    } <= names
    assert manifest["model"]["handler"] == "glimpse_image_handler.py"
    assert manifest["model"]["serializedFile"] == "cnn.pt"
    assert metadata["format_version"] == FORMAT_VERSION and metadata["kind"] == "image"
    assert metadata["architecture"] == {
        "file": "cnn.py",
        "class": "SmallResNet",
        "args": {"num_classes": 4, "widths": [16, 32, 64, 96], "strides": [2, 2, 1]},
    }
    assert metadata["classes"] == ["circle", "square", "triangle", "cross"]
    assert index_to_name == {str(i): c for i, c in enumerate(metadata["classes"])}
    assert metadata["input"]["size"] == [48, 48] and len(metadata["input"]["mean"]) == 3
    assert {"test_accuracy", "pointing_game_activation"} <= set(metadata["evaluation"])
    assert metadata["data"]["dataset"] == "generated shapes"


def test_weights_are_a_plain_state_dict(cnn_archive: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(cnn_archive) as archive:
        archive.extract("cnn.pt", tmp_path)
    state = torch.load(tmp_path / "cnn.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert "head.weight" in state


def test_serving_rebuilds_the_model_from_the_archive(cnn_archive: Path, tmp_path: Path) -> None:
    opened = open_archive(cnn_archive, tmp_path)
    model = opened.handler.model
    assert model is not None and type(model).__module__.startswith("glimpse_arch_cnn")
    assert not model.training
    logits = model(torch.zeros(2, 3, 48, 48))
    assert logits.shape == (2, 4)


def test_service_never_imports_training() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+training\b", re.MULTILINE)
    offenders = [str(p) for p in SERVICE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
