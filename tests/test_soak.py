"""The loopback soak (bench/soak.py) for 60 s on the tests' small archives: every request
answered, no server error, memory flat after the warm-up."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_soak_loses_nothing_and_stays_flat(
    cnn_archive: Path, tabular_archive: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for archive in (cnn_archive, tabular_archive):
        shutil.copy(archive, store / archive.name)
    command = [sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "60"]
    command += ["--model-store", str(store), "--out", str(tmp_path / "soak.json")]
    code, out, err = run(command, timeout=300)
    assert code == 0, err[-4000:]
    report = json.loads(out)
    assert report["sent"] > 0 and report["lost"] == 0 and report["server_errors"] == 0
    assert report["warmup"]["lost"] == 0 and report["warmup"]["server_errors"] == 0
    assert all(k["answered"] == k["sent"] for k in report["kinds"].values())
    assert report["rss_growth"] <= report["max_growth"], report["rss_kb"]


def run(command: list[str], timeout: float) -> tuple[int, str, str]:
    """Run the soak; on timeout SIGTERM it first (it then stops the server it started by its
    pid), SIGKILL only if it does not exit."""
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            out, err = process.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        pytest.fail(f"the soak ran past {timeout} s:\n{err[-4000:]}")
    return process.returncode, out, err
