"""The course's training habits: lr-find, progressive resizing, finetune, digits, reports.

Everything runs on tiny models and data (a few dozen images, one epoch) so the file stays
well under two minutes on two shared cores; the measured figures live in docs/training.md.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import training.evaluate as evaluate_module
import training.image as image_module
from service.archive import open_archive
from service.handlers.image import ImageHandler
from training.__main__ import main
from training.digits import DigitsConfig, load_digits_data, train_digits
from training.evaluate import evaluate_archive
from training.finetune import FinetuneConfig, FinetuneError, finetune, spread
from training.image import ImageConfig, epoch_split, train_cnn
from training.lr_find import lr_find, plot
from training.reports import FILES

TINY = {"widths": (8, 8, 16, 16), "n_test": 16, "batch_size": 16}

NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.relu(self.conv(x))).mean(dim=(2, 3)))
"""


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cnn.mar trained for one epoch on 64 generated shapes (accuracy is not the point)."""
    store = tmp_path_factory.mktemp("habits_store")
    return train_cnn(ImageConfig(out=store, epochs=1, n_train=64, **TINY))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three digit classes, 16 scans each, as DIR/<class>/<image>.png at 24 pixels."""
    root = tmp_path_factory.mktemp("digit_folder")
    data = load_digits_data(size=24, seed=0)
    for digit in ("3", "5", "8"):
        folder = root / digit
        folder.mkdir()
        chosen = np.flatnonzero(data.train.labels == int(digit))[:16]
        for i in chosen:
            Image.fromarray(data.train.images[i]).save(folder / f"{i}.png")
    return root


def toy_classifier(norm: bool = True) -> tuple[nn.Module, Any]:
    """A small MLP (with BatchNorm buffers, or without: then large rates blow it up) and
    batches(epoch) of a separable 3-class problem, seeded."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=generator) * 3
    labels = torch.randint(0, 3, (512,), generator=generator)
    inputs = centres[labels] + torch.randn(512, 8, generator=generator)
    torch.manual_seed(0)
    middle: nn.Module = nn.BatchNorm1d(16) if norm else nn.Identity()
    model = nn.Sequential(nn.Linear(8, 16), middle, nn.ReLU(), nn.Linear(16, 3))

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, 512, 32):
            yield inputs[i : i + 32], labels[i : i + 32]

    return model, batches


# -- lr-find ---------------------------------------------------------------------------------
def test_lr_find_restores_every_weight_buffer_and_optimizer_tensor() -> None:
    model, batches = toy_classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for inputs, targets in list(batches(0))[:3]:  # optimizer state that is not empty
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    weights = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(optimizer.state_dict())
    seen: list[float] = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(float(m.weight.detach().sum())))
    lr_find(model, batches, F.cross_entropy, optimizer=optimizer, num=40)
    assert len(set(seen)) > 1, "the test must have trained the model while it ran"
    after = model.state_dict()
    assert after.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(after[name], tensor), name
    restored = optimizer.state_dict()
    assert restored["param_groups"] == state["param_groups"]
    assert restored["state"].keys() == state["state"].keys()
    for key, values in state["state"].items():
        for field, tensor in values.items():
            assert torch.equal(torch.as_tensor(restored["state"][key][field]), tensor), field


def test_lr_find_suggests_a_finite_rate_by_a_named_rule_and_plots_it(tmp_path: Path) -> None:
    model, batches = toy_classifier(norm=False)
    result = lr_find(model, batches, F.cross_entropy, num=100)
    assert math.isfinite(result.suggestion) and 1e-7 <= result.suggestion <= 10
    assert result.suggestion == pytest.approx(result.minimum)
    assert "minimum" in result.rule
    assert result.stopped_early and len(result.lrs) < 100  # the loss blew past 4x its minimum
    assert all(b > a for a, b in zip(result.lrs, result.lrs[1:], strict=False))
    path = plot(result, tmp_path / "lr.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100


def test_lr_find_command_writes_the_plot_and_prints_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["lr-find", "tabular", "--num", "30", "--out", str(tmp_path), "--rule", "steepest"])
    out = capsys.readouterr().out
    assert "suggested learning rate" in out and ("steepest" in out or "minimum" in out)
    assert (tmp_path / "lr_find_tabular.png").stat().st_size > 1000


# -- progressive resizing and --lr auto ------------------------------------------------------
def test_epoch_split_is_equal_with_the_remainder_on_the_largest_sizes() -> None:
    assert epoch_split(8, (24, 48)) == [4, 4]
    assert epoch_split(5, (24, 48)) == [2, 3]
    assert epoch_split(7, (16, 24, 48)) == [2, 2, 3]
    assert epoch_split(1, (24, 48)) == [1, 1]


def test_sizes_train_at_each_size_in_turn_after_lr_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int]] = []
    real = image_module.fit_one_cycle

    def recording(model: nn.Module, batches: Any, *args: Any, **kwargs: Any) -> list[float]:
        def watched(epoch: int) -> Iterator[Any]:
            for inputs, targets in batches(epoch):
                seen.append((inputs.shape[-2], inputs.shape[-1]))
                yield inputs, targets

        return real(model, watched, *args, **kwargs)

    monkeypatch.setattr(image_module, "fit_one_cycle", recording)
    real_lr_find = image_module.lr_find  # 30 mini-batches are enough to check the plumbing
    monkeypatch.setattr(
        image_module, "lr_find", lambda *a, **k: real_lr_find(*a, **{**k, "num": 30})
    )
    config = ImageConfig(out=tmp_path, epochs=2, n_train=32, sizes=(16, 24), lr_auto=True, **TINY)  # type: ignore[arg-type]
    path = train_cnn(config)
    assert sorted(set(seen)) == [(16, 16), (24, 24)]
    assert seen[0] == (16, 16) and seen[-1] == (24, 24)  # small first, then large
    with zipfile.ZipFile(path) as archive:
        metadata = json.loads(archive.read("metadata.json"))
    assert metadata["input"]["size"] == [24, 24]
    assert metadata["training"]["sizes"] == [16, 24]
    assert metadata["training"]["epochs_per_size"] == [1, 1]
    assert metadata["training"]["lr_rule"].startswith("lr-find")
    assert math.isfinite(metadata["training"]["lr"])


# -- finetune --------------------------------------------------------------------------------
def test_finetune_writes_an_archive_that_serves_the_new_classes(
    tiny_archive: Path, digit_folder: Path, tmp_path: Path
) -> None:
    config = FinetuneConfig(tiny_archive, digit_folder, name="tuned", out=tmp_path, epochs=1)
    path = finetune(config)
    with tempfile.TemporaryDirectory() as workdir:
        handler = open_archive(path, Path(workdir)).handler
        assert isinstance(handler, ImageHandler)
        assert handler.classes == ["3", "5", "8"]
        png = next(digit_folder.glob("5/*.png")).read_bytes()
        (answer,) = handler.handle([{"body": png}], None)
        assert set(answer) == {"3", "5", "8"}
        assert handler.default_layer == "features.3"  # heatmaps still come from the same layer
    with zipfile.ZipFile(path) as archive:
        metadata = json.loads(archive.read("metadata.json"))
    assert metadata["training"]["finetuned_from"] == str(tiny_archive)
    rates = metadata["training"]["lr_groups"]
    assert len(rates) == 3 and rates[0] < rates[1] < rates[2]  # earlier layers, smaller rates
    assert rates[-1] / rates[0] == pytest.approx(100)


def test_spread_is_geometric_like_fastais_slice() -> None:
    assert spread(1e-5, 1e-3, 3) == pytest.approx([1e-5, 1e-4, 1e-3])
    assert spread(1e-5, 1e-3, 1) == [1e-3]


def test_finetune_takes_user_archives_and_refuses_torchscript(
    digit_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_file = tmp_path / "net.py"
    model_file.write_text(NET)
    namespace: dict[str, Any] = {}
    exec(compile(NET, "net.py", "exec"), namespace)  # noqa: S102 - the test's own model source
    net = namespace["Net"](num_classes=2)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    common = ["--resize", "28", "--crop", "24", "--out", str(tmp_path)]
    main(
        [
            "archive",
            "--model-file",
            str(model_file),
            "--weights",
            str(tmp_path / "w.pth"),
            "--args",
            '{"num_classes": 2}',
            "--name",
            "user",
            *common,
        ]
    )
    tuned = finetune(FinetuneConfig(tmp_path / "user.mar", digit_folder, out=tmp_path, epochs=1))
    with tempfile.TemporaryDirectory() as workdir:
        assert open_archive(tuned, Path(workdir)).handler.classes == ["3", "5", "8"]  # type: ignore[attr-defined]
    traced = tmp_path / "traced.pt"
    with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit; the files still work
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
        torch.jit.save(torch.jit.trace(net.eval(), torch.zeros(1, 3, 24, 24)), str(traced))
    main(["archive", "--torchscript", str(traced), "--name", "script", *common])
    with pytest.raises(FinetuneError, match="TorchScript"):
        finetune(FinetuneConfig(tmp_path / "script.mar", digit_folder, out=tmp_path))
    capsys.readouterr()


# -- digits ----------------------------------------------------------------------------------
def test_digits_builds_an_archive_that_loads_and_scores_ink_pointing(tmp_path: Path) -> None:
    path = train_digits(DigitsConfig(out=tmp_path, epochs=1, size=16, subset=200))
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        metadata = json.loads(archive.read("metadata.json"))
    assert {"metadata.json", "index_to_name.json", "cnn.py", "digits.pt"} <= names
    evaluation = metadata["evaluation"]
    assert evaluation["n_test"] == 40
    assert 0 <= evaluation["ink_pointing_activation"] <= 1
    assert 0 <= evaluation["ink_pointing_random"] <= 1
    with tempfile.TemporaryDirectory() as workdir:
        handler = open_archive(path, Path(workdir)).handler
        assert isinstance(handler, ImageHandler)
        assert handler.classes == [str(d) for d in range(10)] and handler.size == (16, 16)


# -- interpretation reports ------------------------------------------------------------------
def test_evaluate_writes_every_report_file(
    tiny_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The method table is tested elsewhere; two cheap methods keep this test fast.
    monkeypatch.setattr(evaluate_module, "methods_for", lambda kind: ["activation", "gradcam"])
    text = evaluate_archive(tiny_archive, n=8, out=tmp_path)
    for name in ("evaluation.md", "gallery.png", *FILES):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "Most-confused pairs" in text
    for name in ("confusion_matrix.png", "top_losses.png", "layer_activations.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"
    with Image.open(tmp_path / "layer_activations.png") as sheet:
        assert sheet.width == 96 * 5  # the image, then the stem and three residual blocks


def test_evaluate_with_an_image_folder_writes_the_reports(
    tiny_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.shapes import make_shapes, save_image_folder

    save_image_folder(make_shapes(12, seed=5, size=48), tmp_path / "folder")
    out = tmp_path / "out"
    main(
        ["evaluate", str(tiny_archive), "--data", str(tmp_path / "folder"), "-n", "10"]
        + ["--out", str(out)]
    )
    assert "Interpretation reports: n=10" in capsys.readouterr().out
    for name in FILES:
        assert (out / name).stat().st_size > 0, name


def test_finetune_refuses_archives_it_cannot_give_a_new_head() -> None:
    from service.handlers.torchserve_image import TorchServeImageHandler
    from training.finetune import check_supported

    with pytest.raises(FinetuneError, match="image_classifier archive"):
        check_supported(TorchServeImageHandler(), {}, Path("resnet.mar"))
    no_count = {"architecture": {"file": "net.py", "class": "Net", "args": {"width": 4}}}
    with pytest.raises(FinetuneError, match="num_classes"):
        check_supported(ImageHandler(), no_count, Path("net.mar"))
