"""smoothgrad and gradient_shap draw from their own generators: models explained at the same
time on their own worker threads give exactly the maps each gives alone."""

from __future__ import annotations

import asyncio
import json
import threading
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.metrics import Metrics
from service.pipeline import ExplainRequest, Payload, Pipeline
from service.results import ImageResult
from service.runtime import Runtime
from tests.helpers import png
from training.shapes import make_shapes

METHODS = ["smoothgrad", "gradient_shap"]
PARAMS = {"samples": 8}
MODELS = ("left", "right")
ROUNDS = 6


def renamed(archive: Path, name: str, store: Path) -> Path:
    """A copy of `archive` whose manifest names its model `name`."""
    copy = store / f"{name}.mar"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(copy, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelName"] = name
                data = json.dumps(manifest).encode()
            target.writestr(item, data)
    return copy


@pytest.fixture(scope="module")
def pipeline(cnn_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Two image models (cnn.mar twice, under two names), each with its own worker thread."""
    store = tmp_path_factory.mktemp("two_models")
    runtime = Runtime.load([renamed(cnn_archive, n, store) for n in MODELS], metrics=Metrics())
    assert sorted(runtime.models) == sorted(MODELS)
    yield Pipeline(runtime)
    runtime.close()


def pictures() -> list[bytes]:
    return [png(Image.fromarray(a)) for a in make_shapes(2, seed=5).images]


def maps(pipeline: Pipeline, model: str, picture: bytes) -> dict[str, np.ndarray]:
    request = ExplainRequest(model, [Payload(picture)], METHODS, None, dict(PARAMS), False)
    results, _ = asyncio.run(pipeline.explain(request))
    assert isinstance(results[0], ImageResult)
    return {m.method: m.values for m in results[0].targets[0].maps}


def test_two_models_at_once_give_the_maps_each_gives_alone(pipeline: Pipeline) -> None:
    inputs = pictures()
    alone = {model: [maps(pipeline, model, p) for p in inputs] for model in MODELS}
    start = threading.Barrier(len(MODELS))

    def explain_repeatedly(model: str) -> list[dict[str, np.ndarray]]:
        start.wait(timeout=30)
        return [maps(pipeline, model, p) for _ in range(ROUNDS) for p in inputs]

    with ThreadPoolExecutor(len(MODELS)) as pool:
        together = dict(zip(MODELS, pool.map(explain_repeatedly, MODELS), strict=True))
    for model in MODELS:
        for index, got in enumerate(together[model]):
            expected = alone[model][index % len(inputs)]
            for method in METHODS:
                assert np.array_equal(got[method], expected[method]), (model, index, method)


def test_the_methods_leave_the_process_wide_generators_alone(pipeline: Pipeline) -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    expected_torch, expected_numpy = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    maps(pipeline, MODELS[0], pictures()[0])
    assert torch.equal(torch.rand(3), expected_torch)
    assert np.array_equal(np.random.rand(3), expected_numpy)


def test_another_seed_gives_another_map(pipeline: Pipeline) -> None:
    picture = pictures()[0]
    first = maps(pipeline, MODELS[0], picture)
    request = ExplainRequest(
        MODELS[0], [Payload(picture)], METHODS, None, {**PARAMS, "seed": 7}, False
    )
    results, _ = asyncio.run(pipeline.explain(request))
    assert isinstance(results[0], ImageResult)
    for result in results[0].targets[0].maps:
        assert not np.array_equal(result.values, first[result.method]), result.method
