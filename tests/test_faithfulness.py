"""Issue 16: explanations that can be trusted, and say how far.

- two-object scenes: explaining a scene for each of its two classes gives two maps;
- Integrated Gradients' `delta_tol`: it stops doubling once converged, and says so when
  it reaches `max_steps` without converging (images and tabular rows);
- methods describe themselves for the kind of model asked about (HTTP and gRPC).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from service.archive import open_archive
from service.config import Settings
from service.errors import SchemaError
from service.explain import REGISTRY, ImageBatch, TabularBatch, build
from service.explain.base import ModelInput
from service.handlers.image import ImageHandler
from service.handlers.tabular import TabularHandler
from service.pipeline import Pipeline
from service.proto.glimpse.v1 import glimpse_pb2 as pb
from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc
from tests.helpers import ROW
from tests.servers.grpc_inprocess import grpc_server
from training.faithfulness import pointing_game
from training.shapes import make_scenes, make_shapes


@pytest.fixture(scope="module")
def image_handler(cnn_archive: Path) -> Iterator[ImageHandler]:
    with tempfile.TemporaryDirectory() as workdir:
        handler = open_archive(cnn_archive, Path(workdir)).handler
        assert isinstance(handler, ImageHandler)
        yield handler


# -- two-object scenes -------------------------------------------------------------------------
def test_scenes_hold_two_different_classes_in_boxes_apart() -> None:
    scenes = make_scenes(20, seed=3, size=48)
    assert scenes.images.shape == (20, 48, 48, 3) and scenes.boxes.shape == (20, 2, 4)
    assert (scenes.labels[:, 0] != scenes.labels[:, 1]).all()
    a, b = scenes.boxes[:, 0], scenes.boxes[:, 1]
    apart = (a[:, 2] < b[:, 0]) | (b[:, 2] < a[:, 0]) | (a[:, 3] < b[:, 1]) | (b[:, 3] < a[:, 1])
    assert apart.all()
    again = make_scenes(20, seed=3, size=48)
    assert np.array_equal(again.images, scenes.images)  # deterministic in the seed


def test_single_shapes_are_unchanged_by_the_scene_generator() -> None:
    """make_shapes keeps its seeds' images (archives and tests depend on them)."""
    first = make_shapes(3, seed=0, size=48)
    assert first.labels.tolist() == make_shapes(3, seed=0, size=48).labels.tolist()
    assert first.boxes is not None and first.boxes.shape == (3, 4)


def test_a_scenes_two_targets_give_two_different_maps(image_handler: ImageHandler) -> None:
    scenes = make_scenes(4, seed=5, size=image_handler.size[0])
    inputs = image_handler.preprocess([Image.fromarray(a) for a in scenes.images])
    result = image_handler.infer(inputs)
    gradcam = build("image", "gradcam", {})
    first, second = (
        image_handler.explain(result, gradcam, torch.from_numpy(scenes.labels[:, j])).maps
        for j in (0, 1)
    )
    for a, b in zip(first, second, strict=True):
        assert not np.allclose(a, b, atol=1e-6)
    # the pointing game takes a box per map: scene boxes score like single-shape ones
    assert 0.0 <= pointing_game(np.stack([np.ones((48, 48))] * 4), scenes.boxes[:, 0]) <= 1.0


# -- delta_tol ---------------------------------------------------------------------------------
class Quartic(nn.Module):
    """logits = (x . w_k)^4: IG's integrand is cubic along the path, so Gauss-Legendre with 2
    points is exact and with 1 point is not."""

    def __init__(self, features: int, classes: int = 2) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-0.2, 0.3, features * classes).view(features, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = (x.flatten(1) @ self.w) ** 4
        return result


def image_batch() -> ImageBatch:
    inputs = torch.linspace(0.1, 1.0, 2 * 3 * 4 * 4).view(2, 3, 4, 4)
    return ImageBatch(Quartic(48), None, inputs, torch.tensor([0, 1]))


def test_delta_tol_on_images_stops_once_converged() -> None:
    params = {"steps": 1, "delta_tol": 1e-4, "baseline": "zeros"}
    extras = build("image", "integrated_gradients", params).attribute(image_batch()).extras
    for extra in extras:  # 1 point is off; 2 are exact: no 4, 8, ... up to max_steps
        assert extra["steps"] == 2 and extra["converged"] is True
        assert abs(extra["convergence_delta"]) <= 1e-4 and extra["delta_tol"] == 1e-4
    fixed_steps = {"steps": 1, "baseline": "zeros"}
    fixed = build("image", "integrated_gradients", fixed_steps).attribute(image_batch()).extras
    assert all(
        abs(e["convergence_delta"]) > 1e-4 and set(e) == {"convergence_delta"} for e in fixed
    )


def test_delta_tol_on_images_says_when_it_reaches_the_cap() -> None:
    params = {"steps": 1, "delta_tol": 1e-9, "max_steps": 1, "baseline": "zeros"}
    explainer = build("image", "integrated_gradients", params)
    for extra in explainer.attribute(image_batch()).extras:
        assert extra["steps"] == 1 and extra["converged"] is False
        assert abs(extra["convergence_delta"]) > 1e-9


def test_delta_tol_cost_and_refusals() -> None:
    explainer = build("image", "integrated_gradients", {"steps": 50, "delta_tol": 1e-3})
    assert explainer.cost(ModelInput((48, 48))) == 50 + 100 + 200 + 400 + 800 + 1600 + 3200 + 4096
    assert build("image", "integrated_gradients", {}).cost(ModelInput((48, 48))) == 50
    with pytest.raises(SchemaError, match="max_steps"):
        build("image", "integrated_gradients", {"steps": 64, "max_steps": 32, "delta_tol": 0.1})
    with pytest.raises(SchemaError, match="delta_tol"):
        build("image", "integrated_gradients", {"delta_tol": -1})


def tabular_batch() -> TabularBatch:
    def head(embedded: torch.Tensor, continuous: torch.Tensor) -> torch.Tensor:
        return (0.3 * embedded.sum(dim=1) + 0.2 * continuous.sum(dim=1)) ** 4

    rows = torch.linspace(0.5, 1.5, 3 * 4).view(3, 4)
    references = torch.linspace(-0.5, 0.5, 5 * 4).view(5, 4)
    return TabularBatch(head, rows[:, :2], rows[:, 2:], references[:, :2], references[:, 2:])


def test_delta_tol_on_tabular_stops_once_converged_and_says_when_capped() -> None:
    converging = build("tabular", "integrated_gradients", {"steps": 1, "delta_tol": 1e-4})
    for extra in converging.attribute_tabular(tabular_batch()).extras:
        assert extra["steps"] == 2 and extra["converged"] is True
    capped = build(
        "tabular", "integrated_gradients", {"steps": 1, "max_steps": 1, "delta_tol": 1e-9}
    )
    for extra in capped.attribute_tabular(tabular_batch()).extras:
        assert extra["steps"] == 1 and extra["converged"] is False


def test_tabular_rows_report_steps_and_convergence(tabular_archive: Path) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        handler = open_archive(tabular_archive, Path(workdir)).handler
        assert isinstance(handler, TabularHandler)
        params = {"steps": 2, "max_steps": 4, "delta_tol": 1e-9}
        [row] = handler.explain_rows([ROW], "integrated_gradients", params)
        assert row.extras["integrated_gradients"]["steps"] == 4
        assert row.extras["integrated_gradients"]["converged"] is False
        [plain] = handler.explain_rows([ROW], "integrated_gradients", {"steps": 2})
        assert plain.extras == {}


# -- descriptions by kind ----------------------------------------------------------------------
def test_integrated_gradients_describes_itself_by_kind() -> None:
    image, tabular = (REGISTRY["integrated_gradients"].describe(k) for k in ("image", "tabular"))
    assert "baseline" in image["params"] and "baseline" not in tabular["params"]
    assert {"delta_tol", "max_steps"} <= set(image["params"]) & set(tabular["params"])
    assert "colour" in image["reduction"] and "colour" not in tabular["reduction"]
    with pytest.raises(SchemaError, match="tabular"):
        build("tabular", "integrated_gradients", {"baseline": "zeros"})


def test_get_model_describes_methods_for_its_kind(http: TestClient) -> None:
    described = {
        name: {m["name"]: m for m in http.get(f"/models/{name}").json()["explanations"]}
        for name in ("cnn", "tabular")
    }
    image, tabular = (described[n]["integrated_gradients"] for n in ("cnn", "tabular"))
    assert image["params"]["baseline"]["choices"] == ["blur", "zeros"]
    assert "baseline" not in tabular["params"]
    assert "colour" not in tabular["reduction"] and image["reduction"] != tabular["reduction"]
    assert "delta_tol" in tabular["params"] and "delta_tol" in image["params"]


def test_grpc_get_model_describes_methods_for_its_kind(
    settings: Settings, pipeline: Pipeline
) -> None:
    with grpc_server(settings, pipeline) as address, grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GlimpseStub(channel)
        image, tabular = (
            next(
                m
                for m in stub.GetModel(pb.GetModelRequest(name=name), timeout=10).methods
                if m.name == "integrated_gradients"
            )
            for name in ("cnn", "tabular")
        )
    assert "baseline" in image.params and "baseline" not in tabular.params
    assert "colour" in image.reduction and "colour" not in tabular.reduction


def test_http_tabular_rows_carry_the_convergence_extras(http: TestClient) -> None:
    params = {"steps": "2", "max_steps": "4", "delta_tol": "1e-9"}
    [row] = http.post("/explanations/tabular", json=[ROW], params=params).json()["rows"]
    assert row["extras"]["integrated_gradients"] == {
        "steps": 4,
        "converged": False,
        "delta_tol": 1e-9,
    }
    refused = http.post("/explanations/tabular", json=[ROW], params={"baseline": "zeros"})
    assert refused.status_code == 422 and "tabular" in refused.text
