"""TorchServe-standard archives, made as TorchServe's examples make them, for the tests.

A model file with one nn.Module class (no arguments), a state_dict with seeded weights and
non-trivial BatchNorm statistics, an index_to_name.json, and a built-in handler name,
packed by the real torch-model-archiver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from service.handlers.base import import_file

ARCHIVER = Path(sys.executable).parent / "torch-model-archiver"

# A small ResNet-like classifier in one class, as a user would write it for TorchServe.
MODEL_FILE = """
import torch
from torch import nn


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.block = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
        )
        self.down = nn.Sequential(
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = self.down(x)
        return self.fc(torch.flatten(self.pool(x), 1))
"""

CLASSES = ["tench", "goldfish", "shark", "ray", "cock", "hen", "finch", "robin", "jay", "owl"]


def model_and_weights(workdir: Path, seed: int = 0) -> tuple[Path, Path, torch.nn.Module]:
    """Write the model file and a seeded state_dict whose BatchNorm statistics are not 0/1."""
    workdir.mkdir(parents=True, exist_ok=True)
    model_file = workdir / "tiny_resnet.py"
    model_file.write_text(MODEL_FILE)
    torch.manual_seed(seed)
    model: torch.nn.Module = import_file(model_file, "test_ts_model").TinyResNet()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    weights = workdir / "tiny_resnet.pt"
    torch.save(model.state_dict(), weights)
    return model_file, weights, model.eval()


def build(
    workdir: Path,
    name: str = "tiny",
    handler: str = "image_classifier",
    model_source: str = MODEL_FILE,
) -> Path:
    """`name`.mar in `workdir/store`, packed by torch-model-archiver with `handler`; the
    archive's model file holds `model_source` (the weights are always TinyResNet's)."""
    workdir.mkdir(parents=True, exist_ok=True)
    model_file, weights, _ = model_and_weights(workdir)
    model_file.write_text(model_source)
    # TorchServe accepts ["wnid", "name"] pairs too and shows the last item.
    names = {str(i): c for i, c in enumerate(CLASSES)} | {"9": ["n01622779", "owl"]}
    labels = workdir / "index_to_name.json"
    labels.write_text(json.dumps(names))
    store = workdir / "store"
    store.mkdir(exist_ok=True)
    command = [
        str(ARCHIVER),
        "--model-name",
        name,
        "--version",
        "1.0",
        "--model-file",
        str(model_file),
        "--serialized-file",
        str(weights),
        "--handler",
        handler,
        "--extra-files",
        str(labels),
        "--export-path",
        str(store),
        "--force",
    ]
    subprocess.run(command, check=True, timeout=120, env={**os.environ, "TMPDIR": str(workdir)})
    return store / f"{name}.mar"


def torchserve_reference(model: torch.nn.Module, image: Image.Image) -> dict[str, float]:
    """TorchServe's image_classifier by hand: Resize(256) (short side; long side
    int(256 * long / short)), CenterCrop(224), ToTensor, ImageNet Normalize, softmax, top 5."""
    width, height = image.size
    if width <= height:
        size = (256, int(256 * height / width))
    else:
        size = (int(256 * width / height), 256)
    resized = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR))
    top = int(round((resized.shape[0] - 224) / 2.0))
    left = int(round((resized.shape[1] - 224) / 2.0))
    crop = resized[top : top + 224, left : left + 224].astype(np.float32) / 255.0
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    tensor = torch.from_numpy(((crop - mean) / std).transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        probabilities = torch.softmax(model(tensor), dim=1)[0]
    values, indices = probabilities.topk(5)
    return {CLASSES[int(i)]: float(v) for v, i in zip(values, indices, strict=True)}


# torchvision's release for torch 2.13. Its wheel's compiled ops are built against a CUDA torch
# (they link libtorch_cuda), so `import torchvision` fails beside the CPU torch here; its
# transforms are plain Python and need none of them.
TORCHVISION = "torchvision==0.28.0"

# TorchServe's own ImageClassifier, run as its worker runs it, on image files; prints JSON.
RUN_TORCHSERVE_HANDLER = """
import json, sys, types

torchvision_dir, model_dir, *images = sys.argv[1:]
# torchvision's Python code without its __init__, which loads the compiled ops.
package = types.ModuleType("torchvision")
package.__path__ = [torchvision_dir]
sys.modules["torchvision"] = package
sys.path.insert(0, model_dir)  # TorchServe's worker imports the model file from there

from ts.context import Context
from ts.torch_handler.image_classifier import ImageClassifier

with open(model_dir + "/MAR-INF/MANIFEST.json") as f:
    manifest = json.load(f)
name = manifest["model"]["modelName"]
context = Context(name, model_dir, manifest, 1, None, "0.12.0", model_yaml_config={})
handler = ImageClassifier()
handler.initialize(context)
handler.context = context
answers = []
for path in images:
    with open(path, "rb") as f:
        data = [{"body": f.read()}]
    # BaseHandler.handle less its metrics and profiler: preprocess, inference, postprocess.
    answers.extend(handler.postprocess(handler.inference(handler.preprocess(data))))
print("ANSWERS " + json.dumps(answers))
"""


def torchvision_python(workdir: Path) -> Path | None:
    """torchvision's Python files (the package directory) unpacked from its release wheel,
    fetched by pip; None when pip cannot fetch it."""
    wheels = workdir / "wheels"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    command += ["--dest", str(wheels), TORCHVISION]
    if subprocess.run(command, capture_output=True, timeout=300, check=False).returncode:
        return None
    [wheel] = wheels.glob("torchvision-*.whl")
    target = workdir / "torchvision-python"
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith("torchvision/") and member.endswith(".py"):
                archive.extract(member, target)
    return target / "torchvision"


def torchserve_handler(
    mar: Path, images: list[bytes], workdir: Path, torchvision_dir: Path
) -> list[dict[str, float]]:
    """What TorchServe's own image_classifier handler answers for each image file."""
    model_dir = workdir / "unpacked"
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(model_dir)
    paths = []
    for i, data in enumerate(images):
        paths.append(workdir / f"image{i}")
        paths[-1].write_bytes(data)
    command = [sys.executable, "-c", RUN_TORCHSERVE_HANDLER, str(torchvision_dir), str(model_dir)]
    done = subprocess.run(
        [*command, *map(str, paths)], capture_output=True, text=True, timeout=300, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("ANSWERS ")]
    if done.returncode or not lines:
        raise RuntimeError(f"TorchServe's handler failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    answers: list[dict[str, float]] = json.loads(lines[-1].removeprefix("ANSWERS "))
    return answers
