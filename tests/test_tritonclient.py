"""The real tritonclient (http and grpc) against a real `python -m service`.

tritonclient[grpc] pins protobuf below ours, so the client runs in its own venv (cached under
~/.cache/glimpse-tests, or GLIMPSE_TRITONCLIENT_VENV; reused when it imports), with numpy and
no torch. A small script there calls is_server_live, is_model_ready, get_model_metadata and
infer on both models over both protocols and prints JSON; its probabilities must equal
`/predictions` within 1e-5. Skipped, with pip's reason, only when pip cannot install it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ROWS, png, random_image
from tests.servers.glimpse import glimpse

pytestmark = pytest.mark.integration

DEFAULT_VENV = Path("~/.cache/glimpse-tests/tritonclient-venv").expanduser()
PACKAGES = ["tritonclient[http,grpc]", "numpy"]

CLIENT = r"""
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

http_url, grpc_url, spec_path = sys.argv[1:4]
spec = json.load(open(spec_path))
images = [open(path, "rb").read() for path in spec["images"]]
out = {}
for kind, module, url in (("http", httpclient, http_url), ("grpc", grpcclient, grpc_url)):
    client = module.InferenceServerClient(url=url)
    meta = client.get_model_metadata("cnn")
    if kind == "grpc":
        meta = {"name": meta.name, "inputs": [{"name": i.name} for i in meta.inputs]}
    image = module.InferInput("image", [len(images)], "BYTES")
    image.set_data_from_numpy(np.array(images, dtype=np.object_))
    answer = client.infer("cnn", [image])
    explained = client.infer("cnn", [image], parameters={"explain": "activation"})
    columns = []
    for column in spec["columns"]:
        text = column["datatype"] == "BYTES"
        values = np.array(column["values"], dtype=np.object_ if text else np.float64)
        tensor = module.InferInput(column["name"], [len(values)], column["datatype"])
        tensor.set_data_from_numpy(values)
        columns.append(tensor)
    tabular = client.infer("tabular", columns)
    out[kind] = {
        "live": client.is_server_live(),
        "ready": [client.is_model_ready("cnn"), client.is_model_ready("tabular")],
        "metadata": meta,
        "probabilities": answer.as_numpy("probabilities").tolist(),
        "labels": [label.decode() for label in answer.as_numpy("labels")],
        "explanation_shape": list(explained.as_numpy("explanation").shape),
        "predictions": tabular.as_numpy("predictions").tolist(),
    }
print(json.dumps(out))
"""


def client_python() -> Path:
    """The venv's python with tritonclient importable: reused, or made now (skip if pip fails)."""
    venv = Path(os.environ.get("GLIMPSE_TRITONCLIENT_VENV", DEFAULT_VENV))
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import tritonclient.http, tritonclient.grpc, numpy"]
    if python.exists() and subprocess.run(probe, capture_output=True, timeout=60).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *PACKAGES],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        pytest.skip(f"pip cannot install {PACKAGES}: {install.stderr.strip()[-500:]}")
    return python


def column_values(base: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each tabular column as tritonclient sends it: text as BYTES, numbers as FP64."""
    columns = httpx.get(f"{base}/models/tabular", timeout=30).json()["input"]["columns"]
    out = []
    for column in columns:
        name = column["name"]
        if column["type"] == "continuous":
            values = [float(row.get(name, float("nan"))) for row in rows]
            out.append({"name": name, "datatype": "FP64", "values": values})
        else:
            out.append({"name": name, "datatype": "BYTES", "values": [str(r[name]) for r in rows]})
    return out


def test_tritonclient_http_and_grpc(
    cnn_archive: Path, tabular_archive: Path, shapes_png: bytes, tmp_path: Path
) -> None:
    python = client_python()
    pictures = [shapes_png, png(random_image(50, 40, seed=7))]
    paths = []
    for i, picture in enumerate(pictures):
        paths.append(tmp_path / f"image{i}.png")
        paths[-1].write_bytes(picture)
    rows = [{k: v for k, v in row.items() if v is not None} for row in ROWS[:2]]
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    with glimpse([cnn_archive, tabular_archive], tmp_path / "server") as server:
        spec = {"images": [str(p) for p in paths], "columns": column_values(server.http, rows)}
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        http_url = server.http.removeprefix("http://")
        run = subprocess.run(
            [str(python), str(script), http_url, server.grpc, str(tmp_path / "spec.json")],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        with httpx.Client(base_url=server.http, timeout=60) as client:
            classes = client.get("/models/cnn").json()["classes"]
            expected = [client.post("/predictions/cnn", content=p).json() for p in pictures]
            values = client.post("/predictions/tabular", json=rows).json()
    results = json.loads(run.stdout)
    for kind in ("http", "grpc"):
        got = results[kind]
        assert got["live"] and got["ready"] == [True, True], kind
        assert got["metadata"]["name"] == "cnn"
        assert [i["name"] for i in got["metadata"]["inputs"]] == ["image", "tensor"]
        for row, answer in zip(got["probabilities"], expected, strict=True):
            assert len(row) == len(classes)
            for label, p in answer.items():
                assert abs(row[classes.index(label)] - p) < 1e-5, (kind, label)
        tops = [max(answer, key=answer.get) for answer in expected]
        assert got["labels"] == tops, kind
        assert got["explanation_shape"][0] == len(pictures)
        assert got["predictions"] == pytest.approx(values, rel=1e-6), kind
