"""The wheel, installed on its own, carries what it needs and serves a real archive.

The wheel is built from a copy of the source tree and installed with `--no-deps` into a fresh
venv. Its dependencies come from the project venv through a `.pth` file holding that venv's
site-packages path: torch alone is a multi-hundred-MB local wheel, and installing it again
would test pip, not glimpse. A plain path line in a `.pth` does not run that directory's own
`.pth` files, so the project's editable install of glimpse stays invisible: what is imported
as `service` is the wheel's copy (checked below). What this test checks is the wheel's own
contents (package data such as the TorchServe entry points, the licence, the version) and that
`python -m service` from the installed wheel answers a prediction.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port
from tests.servers import running, wait_until_ok
from training.shapes import CLASSES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
ENTRYPOINTS = ("glimpse_image_handler.py", "glimpse_tabular_handler.py")
# Not needed to build the wheel; the copy stays small and no stale build/ output leaks in.
NOT_COPIED = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.mar", "logs"
)


def run(
    command: list[str],
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `command` to completion; fail with its output when it fails or overruns `timeout`."""
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{command} did not finish in {timeout} s:\n{exc.stdout!r}\n{exc.stderr!r}")
    if done.returncode != 0:
        pytest.fail(f"{command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build --wheel` on a copy of the tree (setuptools writes build/ into its source).

    --no-isolation: the build backend comes from the [dev] install, so no network is needed.
    """
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    command = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", "dist"]
    run([*command, str(source)], timeout=300, cwd=work)
    [built] = (work / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the wheel installed; the project venv's packages through a .pth."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    python = venv / "bin" / "python"
    # This pip installs into the fresh venv's interpreter; --no-index: nothing may be fetched.
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install"]
    run([*pip, "--no-deps", "--no-index", str(wheel)], timeout=120)
    site_packages = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        timeout=60,
    ).stdout.strip()
    project_site = sysconfig.get_paths()["purelib"]
    (Path(site_packages) / "glimpse_test_deps.pth").write_text(project_site + "\n")
    return python


def clean_env() -> dict[str, str]:
    """The environment without anything that would put the source tree on sys.path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def test_wheel_contents(wheel: Path) -> None:
    assert wheel.name == f"glimpse-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = f"glimpse-{VERSION}.dist-info"
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        licence = archive.read(f"{dist_info}/licenses/LICENSE").decode()
    assert {f"service/entrypoints/{name}" for name in ENTRYPOINTS} <= names
    assert "service/proto/glimpse/v1/glimpse_pb2.pyi" in names
    page = {f"service/web/static/{name}" for name in ("index.html", "app.js", "style.css")}
    assert page <= names
    assert not any(name.startswith("tests/") for name in names)
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata
    assert licence == (ROOT / "LICENSE").read_text()
    assert "Version 2.0, January 2004" in licence
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert any(line.startswith("Requires-Dist: matplotlib") for line in requires)
    assert any("scikit-learn" in line and 'extra == "train"' in line for line in requires)


def test_installed_wheel_is_what_imports(venv_python: Path, tmp_path: Path) -> None:
    probe = """
import importlib.metadata as md, importlib.resources as res, json, sys, service, training
print(json.dumps({
    "service": service.__file__,
    "training": training.__file__,
    "version": service.__version__,
    "metadata_version": md.version("glimpse"),
    "licence_files": [str(f) for f in md.files("glimpse") if "licenses" in str(f)],
    "entrypoints": [
        res.files("service.entrypoints").joinpath(name).is_file() for name in sys.argv[1:]
    ],
}))
"""
    found = json.loads(
        run(
            [str(venv_python), "-c", probe, *ENTRYPOINTS],
            timeout=120,
            cwd=tmp_path,
            env=clean_env(),
        ).stdout
    )
    venv = venv_python.parent.parent
    for package in ("service", "training"):
        path = Path(found[package])
        assert path.is_relative_to(venv), f"{package} imported from {path}, not the wheel"
        assert not path.is_relative_to(ROOT)
    assert found["version"] == found["metadata_version"] == VERSION
    assert found["licence_files"] == [f"glimpse-{VERSION}.dist-info/licenses/LICENSE"]
    assert found["entrypoints"] == [True, True]


def test_installed_wheel_serves_a_prediction(
    venv_python: Path, cnn_archive: Path, shapes_png: bytes, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(cnn_archive, store / "cnn.mar")
    http_port, grpc_port = free_port(), free_port()
    command = [str(venv_python), "-m", "service", "--model-store", str(store)]
    command += ["--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    base = f"http://127.0.0.1:{http_port}"
    log = tmp_path / "glimpse.log"
    with running(command, log, cwd=tmp_path, env=clean_env()) as process:
        wait_until_ok(f"{base}/ping", process, log)
        response = httpx.post(f"{base}/predictions/cnn", content=shapes_png, timeout=60)
        page = httpx.get(f"{base}/ui/app.js", timeout=60)
    assert page.status_code == 200 and "loadModels" in page.text  # the web page's files
    assert response.status_code == 200, response.text
    probabilities = response.json()
    assert isinstance(probabilities, dict) and set(probabilities) == set(CLASSES)
    assert all(0 <= p <= 1 for p in probabilities.values())
    assert sum(probabilities.values()) <= 1 + 1e-6
