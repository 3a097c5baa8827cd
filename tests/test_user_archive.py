"""`python -m training archive`: a user's classifier (state_dict or TorchScript) as a .mar."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from service.handlers.base import FORMAT_VERSION, import_file, load_architecture
from service.hooks import hook_count
from service.layers import SCRIPT_MODULE_REASON, auto_layer, spatial_layers
from training.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--resize", "36", "--crop", "32"]  # small inputs keep the trial passes quick

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    """Conv -> BatchNorm -> ReLU -> MaxPool, then a linear head: the last 4-D module is the pool."""

    def __init__(self, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn(self.conv(x))))
        return self.head(x.mean(dim=(2, 3)))
'''

WIDE = '''

class Wide(nn.Module):
    """Another model in the same file, its blocks in a Sequential."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU()
        )
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(dim=(2, 3)))
'''


class ScriptNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@contextmanager
def quiet_jit() -> Iterator[None]:
    """torch 2.13 deprecates torch.jit (script, trace, save, load); TorchScript files still work.
    Only the test's own jit calls are silenced: the command runs under the suite's error filter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
        yield


def write_model(tmp_path: Path, source: str, name: str = "net.py") -> Path:
    path = tmp_path / name
    path.write_text(source)
    return path


def save_weights(model_file: Path, class_name: str, path: Path, **args: Any) -> Path:
    torch.manual_seed(0)
    module = import_file(model_file, "test_user")
    torch.save(getattr(module, class_name)(**args).state_dict(), path)
    return path


def run_main(argv: list[str]) -> None:
    main(["archive", *argv])


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command expecting a refusal; return its one-line message."""
    with pytest.raises(SystemExit) as exc_info:
        run_main(argv)
    assert exc_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("archive: "), err
    return err


def read_mar(path: Path) -> tuple[set[str], dict[str, Any], dict[str, Any], dict[str, Any]]:
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        metadata = json.loads(archive.read("metadata.json"))
        index_to_name = json.loads(archive.read("index_to_name.json"))
    return names, manifest, metadata, index_to_name


@pytest.fixture
def net(tmp_path: Path) -> tuple[Path, Path]:
    model_file = write_model(tmp_path, NET)
    return model_file, save_weights(model_file, "Net", tmp_path / "weights.pth")


# -- (a) several classes in one file --------
def test_class_picks_one_of_several_and_its_absence_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_file = write_model(tmp_path, NET + WIDE)
    weights = save_weights(model_file, "Wide", tmp_path / "wide.pth", num_classes=5)
    common = ["--model-file", str(model_file), "--weights", str(weights), *SMALL]
    err = refusal([*common, "--out", str(tmp_path / "store")], capsys)
    assert "Net" in err and "Wide" in err and "--class" in err
    run_main([*common, "--class", "Wide", "--args", '{"num_classes": 5}', "--out", str(tmp_path)])
    out = capsys.readouterr().out
    # the Sequential returns its last ReLU's tensor: the auto choice names the ReLU itself
    assert "layer: features.3 [8, 15, 15] ReLU" in out
    _, _, metadata, _ = read_mar(tmp_path / "net.mar")
    assert metadata["architecture"] == {
        "file": "net.py",
        "class": "Wide",
        "args": {"num_classes": 5},
    }
    assert metadata["explain"] == {"layer": "features.3"}


# -- (b) TorchScript --------
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_archives(tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    eager = ScriptNet().eval()
    example = torch.randn(2, 3, 32, 32)
    path = tmp_path / f"{how}.pt"
    with quiet_jit():
        scripted = torch.jit.script(eager) if how == "script" else torch.jit.trace(eager, example)
        torch.jit.save(scripted, str(path))
    (tmp_path / "classes.txt").write_text("cat\ndog\n\nbird\n")
    run_main(
        [
            "--torchscript",
            str(path),
            "--classes",
            str(tmp_path / "classes.txt"),
            "--name",
            "scripted",
            "--out",
            str(tmp_path / "store"),
            *SMALL,
        ]
    )
    out = capsys.readouterr().out
    assert "layer: none" in out
    names, manifest, metadata, index_to_name = read_mar(tmp_path / "store" / "scripted.mar")
    assert "modelFile" not in manifest["model"]
    assert manifest["model"]["serializedFile"] == "scripted.pt"
    assert metadata["architecture"] == {"torchscript": True}
    assert metadata["explain"] == {"layer": None, "reason": SCRIPT_MODULE_REASON}
    assert metadata["classes"] == ["cat", "dog", "bird"]
    assert index_to_name == {"0": "cat", "1": "dog", "2": "bird"}
    assert metadata["source"]["command"] == "archive"
    assert metadata["source"]["torchscript"] == f"{how}.pt"
    # the serialized file is the TorchScript file, byte for byte
    with zipfile.ZipFile(tmp_path / "store" / "scripted.mar") as archive:
        assert archive.read("scripted.pt") == path.read_bytes()
        archive.extract("scripted.pt", tmp_path / "unpacked")
    with quiet_jit():
        loaded = torch.jit.load(str(tmp_path / "unpacked" / "scripted.pt"))
    assert torch.allclose(loaded(example), eager(example), atol=1e-6)


def test_torchscript_refuses_a_named_layer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.pt"
    with quiet_jit():
        torch.jit.save(torch.jit.script(ScriptNet()), str(path))
    err = refusal(["--torchscript", str(path), "--layer", "features.0", *SMALL], capsys)
    assert "hooks" in err


def test_spatial_layers_of_a_script_module_is_empty() -> None:
    with quiet_jit():
        scripted = torch.jit.script(ScriptNet())
    assert spatial_layers(scripted, torch.zeros(1, 3, 16, 16)) == []
    with pytest.raises(ValueError, match="hooks"):
        auto_layer(scripted, torch.zeros(1, 3, 16, 16))


# -- (c) weights that do not fit --------
def test_unfitting_state_dict_names_the_keys(tmp_path: Path, net: tuple[Path, Path]) -> None:
    _, weights = net
    renamed = NET.replace("self.conv", "self.stem").replace("self.bn", "self.norm")
    other = write_model(tmp_path, renamed, "renamed.py")
    command = [sys.executable, "-m", "training", "archive", "--model-file", str(other)]
    command += ["--weights", str(weights), "--out", str(tmp_path / "store"), *SMALL]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    line = lines[0]
    assert line.startswith("archive: the weights in weights.pth do not fit Net")
    # 7 missing keys: five shown, then a count; the unexpected ones are named too
    assert "missing keys stem.weight, stem.bias, norm.weight" in line and "and 2 more" in line
    assert "unexpected keys conv.weight, conv.bias, bn.weight" in line
    assert not (tmp_path / "store" / "renamed.mar").exists()


def test_shape_mismatch_is_refused(
    tmp_path: Path, net: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model_file, weights = net
    argv = ["--model-file", str(model_file), "--weights", str(weights), "--args", '{"width": 8}']
    err = refusal([*argv, *SMALL], capsys)
    assert "shape mismatch: conv.weight is [4, 3, 3, 3] in the weights but [8, 3, 3, 3]" in err


# -- (d) automatic layer --------
def test_auto_layer_is_the_last_spatial_module_not_the_last_conv(
    tmp_path: Path, net: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model_file, weights = net
    run_main(["--model-file", str(model_file), "--weights", str(weights), *SMALL])
    assert "layer: pool [4, 16, 16] MaxPool2d" in capsys.readouterr().out
    model = load_architecture(tmp_path, {"file": "net.py", "class": "Net", "args": {}})
    layers = spatial_layers(model, torch.zeros(1, 3, 32, 32))
    assert [(layer.name, layer.shape) for layer in layers] == [
        ("conv", (4, 32, 32)),
        ("bn", (4, 32, 32)),
        ("relu", (4, 32, 32)),
        ("pool", (4, 16, 16)),
    ]
    assert auto_layer(model, torch.zeros(1, 3, 32, 32)) == "pool"


class BasicBlock(nn.Module):
    """torchvision's ResNet block: one in-place ReLU used twice, `out += identity`."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def test_auto_layer_names_a_resnet_block_not_its_shared_relu() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Sequential(BasicBlock(4), BasicBlock(4)),
        nn.AdaptiveAvgPool2d(1),  # [N, 4, 1, 1]: not a spatial map
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()
    layers = {layer.name: layer for layer in spatial_layers(model, torch.zeros(1, 3, 8, 8))}
    assert "2" not in layers
    assert layers["1.1.relu"].calls == 2
    assert layers["1.1"].alias_of == "1.1.relu" and layers["1"].alias_of == "1.1"
    assert list(layers)[-1] == "1"
    assert auto_layer(model, torch.zeros(1, 3, 8, 8)) == "1.1"


def test_spatial_layers_leaves_no_hook_and_keeps_training_flags() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model.train()
    model[1].eval()
    layers = spatial_layers(model, torch.zeros(1, 3, 8, 8))
    assert [layer.name for layer in layers] == ["0", "1"]
    assert hook_count(model) == 0
    assert model.training and model[0].training and not model[1].training
    with pytest.raises(RuntimeError):
        spatial_layers(model, torch.zeros(1, 5, 8, 8))  # wrong channel count: the forward raises
    assert hook_count(model) == 0 and model.training


def test_a_named_layer_must_exist_and_be_spatial(
    net: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model_file, weights = net
    argv = ["--model-file", str(model_file), "--weights", str(weights), *SMALL]
    err = refusal([*argv, "--layer", "nope"], capsys)
    assert "is not a module" in err and "pool [4, 16, 16]" in err
    err = refusal([*argv, "--layer", "head"], capsys)
    assert "does not output a 4-D" in err and "conv [4, 32, 32]" in err


# -- (e) class count --------
def test_class_count_mismatch_is_refused(
    tmp_path: Path, net: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model_file, weights = net
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\nfish\n")
    argv = ["--model-file", str(model_file), "--weights", str(weights), *SMALL]
    err = refusal([*argv, "--classes", str(tmp_path / "classes.txt")], capsys)
    assert err == "archive: classes.txt names 4 classes but the model outputs 3 scores"


# -- (f) the archive's contents --------
def test_archive_contents(
    tmp_path: Path, net: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model_file, weights = net
    # TorchServe's index_to_name.json shape, synset lists included: the last element is the name
    mapping = {"0": ["n02123045", "tabby"], "1": "dog", "2": ["n01530575", "brambling"]}
    (tmp_path / "index_to_name.json").write_text(json.dumps(mapping))
    Image.fromarray(np.full((30, 50, 3), 120, dtype=np.uint8)).save(tmp_path / "check.png")
    run_main(
        [
            "--model-file",
            str(model_file),
            "--weights",
            str(weights),
            "--args",
            '{"num_classes": 3}',
            "--classes",
            str(tmp_path / "index_to_name.json"),
            "--check-image",
            str(tmp_path / "check.png"),
            "--name",
            "mine",
            "--out",
            str(tmp_path / "store"),
            "--mean",
            "0.5,0.5,0.5",
            "--std",
            "0.25,0.25,0.25",
            *SMALL,
        ]
    )
    out = capsys.readouterr().out
    assert "check check.png (50x30): " in out and "tabby" in out
    names, manifest, metadata, index_to_name = read_mar(tmp_path / "store" / "mine.mar")
    assert {"net.py", "mine.pt", "metadata.json", "index_to_name.json"} <= names
    assert manifest["model"]["handler"] == "glimpse_image_handler.py"
    assert manifest["model"]["modelFile"] == "net.py"
    assert metadata["format_version"] == FORMAT_VERSION and metadata["kind"] == "image"
    assert metadata["name"] == "mine"
    assert metadata["architecture"] == {
        "file": "net.py",
        "class": "Net",
        "args": {"num_classes": 3},
    }
    assert metadata["classes"] == ["tabby", "dog", "brambling"]
    assert index_to_name == {"0": "tabby", "1": "dog", "2": "brambling"}
    assert metadata["input"] == {
        "size": [32, 32],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "resize": 36,
        "crop": [32, 32],
    }
    assert metadata["explain"] == {"layer": "pool"}
    source = metadata["source"]
    assert source["command"] == "archive" and source["weights"] == "weights.pth"
    assert source["model_file"] == "net.py" and len(source["weights_sha256"]) == 64
    # serving's own loader rebuilds the same model from the archive's files
    with zipfile.ZipFile(tmp_path / "store" / "mine.mar") as archive:
        archive.extractall(tmp_path / "unpacked")
    rebuilt = load_architecture(tmp_path / "unpacked", metadata["architecture"])
    rebuilt.load_state_dict(torch.load(tmp_path / "unpacked" / "mine.pt", weights_only=True))
    original = load_architecture(tmp_path, metadata["architecture"])
    original.load_state_dict(torch.load(weights, weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt.eval()(x), original.eval()(x))


# -- other refusals --------
def test_other_refusals_are_one_line(
    tmp_path: Path, net: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model_file, weights = net
    base = ["--model-file", str(model_file), "--weights", str(weights), *SMALL]
    assert "--args is not JSON" in refusal([*base, "--args", "{num_classes: 3}"], capsys)
    broken = write_model(tmp_path, "import torch\nraise ImportError('needs timm')\n", "bad.py")
    err = refusal(["--model-file", str(broken), "--weights", str(weights)], capsys)
    assert "cannot import" in err and "needs timm" in err
    none = write_model(tmp_path, "X = 1\n", "empty.py")
    err = refusal(["--model-file", str(none), "--weights", str(weights)], capsys)
    assert "defines 0 nn.Module classes" in err
    assert "--mean must be three numbers" in refusal([*base, "--mean", "0.5,0.5"], capsys)
    assert "no such file" in refusal([*base, "--check-image", str(tmp_path / "x.png")], capsys)
    err = refusal([*base, "--name", "my model"], capsys)
    assert "model name 'my model' is not allowed" in err
