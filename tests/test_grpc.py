"""The gRPC door on real (small) cnn.mar and tabular.mar, used as the README's examples use it.

One in-process `grpc.aio` server (on its own thread and event loop) and one HTTP app share
a pipeline, so every answer can be checked against the HTTP route's.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from PIL import Image

from service import client as glimpse_client
from service.config import Settings
from service.explain import methods_for
from service.pipeline import Pipeline
from service.proto.glimpse.v1 import glimpse_pb2 as pb
from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc
from tests.helpers import ROW
from tests.servers.grpc_inprocess import grpc_server

FAST = {"steps": "8", "samples": "4", "internal_batch_size": "64"}  # keeps costly methods quick


# -- fixtures: the gRPC door onto conftest's two-model pipeline --------------------------------
@pytest.fixture(scope="module")
def address(settings: Settings, pipeline: Pipeline) -> Iterator[str]:
    with grpc_server(settings, pipeline) as address:
        yield address


@pytest.fixture(scope="module")
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GlimpseStub:
    return pb_grpc.GlimpseStub(channel)


def image_input(data: bytes) -> pb.Input:
    return pb.Input(image=data)


def row_input(row: dict[str, Any]) -> pb.Input:
    return pb.Input(row=glimpse_client.encode_row(row))


def grpc_error(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value


# -- parity with HTTP ------------------------------------------------------------------------------
def test_predict_matches_http(
    stub: pb_grpc.GlimpseStub, http: TestClient, shapes_png: bytes
) -> None:
    reply = stub.Predict(pb.PredictRequest(model="cnn", inputs=[image_input(shapes_png)]))
    [prediction] = reply.predictions
    expected = http.post("/predictions/cnn", content=shapes_png).json()
    assert [c.label for c in prediction.classes] == list(expected)  # most probable first
    probabilities = [c.probability for c in prediction.classes]
    assert probabilities == pytest.approx(list(expected.values()), abs=1e-5)
    reply = stub.Predict(pb.PredictRequest(model="tabular", inputs=[row_input(ROW)]))
    sales = http.post("/predictions/tabular", json=ROW).json()
    assert [reply.predictions[0].value] == pytest.approx(sales, abs=1e-5)


@pytest.mark.parametrize("method", methods_for("image"))
def test_image_explanation_matches_http(
    stub: pb_grpc.GlimpseStub, http: TestClient, shapes_png: bytes, method: str
) -> None:
    params = {k: v for k, v in FAST.items() if k in pb_params(stub, "cnn", method)}
    body = http.post(
        "/explanations/cnn", content=shapes_png, params={"methods": method, **params}
    ).json()
    request = pb.ExplainRequest(
        model="cnn",
        inputs=[image_input(shapes_png)],
        methods=[method],
        params=params,
        include_overlay=True,
    )
    [explanation] = stub.Explain(request).explanations
    image = explanation.image
    assert {c.label: c.probability for c in image.prediction} == pytest.approx(
        body["prediction"], abs=1e-5
    )
    assert (image.target.index, image.target.label) == (
        body["target"]["index"],
        body["target"]["label"],
    )
    [grid] = image.maps
    expected = body["explanations"][method]
    assert (grid.method, grid.height, grid.width, grid.signed, grid.reduction) == (
        method,
        expected["height"],
        expected["width"],
        expected["signed"],
        expected["reduction"],
    )
    values = np.reshape(grid.values, (grid.height, grid.width))
    np.testing.assert_allclose(values, expected["values"], atol=1e-5)
    assert grid.overlay_png == base64.b64decode(expected["overlay_png"])
    extras = {k: v for k, v in expected.items() if k not in pb.Map.DESCRIPTOR.fields_by_name}
    assert dict(grid.extras) == pytest.approx(extras, abs=1e-5)


@pytest.mark.parametrize("method", methods_for("tabular"))
def test_row_explanation_matches_http(
    stub: pb_grpc.GlimpseStub, http: TestClient, method: str
) -> None:
    params = {k: v for k, v in FAST.items() if k in pb_params(stub, "tabular", method)}
    [expected] = http.post(
        "/explanations/tabular", json=[ROW], params={"methods": method, **params}
    ).json()["rows"]
    request = pb.ExplainRequest(
        model="tabular", inputs=[row_input(ROW)], methods=[method], params=params
    )
    row = stub.Explain(request).explanations[0].row
    assert row.prediction == pytest.approx(expected["prediction"], abs=1e-5)
    assert row.base_value == pytest.approx(expected["base_value"], abs=1e-5)
    [attributions] = row.attributions
    assert attributions.method == method
    assert {c.column: c.value for c in attributions.columns} == pytest.approx(
        expected["attributions"][method], abs=1e-5
    )
    assert [c.column for c in attributions.columns] == list(expected["attributions"][method])
    if method in expected["convergence_delta"]:
        assert attributions.convergence_delta == pytest.approx(
            expected["convergence_delta"][method], abs=1e-5
        )


def pb_params(stub: pb_grpc.GlimpseStub, model: str, method: str) -> list[str]:
    """The parameter names GetModel lists for `method`."""
    info = stub.GetModel(pb.GetModelRequest(name=model))
    return next(list(m.params) for m in info.methods if m.name == method)


def test_models_match_http(stub: pb_grpc.GlimpseStub, http: TestClient) -> None:
    listed = stub.ListModels(pb.ListModelsRequest()).models
    assert [(m.name, m.kind) for m in listed] == [("cnn", "image"), ("tabular", "tabular")]
    for name in ("cnn", "tabular"):
        info = stub.GetModel(pb.GetModelRequest(name=name))
        expected = http.get(f"/models/{name}").json()
        assert [m.name for m in info.methods] == methods_for(expected["kind"])
        assert list(info.classes) == expected.get("classes", [])
        assert info.target == expected.get("target", "")
        assert json_format.MessageToDict(info.description) == expected  # numbers: 1.0 == 1


# -- reflection and health, from a client without glimpse's stubs --------------------------------
def test_reflection_lists_and_calls_without_stubs(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    assert {"glimpse.v1.Glimpse", "grpc.health.v1.Health"} <= set(database.get_services())
    pool = descriptor_pool.DescriptorPool(database)  # a fresh pool: nothing generated is used
    service = pool.FindServiceByName("glimpse.v1.Glimpse")
    assert {m.name for m in service.methods} == {
        "Predict",
        "Explain",
        "ListModels",
        "GetModel",
        "StreamExplain",
    }
    method = service.methods_by_name["ListModels"]
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)
    list_models = channel.unary_unary(
        "/glimpse.v1.Glimpse/ListModels",
        request_serializer=request.SerializeToString,
        response_deserializer=response.FromString,
    )
    assert [m.name for m in list_models(request(), timeout=10).models] == ["cnn", "tabular"]


def test_health_is_serving_overall_and_per_model(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "glimpse.v1.Glimpse", "cnn", "tabular"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


# -- streaming -------------------------------------------------------------------------------------
def test_stream_of_50_answers_in_order_with_a_bad_input_in_the_middle(
    stub: pb_grpc.GlimpseStub, shapes_png: bytes
) -> None:
    images = [shapes_png] * 50
    images[25] = b"this is not an image"
    requests = (
        pb.StreamExplainRequest(id=f"image-{i}", model="cnn", input=image_input(data))
        for i, data in enumerate(images)
    )
    replies = list(stub.StreamExplain(requests, timeout=60))
    assert [r.id for r in replies] == [f"image-{i}" for i in range(50)]
    assert [r.WhichOneof("result") for r in replies] == ["explanation"] * 25 + ["error"] + [
        "explanation"
    ] * 24
    error = replies[25].error
    assert (error.status, error.code, error.reason) == ("INVALID_ARGUMENT", 3, "bad_input")
    assert "not an image" in error.message
    assert replies[0].explanation.image.maps[0].method == "activation"


def test_stream_mixes_models_and_reports_each_error(
    stub: pb_grpc.GlimpseStub, shapes_png: bytes
) -> None:
    requests = [
        pb.StreamExplainRequest(id="row", model="tabular", input=row_input(ROW)),
        pb.StreamExplainRequest(id="typo", model="cnnn", input=image_input(shapes_png)),
        pb.StreamExplainRequest(
            id="image",
            model="cnn",
            input=image_input(shapes_png),
            methods=["activation", "gradcam"],
        ),
    ]
    replies = {r.id: r for r in stub.StreamExplain(iter(requests), timeout=60)}
    assert replies["row"].explanation.row.attributions[0].method == "integrated_gradients"
    assert replies["typo"].error.status == "NOT_FOUND"
    assert [m.method for m in replies["image"].explanation.image.maps] == ["activation", "gradcam"]


# -- bad input: the right code, a message that says what to fix, and the server goes on -----------
BAD: dict[str, tuple[str, dict[str, Any], grpc.StatusCode, str]] = {
    "empty image": (
        "Predict",
        dict(model="cnn", inputs=[pb.Input(image=b"")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Input.image is empty",
    ),
    "not an image": (
        "Predict",
        dict(model="cnn", inputs=[pb.Input(image=b"hello, I am text")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not an image",
    ),
    "no inputs": ("Predict", dict(model="cnn"), grpc.StatusCode.INVALID_ARGUMENT, "no inputs"),
    "row to an image model": (
        "Predict",
        dict(model="cnn", inputs=[row_input(ROW)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "set Input.image",
    ),
    "unknown model": (
        "Predict",
        dict(model="cnnn", inputs=[pb.Input(image=b"x")]),
        grpc.StatusCode.NOT_FOUND,
        "this server has ['cnn', 'tabular']",
    ),
    "unknown model metadata": ("GetModel", dict(name="nope"), grpc.StatusCode.NOT_FOUND, "cnn"),
    "unknown method": (
        "Explain",
        dict(model="cnn", methods=["gradcamm"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "choose from ['activation'",
    ),
    "bad parameter": (
        "Explain",
        dict(model="cnn", methods=["integrated_gradients"], params={"steps": "lots"}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "integrated_gradients.steps must be",
    ),
    "unknown parameter": (
        "Explain",
        dict(model="cnn", params={"stepz": "8"}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown parameter 'stepz'",
    ),
    "unknown target": (
        "Explain",
        dict(model="cnn", target="octagon"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "neither a class",
    ),
    "row missing a column": (
        "Predict",
        dict(model="tabular", inputs=[row_input({"Store": 1})]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "missing the required column",
    ),
    "oversized message": (
        "Predict",
        dict(model="cnn", inputs=[pb.Input(image=b"0" * 2_100_000)]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "larger than max",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_the_right_code_and_the_server_goes_on(
    stub: pb_grpc.GlimpseStub, shapes_png: bytes, case: str
) -> None:
    rpc, fields, code, hint = BAD[case]
    request_type = {
        "Predict": pb.PredictRequest,
        "Explain": pb.ExplainRequest,
        "GetModel": pb.GetModelRequest,
    }[rpc]
    if rpc == "Explain":
        fields = {"inputs": [image_input(shapes_png)], **fields}
    error = grpc_error(getattr(stub, rpc), request_type(**fields))
    assert error.code() == code, error.details()
    assert hint in error.details()
    reply = stub.Predict(pb.PredictRequest(model="cnn", inputs=[image_input(shapes_png)]))
    assert len(reply.predictions[0].classes) == 4


def test_expired_deadlines_stop_their_queued_work(
    stub: pb_grpc.GlimpseStub, pipeline: Pipeline, shapes_png: bytes
) -> None:
    slow = pb.ExplainRequest(
        model="cnn",
        inputs=[image_input(shapes_png)],
        methods=["integrated_gradients"],
        params={"steps": "600"},
    )
    ran_before, batched_before = _attributions_run(pipeline), _inputs_batched(pipeline)
    calls = [stub.Explain.future(slow, timeout=0.2) for _ in range(5)]
    for call in calls:
        assert call.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED
    stub.Predict(pb.PredictRequest(model="cnn", inputs=[image_input(shapes_png)]), timeout=60)
    # The prediction queued behind them all. Only the jobs of the batch already running when
    # the deadlines passed were computed (one forward pass, one IG call); those still queued
    # were dropped.
    ran = _attributions_run(pipeline) - ran_before
    started = _inputs_batched(pipeline) - batched_before - 1  # less the prediction
    assert 1 <= ran == started < 5


def _inputs_batched(pipeline: Pipeline) -> float:
    total = pipeline.metrics.registry.get_sample_value("glimpse_batch_size_sum", {"model": "cnn"})
    return total or 0.0


def _attributions_run(pipeline: Pipeline) -> float:
    labels = {"model": "cnn", "stage": "attribution", "method": "integrated_gradients"}
    count = pipeline.metrics.registry.get_sample_value(
        "glimpse_stage_duration_seconds_count", labels
    )
    return count or 0.0


def test_metrics_count_grpc_calls(
    stub: pb_grpc.GlimpseStub, pipeline: Pipeline, shapes_png: bytes
) -> None:
    stub.Predict(pb.PredictRequest(model="cnn", inputs=[image_input(shapes_png)]))
    grpc_error(stub.Predict, pb.PredictRequest(model="made-up"))
    text = pipeline.metrics.render().decode()
    assert (
        'glimpse_requests_total{code="OK",model="cnn",protocol="grpc",'
        'route="/glimpse.v1.Glimpse/Predict"}'
    ) in text
    assert (
        'glimpse_requests_total{code="NOT_FOUND",model="_unknown",protocol="grpc",'
        'route="/glimpse.v1.Glimpse/Predict"}'
    ) in text


# -- the command-line client -----------------------------------------------------------------------
def test_client_predicts_and_writes_a_heatmap(
    address: str, tmp_path: Path, shapes_png: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "shape.png"
    image.write_bytes(shapes_png)
    assert glimpse_client.main(["predict", str(image), "--address", address]) == 0
    classes = json.loads(capsys.readouterr().out)["predictions"][0]["classes"]
    assert len(classes) == 4 and classes[0]["probability"] >= classes[-1]["probability"]
    out = tmp_path / "heat.png"
    assert (
        glimpse_client.main(
            ["explain", str(image), "--methods", "gradcam", "--out", str(out), "--address", address]
        )
        == 0
    )
    body = json.loads(capsys.readouterr().out)
    assert body["explanations"][0]["image"]["maps"][0]["method"] == "gradcam"
    assert Image.open(io.BytesIO(out.read_bytes())).size == (97, 71)


def test_client_explains_rows_and_reports_errors(
    address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"rows": [ROW, {**ROW, "Promo": 0}]}))
    argv = ["explain", str(rows), "--model", "tabular", "--param", "steps=8", "--address", address]
    assert glimpse_client.main(argv) == 0
    explained = json.loads(capsys.readouterr().out)["explanations"]
    assert [e["row"]["attributions"][0]["method"] for e in explained] == [
        "integrated_gradients"
    ] * 2
    assert glimpse_client.main(["predict", str(rows), "--model", "nope", "--address", address]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_several_targets_match_http(
    stub: pb_grpc.GlimpseStub, http: TestClient, shapes_png: bytes
) -> None:
    body = http.post(
        "/explanations/cnn",
        content=shapes_png,
        params={"methods": "gradcam", "target": "square,cross", "overlay": "false"},
    ).json()
    request = pb.ExplainRequest(
        model="cnn", inputs=[image_input(shapes_png)], methods=["gradcam"], target="square,cross"
    )
    image = stub.Explain(request).explanations[0].image
    assert [t.target.label for t in image.by_target] == ["square", "cross"]
    for got, expected in zip(image.by_target, body["by_target"], strict=True):
        [grid] = got.maps
        values = np.reshape(grid.values, (grid.height, grid.width))
        np.testing.assert_allclose(values, expected["explanations"]["gradcam"]["values"], atol=1e-5)


def test_overlay_format_over_grpc(stub: pb_grpc.GlimpseStub, shapes_png: bytes) -> None:
    """overlay_format asks for JPEG or WebP; Map.overlay carries it, overlay_png stays PNG-only."""
    for fmt, media in (("jpeg", "JPEG"), ("webp", "WEBP"), ("", "PNG")):
        request = pb.ExplainRequest(
            model="cnn", inputs=[image_input(shapes_png)], include_overlay=True, overlay_format=fmt
        )
        [grid] = stub.Explain(request).explanations[0].image.maps
        assert grid.overlay_format == (fmt or "png")
        assert Image.open(io.BytesIO(grid.overlay)).format == media
        assert grid.overlay_png == (grid.overlay if media == "PNG" else b"")
    bad = pb.ExplainRequest(model="cnn", inputs=[image_input(shapes_png)], overlay_format="gif")
    error = grpc_error(stub.Explain, bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "png" in error.details()
