"""Both doors fuzzed with hypothesis: whatever a client sends, the answer is never a 5xx (HTTP)
or INTERNAL / UNKNOWN (gRPC), and the server still predicts afterwards.

Inputs (tests/strategies.py): image files of every format and mode, intact, truncated and
corrupted, and random bytes; method names, targets and every registered method parameter with
words ("nan", "inf"), huge numbers, negatives and unicode; tabular rows with columns missing,
added, of the wrong type, nested, huge, NaN and Infinity. Seeds are fixed (derandomize), the
example counts bounded and deadlines off, so a run is the same run every time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from service import client as glimpse_client
from service.config import Settings
from service.explain import REGISTRY
from service.http import create_app
from service.pipeline import Pipeline
from service.proto.glimpse.v1 import glimpse_pb2 as pb
from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc
from tests import strategies as fuzz
from tests.helpers import LOCAL, ROW

# Codes that mean the server failed, not the client.
SERVER_FAULTS = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNIMPLEMENTED,
}
IMAGE_ROUTES = ["/predictions/cnn", "/explanations/cnn", "/heatmaps/cnn"]
CONTENT_TYPES = ["image/png", "application/octet-stream", "image/jpeg", "", "multipart"]
FAST = {"steps": "4", "samples": "2", "internal_batch_size": "16", "max_steps": "16"}
DEFAULT_METHOD = {"image": "activation", "tabular": "integrated_gradients"}
SOMETIMES = st.sampled_from([False, False, True])  # an optional field is set one time in three
FORMATS = st.one_of(st.sampled_from(["png", "jpeg", "webp", "PNG", "gif", "0"]), fuzz.TEXT)


def fuzz_settings(examples: int) -> settings:
    """A fixed seed, `examples` examples, no deadline (the machine is shared) and no database
    (nothing written into the checkout)."""
    return settings(
        derandomize=True,
        max_examples=examples,
        deadline=None,
        database=None,
        # function_scoped_fixture: serving_after_each_test runs once per test, on purpose.
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


# -- one pipeline, two doors -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def http(settings: Settings, pipeline: Pipeline) -> Iterator[TestClient]:
    app = create_app(settings, pipeline)
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def classes(pipeline: Pipeline) -> list[str]:
    return list(pipeline.runtime.get("cnn").describe()["classes"])


@pytest.fixture(scope="module")
def layers(pipeline: Pipeline) -> list[str]:
    return [layer["name"] for layer in pipeline.runtime.get("cnn").describe()["layers"]]


@pytest.fixture(autouse=True)
def serving_after_each_test(
    http: TestClient, stub: pb_grpc.GlimpseStub, shapes_png: bytes
) -> Iterator[None]:
    """After every test of this module, both doors still answer a plain prediction."""
    yield
    still_serving(http, stub, shapes_png)


# -- the property ----------------------------------------------------------------------------------
def counted(outcome: str) -> None:
    """Tally `outcome` for `pytest --hypothesis-show-statistics` (inside a hypothesis test)."""
    if currently_in_test_context():
        event(outcome)


def no_server_error(response: Any) -> None:
    counted(f"HTTP {response.status_code}")
    assert response.status_code < 500, f"{response.status_code}: {response.text[:1000]}"


def grpc_answers(call: Callable[..., Any], request: Any) -> None:
    """The call succeeds or fails with a client's status, never a server fault."""
    try:
        call(request, timeout=120)
        counted("gRPC OK")
    except grpc.RpcError as error:
        counted(f"gRPC {error.code().name}")
        assert error.code() not in SERVER_FAULTS, f"{error.code()}: {error.details()}"


def still_serving(http: TestClient, stub: pb_grpc.GlimpseStub, image: bytes) -> None:
    """A plain prediction answers on both doors, for both models."""
    assert http.post("/predictions/cnn", content=image).status_code == 200
    assert http.post("/predictions/tabular", json=ROW).status_code == 200
    stub.Predict(pb.PredictRequest(model="cnn", inputs=[pb.Input(image=image)]), timeout=60)
    row = pb.Input(row=glimpse_client.encode_row(ROW))
    stub.Predict(pb.PredictRequest(model="tabular", inputs=[row]), timeout=60)


def post_image(http: TestClient, route: str, data: bytes, content_type: str, **params: str) -> Any:
    if content_type == "multipart":
        files = {"data": ("upload", data, "application/octet-stream")}
        return http.post(route, files=files, params=params)
    headers = {"content-type": content_type} if content_type else {}
    return http.post(route, content=data, headers=headers, params=params)


# -- image bytes -----------------------------------------------------------------------------------
@fuzz_settings(90)
@given(
    data=fuzz.image_bytes(),
    route=st.sampled_from(IMAGE_ROUTES),
    content_type=st.sampled_from(CONTENT_TYPES),
    method=st.sampled_from(["activation", "gradcam", "saliency"]),
)
def test_http_image_bytes(
    http: TestClient, data: bytes, route: str, content_type: str, method: str
) -> None:
    params = {} if route.startswith("/predictions") else {"methods": method}
    no_server_error(post_image(http, route, data, content_type, **params))


@fuzz_settings(60)
@given(
    images=st.lists(fuzz.image_bytes(), min_size=1, max_size=3),
    explain=st.booleans(),
    overlay=st.booleans(),
)
def test_grpc_image_bytes(
    stub: pb_grpc.GlimpseStub, images: list[bytes], explain: bool, overlay: bool
) -> None:
    inputs = [pb.Input(image=data) for data in images]
    if explain:
        request = pb.ExplainRequest(model="cnn", inputs=inputs, include_overlay=overlay)
        grpc_answers(stub.Explain, request)
    else:
        grpc_answers(stub.Predict, pb.PredictRequest(model="cnn", inputs=inputs))


def float_tiff(*specials: float) -> bytes:
    """A 32-bit float TIFF with `specials` (NaN, infinities) among ordinary samples."""
    grey = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    grey.ravel()[: len(specials)] = specials
    return fuzz.encode_image(Image.fromarray(grey), "TIFF")


# Edge cases pinned (found by the fuzz or by reading the code it led to): covered whatever
# the draw. Float images: NaN and infinities once made the rescale to 8 bits warn (a 500
# under warnings-as-errors) and cast NaN to arbitrary bytes.
PINNED_IMAGES = [
    float_tiff(math.inf, -math.inf),
    float_tiff(math.nan),
    float_tiff(*[math.nan] * 64),
]


@pytest.mark.parametrize("data", PINNED_IMAGES, ids=range(len(PINNED_IMAGES)))
def test_pinned_images(http: TestClient, stub: pb_grpc.GlimpseStub, data: bytes) -> None:
    for route in IMAGE_ROUTES:
        no_server_error(post_image(http, route, data, "image/tiff"))
    grpc_answers(stub.Explain, pb.ExplainRequest(model="cnn", inputs=[pb.Input(image=data)]))


# -- methods, targets and parameters ---------------------------------------------------------------
def fast(methods: list[str], kind: str) -> dict[str, str]:
    """FAST's values for the parameters `methods` (or the kind's default method) take: the
    costly methods stay quick, and no parameter is refused for lack of a method taking it."""
    chosen = [m for m in methods if m in REGISTRY] if methods else [DEFAULT_METHOD[kind]]
    return {k: v for k, v in FAST.items() if any(k in REGISTRY[m].params for m in chosen)}


def explain_query(
    data: st.DataObject, kind: str, layers: list[str]
) -> tuple[list[str], dict[str, str]]:
    """Drawn method names and their parameters (FAST's where nothing else was drawn)."""
    methods = data.draw(fuzz.methods(kind), "methods")
    params = data.draw(fuzz.method_params(methods, layers), "params")
    return methods, {**fast(methods, kind), **params}


@fuzz_settings(150)
@given(data=st.data(), route=st.sampled_from(["/explanations/cnn", "/heatmaps/cnn"]))
def test_http_image_params(
    http: TestClient,
    shapes_png: bytes,
    classes: list[str],
    layers: list[str],
    data: st.DataObject,
    route: str,
) -> None:
    methods, params = explain_query(data, "image", layers)
    params["methods" if data.draw(st.booleans(), "plural") else "method"] = ",".join(methods)
    if data.draw(SOMETIMES, "with target"):
        params["target"] = data.draw(fuzz.targets(classes), "target")
    for key in ("format", "overlay"):
        if data.draw(SOMETIMES, f"with {key}"):
            params[key] = data.draw(FORMATS if key == "format" else fuzz.TEXT, key)
    no_server_error(http.post(route, content=shapes_png, params=params))


@fuzz_settings(100)
@given(data=st.data(), model=st.sampled_from(["cnn", "tabular"]))
def test_grpc_params(
    stub: pb_grpc.GlimpseStub,
    shapes_png: bytes,
    classes: list[str],
    layers: list[str],
    data: st.DataObject,
    model: str,
) -> None:
    kind = "image" if model == "cnn" else "tabular"
    item = pb.Input(image=shapes_png)
    if model == "tabular":
        item = pb.Input(row=glimpse_client.encode_row(ROW))
    methods, params = explain_query(data, kind, layers)
    request = pb.ExplainRequest(
        model=model,
        inputs=[item],
        methods=methods,
        target=data.draw(st.one_of(st.just(""), st.just(""), fuzz.targets(classes)), "target"),
        params=params,
        include_overlay=data.draw(st.booleans(), "overlay"),
        overlay_format=data.draw(FORMATS, "format") if data.draw(SOMETIMES) else "",
    )
    grpc_answers(stub.Explain, request)


@fuzz_settings(50)
@given(data=st.data())
def test_http_tabular_params(http: TestClient, data: st.DataObject) -> None:
    methods, params = explain_query(data, "tabular", [])
    params["methods"] = ",".join(methods)
    no_server_error(http.post("/explanations/tabular", json=ROW, params=params))


# Edge cases pinned, as above.
PINNED_QUERIES = [
    {"target": "²"},  # str.isdigit() says yes, int() says no
    {"target": "9" * 5000},  # past int()'s 4300-digit limit
    {"target": "٣"},  # an Arabic-Indic three: int() reads it, no class has that index
    {"methods": "occlusion", "window": "9" * 5000},
    {"methods": "integrated_gradients", "steps": "1e400"},
]


@pytest.mark.parametrize("query", PINNED_QUERIES, ids=range(len(PINNED_QUERIES)))
def test_pinned_queries(
    http: TestClient, stub: pb_grpc.GlimpseStub, shapes_png: bytes, query: dict[str, str]
) -> None:
    no_server_error(http.post("/explanations/cnn", content=shapes_png, params=query))
    methods = [m for m in query.get("methods", "").split(",") if m]
    params = {k: v for k, v in query.items() if k not in ("methods", "target")}
    request = pb.ExplainRequest(
        model="cnn",
        inputs=[pb.Input(image=shapes_png)],
        methods=methods,
        target=query.get("target", ""),
        params=params,
    )
    grpc_answers(stub.Explain, request)


# NaN passes a float parameter's bounds (NaN < low and NaN > high are both false) and
# torch.normal then fails: a 500. Refusing non-finite parameters is issue12-limits' work.
@pytest.mark.parametrize("method", ["smoothgrad", "gradient_shap"])
@pytest.mark.parametrize("value", ["nan", "-NaN"])
def test_nan_parameters(
    http: TestClient, stub: pb_grpc.GlimpseStub, shapes_png: bytes, method: str, value: str
) -> None:
    params = {"stdev": value, "samples": "2"}
    query = {"methods": method, **params}
    no_server_error(http.post("/explanations/cnn", content=shapes_png, params=query))
    request = pb.ExplainRequest(
        model="cnn", inputs=[pb.Input(image=shapes_png)], methods=[method], params=params
    )
    grpc_answers(stub.Explain, request)


# -- tabular rows ----------------------------------------------------------------------------------
@fuzz_settings(120)
@given(
    body=fuzz.row_bodies(),
    route=st.sampled_from(["/predictions/tabular", "/explanations/tabular"]),
    content_type=st.sampled_from(["application/json", "application/json", "", "text/plain"]),
)
def test_http_rows(http: TestClient, body: str, route: str, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    params = fast([], "tabular")
    response = http.post(route, content=body.encode(), headers=headers, params=params)
    no_server_error(response)


VALUES = st.one_of(
    st.builds(pb.Value, string_value=st.one_of(fuzz.TEXT, st.sampled_from(["", "2014-01-06"]))),
    st.builds(pb.Value, number_value=st.floats(allow_nan=True, allow_infinity=True)),
    st.just(pb.Value(null_value=0)),
    st.just(pb.Value()),  # no kind set
)


@st.composite
def pb_rows(draw: st.DrawFn) -> pb.Row:
    """ROW on the wire with columns dropped, replaced by any Value or added."""
    values = {k: glimpse_client.encode_value(v) for k, v in ROW.items()}
    columns = st.lists(st.sampled_from(sorted(ROW)), max_size=2, unique=True)
    for column in draw(columns):
        del values[column]
    for column in draw(columns):
        values[column] = draw(VALUES)
    values.update(draw(st.dictionaries(fuzz.TEXT, VALUES, max_size=2)))
    return pb.Row(values=values)


@fuzz_settings(70)
@given(
    row_list=st.lists(pb_rows(), max_size=3),
    explain=st.booleans(),
    image=st.sampled_from([False, False, False, True]),
)
def test_grpc_rows(
    stub: pb_grpc.GlimpseStub, row_list: list[pb.Row], explain: bool, image: bool
) -> None:
    inputs = [pb.Input(row=row) for row in row_list]
    if image:  # an image among the rows: the wrong kind for a tabular model
        inputs.append(pb.Input(image=b"\x89PNG\r\n\x1a\n"))
    if explain:
        request = pb.ExplainRequest(model="tabular", inputs=inputs, params=fast([], "tabular"))
        grpc_answers(stub.Explain, request)
    else:
        grpc_answers(stub.Predict, pb.PredictRequest(model="tabular", inputs=inputs))


# Edge cases pinned, as above: numbers past what int() and float() take.
PINNED_BODIES = [
    fuzz.to_json({**ROW, "CompetitionDistance": fuzz.Literal("1" * 400)}),  # float() overflows
    fuzz.to_json({**ROW, "Store": fuzz.Literal("1" * 5000)}),  # json.loads: past 4300 digits
    fuzz.to_json([{**ROW, "Date": fuzz.Literal("1e400")}]),
]


@pytest.mark.parametrize("body", PINNED_BODIES, ids=range(len(PINNED_BODIES)))
@pytest.mark.parametrize("route", ["/predictions/tabular", "/explanations/tabular"])
def test_pinned_bodies(http: TestClient, route: str, body: str) -> None:
    headers = {"content-type": "application/json"}
    no_server_error(http.post(route, content=body, headers=headers, params=fast([], "tabular")))


# json.loads recurses once per level and fails with RecursionError (a 500) on deep nesting;
# bounding the depth is issue12-limits' work.
def test_deeply_nested_json(http: TestClient) -> None:
    body = "[" * 100_000 + "]" * 100_000
    headers = {"content-type": "application/json"}
    no_server_error(http.post("/predictions/tabular", content=body, headers=headers))


# -- afterwards ------------------------------------------------------------------------------------
def test_still_serving_after_the_fuzz(
    http: TestClient, stub: pb_grpc.GlimpseStub, shapes_png: bytes
) -> None:
    """Runs last in this module: both doors, both models, still answer a plain prediction,
    and the metrics page still renders."""
    still_serving(http, stub, shapes_png)
    assert http.get("/metrics").status_code == 200
