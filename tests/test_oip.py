"""Open Inference Protocol v2 (REST and gRPC) and KServe v1 on real (small) cnn.mar and
tabular.mar, checked against glimpse's own routes on the same pipeline."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.config import Settings
from service.http import create_app
from service.pipeline import Pipeline
from service.proto.inference import grpc_service_pb2 as ipb
from service.proto.inference import grpc_service_pb2_grpc as ipb_grpc
from tests.helpers import LOCAL, ROWS, png, random_image
from tests.servers.grpc_inprocess import grpc_server

HEADER = "Inference-Header-Content-Length"
TOKEN = "oip-secret"


# -- fixtures: the OIP gRPC door onto conftest's two-model pipeline ----------------------------
@pytest.fixture(scope="module")
def address_of(settings: Settings, pipeline: Pipeline) -> Iterator[str]:
    with grpc_server(settings, pipeline) as address:
        yield address


@pytest.fixture(scope="module")
def stub(address_of: str) -> Iterator[ipb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(address_of) as channel:
        yield ipb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def pictures(shapes_png: bytes) -> list[bytes]:
    return [shapes_png, png(random_image(40, 30, seed=4)), png(random_image(64, 64, seed=5))]


def classes(http: TestClient) -> list[str]:
    return list(http.get("/models/cnn").json()["classes"])


def expected_probabilities(http: TestClient, picture: bytes) -> dict[str, float]:
    """/predictions/cnn's answer (the top 5, which is every class of the small cnn)."""
    answer = http.post("/predictions/cnn", content=picture, headers={"content-type": "image/png"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def assert_probabilities(http: TestClient, pictures: list[bytes], got: np.ndarray) -> None:
    names = classes(http)
    assert got.shape == (len(pictures), len(names))
    for picture, row in zip(pictures, got, strict=True):
        for label, p in expected_probabilities(http, picture).items():
            assert abs(float(row[names.index(label)]) - p) < 1e-5


def bytes_tensor(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def split_bytes(raw: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset < len(raw):
        (size,) = struct.unpack_from("<I", raw, offset)
        out.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return out


def binary_infer(
    http: TestClient, model: str, header: dict[str, Any], blobs: list[bytes]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """POST a binary-extension request; the JSON header and each binary output's bytes."""
    head = json.dumps(header).encode()
    answer = http.post(
        f"/v2/models/{model}/infer",
        content=head + b"".join(blobs),
        headers={HEADER: str(len(head)), "content-type": "application/octet-stream"},
    )
    assert answer.status_code == 200, answer.text
    cut = int(answer.headers[HEADER])
    body = json.loads(answer.content[:cut])
    data, offset = {}, cut
    for output in body["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            data[output["name"]] = answer.content[offset : offset + size]
            offset += size
    assert offset == len(answer.content)
    return body, data


def json_output(body: dict[str, Any], name: str) -> np.ndarray:
    output = next(o for o in body["outputs"] if o["name"] == name)
    return np.array(output["data"]).reshape(output["shape"])


# -- v2 REST: server and model metadata, health --------------------------------------------------
def test_server_metadata_and_health(http: TestClient) -> None:
    meta = http.get("/v2").json()
    assert meta["name"] == "glimpse" and "binary_tensor_data" in meta["extensions"]
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2/models/cnn/ready").json() == {"name": "cnn", "ready": True}
    assert http.get("/v2/models/tabular/ready").status_code == 200


def test_model_metadata_lists_inputs_and_outputs(http: TestClient) -> None:
    cnn = http.get("/v2/models/cnn").json()
    assert cnn["name"] == "cnn" and cnn["versions"] == ["1"]
    assert {"name": "image", "datatype": "BYTES", "shape": [-1]} in cnn["inputs"]
    tensor = next(i for i in cnn["inputs"] if i["name"] == "tensor")
    assert tensor["datatype"] == "FP32" and tensor["shape"][:2] == [-1, 3]
    outputs = {o["name"]: o for o in cnn["outputs"]}
    assert outputs["probabilities"]["shape"] == [-1, len(classes(http))]
    assert outputs["labels"]["datatype"] == "BYTES"
    tabular = http.get("/v2/models/tabular").json()
    columns = [c["name"] for c in http.get("/models/tabular").json()["input"]["columns"]]
    assert [i["name"] for i in tabular["inputs"]] == columns
    types = {i["name"]: i["datatype"] for i in tabular["inputs"]}
    assert types["StoreType"] == "BYTES" and types["Date"] == "BYTES"
    assert types["CompetitionDistance"] == "FP32"


def test_health_stays_open_with_a_token(settings: Settings, pipeline: Pipeline) -> None:
    app = create_app(dataclasses.replace(settings, auth_token=TOKEN), pipeline)
    with TestClient(app, base_url=LOCAL) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2").status_code == 401
        assert client.get("/v2/models/cnn").status_code == 401
        authorized = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/v2/models/cnn", headers=authorized).status_code == 200


# -- v2 REST: inference on images ----------------------------------------------------------------
def test_infer_images_as_json_base64(http: TestClient, pictures: list[bytes]) -> None:
    request = {
        "id": "r1",
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(pictures)],
                "data": [base64.b64encode(p).decode() for p in pictures],
            }
        ],
    }
    answer = http.post("/v2/models/cnn/infer", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == "cnn" and body["id"] == "r1"
    probabilities = json_output(body, "probabilities")
    assert_probabilities(http, pictures, probabilities)
    labels = json_output(body, "labels").tolist()
    names = classes(http)
    assert labels == [names[int(i)] for i in probabilities.argmax(axis=1)]


def test_infer_images_with_the_binary_extension(http: TestClient, pictures: list[bytes]) -> None:
    blob = bytes_tensor(pictures)
    header = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(pictures), 1],
                "parameters": {"binary_data_size": len(blob)},
            }
        ],
        "outputs": [
            {"name": "probabilities", "parameters": {"binary_data": True}},
            {"name": "labels", "parameters": {"binary_data": True}},
        ],
    }
    body, data = binary_infer(http, "cnn", header, [blob])
    probabilities = np.frombuffer(data["probabilities"], dtype="<f4").reshape(len(pictures), -1)
    assert_probabilities(http, pictures, probabilities)
    names = classes(http)
    labels = [label.decode() for label in split_bytes(data["labels"])]
    assert labels == [names[int(i)] for i in probabilities.argmax(axis=1)]


def test_binary_data_output_answers_every_output_binary(
    http: TestClient, pictures: list[bytes]
) -> None:
    blob = bytes_tensor(pictures[:1])
    header = {
        "parameters": {"binary_data_output": True},
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": len(blob)},
            }
        ],
    }
    body, data = binary_infer(http, "cnn", header, [blob])
    assert set(data) == {"probabilities", "labels"}


def test_infer_a_preprocessed_fp32_tensor(
    http: TestClient, pipeline: Pipeline, pictures: list[bytes]
) -> None:
    from io import BytesIO

    handler: Any = pipeline.runtime.get("cnn").handler
    images = [Image.open(BytesIO(p)).convert("RGB") for p in pictures]
    tensor = handler.preprocess(images).numpy().astype("<f4")
    header = {
        "inputs": [
            {
                "name": "tensor",
                "datatype": "FP32",
                "shape": list(tensor.shape),
                "parameters": {"binary_data_size": tensor.nbytes},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    body, data = binary_infer(http, "cnn", header, [tensor.tobytes()])
    probabilities = np.frombuffer(data["probabilities"], dtype="<f4").reshape(len(pictures), -1)
    assert_probabilities(http, pictures, probabilities)
    # the same tensor as JSON, explained (maps need no picture; overlays are not drawn)
    request = {
        "parameters": {"explain": "activation"},
        "inputs": [
            {
                "name": "tensor",
                "datatype": "FP32",
                "shape": list(tensor.shape),
                "data": tensor.ravel().tolist(),
            }
        ],
    }
    answer = http.post("/v2/models/cnn/infer", json=request)
    assert answer.status_code == 200, answer.text
    assert json_output(answer.json(), "explanation").shape[0] == len(pictures)


def test_explain_parameter_adds_the_map(http: TestClient, pictures: list[bytes]) -> None:
    request = {
        "parameters": {"explain": "gradcam"},
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [2],
                "data": [base64.b64encode(p).decode() for p in pictures[:2]],
            }
        ],
    }
    answer = http.post("/v2/models/cnn/infer", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    maps = json_output(body, "explanation")
    assert_probabilities(http, pictures[:2], json_output(body, "probabilities"))
    for picture, grid in zip(pictures[:2], maps, strict=True):
        own = http.post(
            "/explanations/cnn?methods=gradcam&overlay=false",
            content=picture,
            headers={"content-type": "image/png"},
        ).json()["explanations"]["gradcam"]
        assert grid.shape == (own["height"], own["width"])
        assert np.allclose(grid, np.array(own["values"]), atol=1e-5)


# -- v2 REST: tabular ------------------------------------------------------------------------------
def column_inputs(http: TestClient, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One v2 input per column: text as BYTES, numbers as FP64 (absent values: NaN)."""
    columns = http.get("/models/tabular").json()["input"]["columns"]
    inputs = []
    for column in columns:
        name = column["name"]
        if column["type"] == "continuous":
            values = [row.get(name) for row in rows]
            data = [math.nan if v is None else float(v) for v in values]
            inputs.append({"name": name, "datatype": "FP64", "shape": [len(rows)], "data": data})
        else:
            data = [str(row[name]) for row in rows]
            inputs.append({"name": name, "datatype": "BYTES", "shape": [len(rows)], "data": data})
    return inputs


def finite_rows() -> list[dict[str, Any]]:
    """ROWS with their missing continuous values left out (JSON has no NaN)."""
    return [{k: v for k, v in row.items() if v is not None} for row in ROWS]


def test_infer_tabular_one_input_per_column(http: TestClient) -> None:
    rows = [ROWS[0], ROWS[0]]
    answer = http.post("/v2/models/tabular/infer", json={"inputs": column_inputs(http, rows)})
    assert answer.status_code == 200, answer.text
    predictions = json_output(answer.json(), "predictions")
    expected = http.post("/predictions/tabular", json=rows).json()
    assert np.allclose(predictions, expected, rtol=1e-6)


def test_tabular_binary_columns_and_explain(http: TestClient) -> None:
    rows = [ROWS[0], ROWS[2]]
    header: dict[str, Any] = {
        "parameters": {"explain": "integrated_gradients", "steps": 16},
        "inputs": [],
    }
    blobs = []
    for item in column_inputs(http, rows):
        if item["datatype"] == "BYTES":
            blob = bytes_tensor([str(v).encode() for v in item["data"]])
        else:
            blob = np.array(item["data"], dtype="<f8").tobytes()
        header["inputs"].append({**item, "parameters": {"binary_data_size": len(blob)}})
        del header["inputs"][-1]["data"]
        blobs.append(blob)
    header["outputs"] = [
        {"name": n, "parameters": {"binary_data": True}}
        for n in ("predictions", "attributions", "base_value")
    ]
    body, data = binary_infer(http, "tabular", header, blobs)
    predictions = np.frombuffer(data["predictions"], dtype="<f8")
    attributions = np.frombuffer(data["attributions"], dtype="<f4").reshape(len(rows), -1)
    base = np.frombuffer(data["base_value"], dtype="<f8")
    own = http.post(
        "/explanations/tabular?methods=integrated_gradients&steps=16", json=rows
    ).json()["rows"]
    columns = [c["name"] for c in http.get("/models/tabular").json()["input"]["columns"]]
    for i, row in enumerate(own):
        assert abs(predictions[i] - row["prediction"]) < 1e-6 * row["prediction"]
        assert abs(base[i] - row["base_value"]) < 1e-9
        expected = [row["attributions"]["integrated_gradients"][c] for c in columns]
        assert np.allclose(attributions[i], expected, atol=1e-5)


# -- v2 REST: errors in the protocol's shape -------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "body", "headers", "status", "says"),
    [
        ("nope", {"inputs": []}, {}, 404, "no model named"),
        ("cnn", b"{not json", {}, 400, "not JSON"),
        ("cnn", {"inputs": "x"}, {}, 400, '"inputs" must be a JSON list'),
        (
            "cnn",
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["aGk="]}]},
            {},
            400,
            "needs 2 values",
        ),
        (
            "cnn",
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%"]}]},
            {},
            400,
            "base64",
        ),
        (
            "cnn",
            {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}]},
            {},
            422,
            "takes BYTES",
        ),
        (
            "cnn",
            {
                "inputs": [
                    {"name": "t", "datatype": "FP32", "shape": [1, 3, 2, 2], "data": [0] * 12}
                ]
            },
            {},
            422,
            "preprocessed images of shape",
        ),
        (
            "tabular",
            {"inputs": [{"name": "Nope", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
            {},
            422,
            "not columns of tabular",
        ),
        (
            "cnn",
            {"parameters": {"steps": 3}, "inputs": []},
            {},
            422,
            "explain=<method>",
        ),
        ("cnn", {"inputs": []}, {HEADER: "999999"}, 400, HEADER),
    ],
)
def test_errors_are_the_protocols_shape(
    http: TestClient, model: str, body: Any, headers: dict[str, str], status: int, says: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = http.post(f"/v2/models/{model}/infer", content=content, headers=headers)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"} and says in answer.json()["error"]


def test_bad_images_unknown_outputs_and_methods_are_refused(
    http: TestClient, pictures: list[bytes]
) -> None:
    def infer(data: list[str], **extra: Any) -> Any:
        image = {"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data}
        return http.post("/v2/models/cnn/infer", json={"inputs": [image], **extra})

    picture = base64.b64encode(pictures[0]).decode()
    not_an_image = infer([base64.b64encode(b"plain text").decode()])
    assert not_an_image.status_code == 400 and "error" in not_an_image.json()
    unknown = infer([picture], outputs=[{"name": "explanation"}])
    assert unknown.status_code == 422 and "explain=<method>" in unknown.json()["error"]
    method = infer([picture], parameters={"explain": "no_such_method"})
    assert method.status_code == 422 and "no_such_method" in method.json()["error"]
    assert set(http.get("/v2/models/nope").json()) == {"error"}
    assert http.get("/v2/models/nope/ready").status_code == 404


# -- KServe v1 -------------------------------------------------------------------------------------
def test_kserve_v1_predict_and_explain_images(http: TestClient, pictures: list[bytes]) -> None:
    instances = [{"b64": base64.b64encode(p).decode()} for p in pictures[:2]]
    assert http.get("/v1/models/cnn").json() == {"name": "cnn", "ready": True}
    answer = http.post("/v1/models/cnn:predict", json={"instances": instances})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    for picture, prediction in zip(pictures[:2], predictions, strict=True):
        expected = expected_probabilities(http, picture)
        assert prediction.keys() == expected.keys()
        assert all(abs(prediction[k] - v) < 1e-5 for k, v in expected.items())
    explained = http.post(
        "/v1/models/cnn:explain?methods=activation&overlay=false", json={"instances": instances}
    )
    assert explained.status_code == 200, explained.text
    explanations = explained.json()["explanations"]
    assert len(explanations) == 2
    assert all("activation" in e["explanations"] and e["model"] == "cnn" for e in explanations)


def test_kserve_v1_predict_and_explain_rows(http: TestClient) -> None:
    rows = finite_rows()
    answer = http.post("/v1/models/tabular:predict", json={"instances": rows})
    assert answer.status_code == 200, answer.text
    expected = http.post("/predictions/tabular", json=rows).json()
    assert np.allclose(answer.json()["predictions"], expected, rtol=1e-6)
    explained = http.post("/v1/models/tabular:explain?steps=8", json={"instances": rows[:2]})
    assert explained.status_code == 200, explained.text
    explanations = explained.json()["explanations"]
    assert [e["prediction"] for e in explanations] == pytest.approx(expected[:2], rel=1e-6)
    assert all("integrated_gradients" in e["attributions"] for e in explanations)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/models/nope:predict", {"instances": [{"b64": ""}]}, 404),
        ("/v1/models/cnn:predict", {"instances": []}, 400),
        ("/v1/models/cnn:predict", {"rows": []}, 400),
        ("/v1/models/cnn:predict", {"instances": [{"b64": "%%"}]}, 400),
        ("/v1/models/cnn:explain?methods=nope", {"instances": [{"b64": "aGk="}]}, 422),
    ],
)
def test_kserve_v1_errors(http: TestClient, path: str, body: Any, status: int) -> None:
    answer = http.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"}


def test_v2_routes_are_labelled_by_template_in_metrics(http: TestClient) -> None:
    http.get("/v2/models/cnn")
    text = http.get("/metrics").text
    assert 'route="/v2/models/{name}"' in text
    assert 'route="/v1/models/{name}:predict"' in text


# -- v2 gRPC ---------------------------------------------------------------------------------------
def test_grpc_health_and_metadata(
    stub: ipb_grpc.GRPCInferenceServiceStub, http: TestClient
) -> None:
    assert stub.ServerLive(ipb.ServerLiveRequest()).live
    assert stub.ServerReady(ipb.ServerReadyRequest()).ready
    assert stub.ModelReady(ipb.ModelReadyRequest(name="cnn")).ready
    meta = stub.ServerMetadata(ipb.ServerMetadataRequest())
    assert meta.name == "glimpse" and "binary_tensor_data" in meta.extensions
    model = stub.ModelMetadata(ipb.ModelMetadataRequest(name="cnn"))
    assert model.name == "cnn" and [i.name for i in model.inputs] == ["image", "tensor"]
    outputs = {o.name: list(o.shape) for o in model.outputs}
    assert outputs["probabilities"] == [-1, len(classes(http))]


def test_grpc_infer_images_from_raw_contents(
    stub: ipb_grpc.GRPCInferenceServiceStub, http: TestClient, pictures: list[bytes]
) -> None:
    image = ipb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[3, 1])
    request = ipb.ModelInferRequest(
        model_name="cnn", id="g1", inputs=[image], raw_input_contents=[bytes_tensor(pictures)]
    )
    answer = stub.ModelInfer(request)
    assert answer.id == "g1" and [o.name for o in answer.outputs] == ["probabilities", "labels"]
    assert list(answer.outputs[0].shape) == [3, len(classes(http))]
    probabilities = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(3, -1)
    assert_probabilities(http, pictures, probabilities)
    labels = [label.decode() for label in split_bytes(answer.raw_output_contents[1])]
    assert labels == [classes(http)[int(i)] for i in probabilities.argmax(axis=1)]


def test_grpc_infer_typed_contents_and_explain(
    stub: ipb_grpc.GRPCInferenceServiceStub, http: TestClient, pictures: list[bytes]
) -> None:
    image = ipb.ModelInferRequest.InferInputTensor(
        name="image",
        datatype="BYTES",
        shape=[1],
        contents=ipb.InferTensorContents(bytes_contents=[pictures[0]]),
    )
    request = ipb.ModelInferRequest(
        model_name="cnn",
        inputs=[image],
        parameters={"explain": ipb.InferParameter(string_param="activation")},
        outputs=[ipb.ModelInferRequest.InferRequestedOutputTensor(name="explanation")],
    )
    answer = stub.ModelInfer(request)
    assert [o.name for o in answer.outputs] == ["explanation"]
    shape = list(answer.outputs[0].shape)
    grid = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(shape)[0]
    own = http.post(
        "/explanations/cnn?methods=activation&overlay=false",
        content=pictures[0],
        headers={"content-type": "image/png"},
    ).json()["explanations"]["activation"]
    assert np.allclose(grid, np.array(own["values"]), atol=1e-5)


def test_grpc_infer_tabular_columns(
    stub: ipb_grpc.GRPCInferenceServiceStub, http: TestClient
) -> None:
    rows = [ROWS[0], ROWS[1]]
    inputs, raw = [], []
    for item in column_inputs(http, rows):
        tensor = ipb.ModelInferRequest.InferInputTensor(
            name=item["name"], datatype=item["datatype"], shape=item["shape"]
        )
        inputs.append(tensor)
        if item["datatype"] == "BYTES":
            raw.append(bytes_tensor([str(v).encode() for v in item["data"]]))
        else:
            raw.append(np.array(item["data"], dtype="<f8").tobytes())
    request = ipb.ModelInferRequest(model_name="tabular", inputs=inputs, raw_input_contents=raw)
    answer = stub.ModelInfer(request)
    predictions = np.frombuffer(answer.raw_output_contents[0], dtype="<f8")
    expected = http.post("/predictions/tabular", json=finite_rows()[:2]).json()
    assert np.allclose(predictions, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("request_", "code", "says"),
    [
        (ipb.ModelInferRequest(model_name="nope"), grpc.StatusCode.NOT_FOUND, "no model named"),
        (
            ipb.ModelInferRequest(
                model_name="cnn",
                inputs=[
                    ipb.ModelInferRequest.InferInputTensor(
                        name="image", datatype="BYTES", shape=[2]
                    )
                ],
                raw_input_contents=[b"\x05\x00\x00\x00ab"],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "says 5 bytes",
        ),
        (
            ipb.ModelInferRequest(
                model_name="cnn",
                inputs=[
                    ipb.ModelInferRequest.InferInputTensor(
                        name="t", datatype="FP16", shape=[1, 3, 2, 2]
                    )
                ],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "raw_input_contents",
        ),
    ],
)
def test_grpc_errors_are_status_codes(
    stub: ipb_grpc.GRPCInferenceServiceStub,
    request_: ipb.ModelInferRequest,
    code: grpc.StatusCode,
    says: str,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request_)
    assert raised.value.code() == code and says in raised.value.details()
    with pytest.raises(grpc.RpcError) as unknown:
        stub.ModelMetadata(ipb.ModelMetadataRequest(name="nope"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_metrics_are_labelled_by_rpc(
    stub: ipb_grpc.GRPCInferenceServiceStub, pipeline: Pipeline
) -> None:
    stub.ServerLive(ipb.ServerLiveRequest())
    text = pipeline.metrics.render().decode()
    assert 'route="/inference.GRPCInferenceService/ServerLive"' in text


def test_grpc_infer_needs_the_token(settings: Settings, pipeline: Pipeline) -> None:
    with (
        grpc_server(dataclasses.replace(settings, auth_token=TOKEN), pipeline) as address,
        grpc.insecure_channel(address) as channel,
    ):
        guarded = ipb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            guarded.ServerMetadata(ipb.ServerMetadataRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = [("authorization", f"Bearer {TOKEN}")]
        assert guarded.ServerMetadata(ipb.ServerMetadataRequest(), metadata=metadata).name


def test_grpc_reflection_lists_the_inference_service(address_of: str) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(address_of) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(iter(stub.ServerReflectionInfo(iter([request]))))
    names = [s.name for s in answer.list_services_response.service]
    assert "inference.GRPCInferenceService" in names and "glimpse.v1.Glimpse" in names
