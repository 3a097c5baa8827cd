"""Bounded cost per request: every limit gives its documented refusal, naming the limit, on
HTTP and (where it applies) gRPC, and the server answers a normal prediction right after.

One runtime (cnn + tabular) serves pipelines with small limits; each door gets its own app
or in-process server on those pipelines.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from service import client as glimpse_client
from service import imaging, render
from service.config import ConfigError, Settings
from service.errors import DeadlineExceeded, OverBudget, SchemaError
from service.explain import REGISTRY, build, methods_for
from service.explain.base import PASS_ELEMENTS, ImageBatch, ModelInput
from service.flows.base import Call
from service.flows.image import ImageFlow
from service.flows.image_batch import ImageJob
from service.flows.tabular import TabularFlow, TabularJob
from service.handlers.image import ImageHandler
from service.http import create_app
from service.limits import DEFAULT_LIMITS, Deadline, Limits
from service.pipeline import Pipeline
from service.proto.glimpse.v1 import glimpse_pb2 as pb
from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc
from service.runtime import Runtime
from service.timing import Timings
from tests.helpers import LOCAL, ROW, ROWS, png, random_image
from tests.servers.grpc_inprocess import grpc_server

LIMITS = Limits(
    max_inputs=6,
    max_rows=4,
    explain_budget=500,
    max_overlay_pixels=10_000,
    request_timeout=30.0,
    max_concurrency=1,
)


# -- fixtures: one runtime, pipelines with small limits, both doors --------------------------------
@pytest.fixture(scope="module")
def runtime2(cnn_archive: Path, tabular_archive: Path, settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.load(
        [cnn_archive, tabular_archive], max_image_pixels=settings.max_image_pixels
    )
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def pipeline(runtime2: Runtime) -> Pipeline:
    return Pipeline(runtime2, LIMITS)


@pytest.fixture(scope="module")
def hasty(runtime2: Runtime) -> Pipeline:
    """The same limits with a time limit of one second."""
    return Pipeline(runtime2, dataclasses.replace(LIMITS, request_timeout=1.0))


@pytest.fixture(scope="module")
def hasty_http(settings: Settings, hasty: Pipeline) -> Iterator[TestClient]:
    with TestClient(create_app(settings, hasty), base_url=LOCAL) as client:
        yield client


@pytest.fixture(scope="module")
def hasty_stub(settings: Settings, hasty: Pipeline) -> Iterator[pb_grpc.GlimpseStub]:
    with grpc_server(settings, hasty) as address, grpc.insecure_channel(address) as channel:
        yield pb_grpc.GlimpseStub(channel)


def image_input(data: bytes) -> pb.Input:
    return pb.Input(image=data)


def row_input(row: dict[str, Any]) -> pb.Input:
    return pb.Input(row=glimpse_client.encode_row(row))


def grpc_error(call: Any, request: Any, timeout: float = 30) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=timeout)
    return caught.value


def still_serving(http: TestClient, stub: pb_grpc.GlimpseStub | None, image: bytes) -> None:
    """A normal prediction right after a refusal, on each door."""
    response = http.post("/predictions/cnn", content=image)
    assert response.status_code == 200 and len(response.json()) == 4
    if stub is not None:
        reply = stub.Predict(pb.PredictRequest(model="cnn", inputs=[image_input(image)]))
        assert len(reply.predictions[0].classes) == 4


def refused(response: Any, status: int, code: str, *words: str) -> str:
    """The message of an HTTP refusal, checked for its status, code and `words`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    for word in words:
        assert word in body["message"], body["message"]
    return str(body["message"])


# -- Settings --------------------------------------------------------------------------------------
def test_limits_are_settings_with_their_variables() -> None:
    assert Settings().limits() == DEFAULT_LIMITS
    environ = {"GLIMPSE_MAX_INPUTS": "3", "GLIMPSE_REQUEST_TIMEOUT": "0.5"}
    limits = Settings.from_env(environ).limits()
    assert (limits.max_inputs, limits.request_timeout) == (3, 0.5)
    for variable in ("GLIMPSE_MAX_ROWS", "GLIMPSE_EXPLAIN_BUDGET", "GLIMPSE_MAX_CONCURRENCY"):
        with pytest.raises(ConfigError, match=f"set {variable} to a value above 0"):
            Settings.from_env({variable: "0"})
    with pytest.raises(ConfigError, match="GLIMPSE_REQUEST_TIMEOUT must be a finite number"):
        Settings.from_env({"GLIMPSE_REQUEST_TIMEOUT": "inf"})


# -- inputs and rows per request -------------------------------------------------------------------
def test_inputs_per_request_over_grpc(
    http: TestClient, stub: pb_grpc.GlimpseStub, shapes_png: bytes
) -> None:
    for rpc, request_type in ((stub.Predict, pb.PredictRequest), (stub.Explain, pb.ExplainRequest)):
        inputs = [image_input(shapes_png)] * 7
        error = grpc_error(rpc, request_type(model="cnn", inputs=inputs))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "7 inputs" in error.details() and "GLIMPSE_MAX_INPUTS" in error.details()
    reply = stub.Predict(pb.PredictRequest(model="cnn", inputs=[image_input(shapes_png)] * 6))
    assert len(reply.predictions) == 6
    still_serving(http, stub, shapes_png)


def test_rows_per_request_on_both_doors(
    http: TestClient, stub: pb_grpc.GlimpseStub, shapes_png: bytes
) -> None:
    five = [ROW] * 5
    for route in ("/predictions/tabular", "/explanations/tabular"):
        response = http.post(route, json={"rows": five})
        refused(response, 413, "payload_too_large", "5 rows", "limit of 4", "GLIMPSE_MAX_ROWS")
    assert len(http.post("/predictions/tabular", json=[ROW] * 4).json()) == 4
    request = pb.PredictRequest(model="tabular", inputs=[row_input(ROW)] * 5)
    error = grpc_error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "GLIMPSE_MAX_ROWS" in error.details()
    still_serving(http, stub, shapes_png)


# -- the explanation budget ------------------------------------------------------------------------
def test_each_method_says_what_it_costs(runtime2: Runtime) -> None:
    image = ModelInput((48, 48))
    costs = {name: build("image", name, {}).cost(image) for name in methods_for("image")}
    assert costs == {
        "activation": 0,
        "gradcam": 1,
        "saliency": 1,
        "integrated_gradients": 50,
        "smoothgrad": 16,
        "gradient_shap": 32,
        "occlusion": 11 * 11,  # window 8, stride 4 on 48: (48 - 8) // 4 + 1 = 11 per side
    }
    assert build("image", "occlusion", {"window": 48, "stride": 48}).cost(image) == 1
    assert build("image", "occlusion", {"stride": 5}).cost(ModelInput((224, 224))) == 44 * 44
    assert build("image", "integrated_gradients", {"steps": 7}).cost(image) == 7
    flow = runtime2.get("tabular").flow
    assert isinstance(flow, TabularFlow) and flow.model_input.references == 64
    ig = build("tabular", "integrated_gradients", {})
    assert ig.cost(flow.model_input) == 50 * 64  # every path point from each reference row


def test_the_default_budget_covers_every_documented_default(runtime2: Runtime) -> None:
    """Each method at its defaults on one image of either model, all of them at once, the
    README's examples, and the default tabular explanation of a few rows fit the default
    budget; what the budget refuses is far beyond them."""
    call = _call(runtime2, "cnn", DEFAULT_LIMITS)
    every = {name: build("image", name, {}) for name in methods_for("image")}
    for size in ((48, 48), (224, 224)):  # glimpse's cnn, and a TorchServe image_classifier
        for name, method in every.items():
            call.check_budget({name: method}, ModelInput(size), inputs=1)
    assert call.check_budget(every, ModelInput((48, 48)), inputs=1) == 221
    readme = {
        name: build("image", name, {"steps": 32} if name == "integrated_gradients" else {})
        for name in ("activation", "gradcam", "integrated_gradients")
    }
    assert call.check_budget(readme, ModelInput((48, 48)), inputs=1, targets=2) == 66
    tabular = _call(runtime2, "tabular", DEFAULT_LIMITS)
    flow = runtime2.get("tabular").flow
    assert isinstance(flow, TabularFlow)
    ig = {"integrated_gradients": build("tabular", "integrated_gradients", {})}
    assert tabular.check_budget(ig, flow.model_input, inputs=len(ROWS)) == 3 * 3200
    with pytest.raises(OverBudget, match="GLIMPSE_EXPLAIN_BUDGET"):
        tabular.check_budget(ig, flow.model_input, inputs=100)


def test_over_budget_is_a_422_naming_budget_and_cost(
    http: TestClient, stub: pb_grpc.GlimpseStub, shapes_png: bytes
) -> None:
    response = http.post(
        "/explanations/cnn?methods=integrated_gradients&steps=501", content=shapes_png
    )
    refused(
        response,
        422,
        "over_budget",
        "501 model evaluations",
        "budget of 500",
        "GLIMPSE_EXPLAIN_BUDGET",
    )
    # targets multiply: 3 targets x 200 steps
    query = "methods=integrated_gradients&steps=200&target=circle,square,triangle"
    response = http.post(f"/explanations/cnn?{query}", content=shapes_png)
    refused(response, 422, "over_budget", "600 model evaluations", "3 target(s)")
    response = http.post("/heatmaps/cnn?method=smoothgrad&samples=64&stdev=0.1", content=shapes_png)
    assert response.status_code == 200  # within the budget
    response = http.post("/explanations/tabular", json=ROW)  # 50 steps x 64 references
    refused(response, 422, "over_budget", "3200 model evaluations")
    request = pb.ExplainRequest(
        model="cnn",
        inputs=[image_input(shapes_png)] * 2,
        methods=["gradient_shap"],
        params={"samples": "300"},
    )
    error = grpc_error(stub.Explain, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "600 model evaluations" in error.details() and "GLIMPSE_EXPLAIN_BUDGET" in error.details()
    )
    still_serving(http, stub, shapes_png)


def test_occlusion_windows_are_bounded_by_the_input(
    http: TestClient, stub: pb_grpc.GlimpseStub, shapes_png: bytes
) -> None:
    for params in ("window=49", "window=8&stride=64"):
        response = http.post(f"/explanations/cnn?methods=occlusion&{params}", content=shapes_png)
        refused(response, 422, "schema_error", "occlusion.window", "48 pixels")
    request = pb.ExplainRequest(
        model="cnn",
        inputs=[image_input(shapes_png)],
        methods=["occlusion"],
        params={"window": "200"},
    )
    error = grpc_error(stub.Explain, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "48 pixels" in error.details()
    still_serving(http, stub, shapes_png)


@pytest.mark.parametrize("raw", ["nan", "inf", "-Infinity", "NaN"])
def test_non_finite_parameters_are_refused(raw: str) -> None:
    for method, name in (("smoothgrad", "stdev"), ("gradient_shap", "stdev")):
        with pytest.raises(SchemaError, match=f"{method}.{name} must be a finite number"):
            build("image", method, {name: raw})
    with pytest.raises(SchemaError, match="must be a int"):
        build("image", "integrated_gradients", {"steps": raw})


def test_non_finite_parameters_on_both_doors(
    http: TestClient, stub: pb_grpc.GlimpseStub, shapes_png: bytes
) -> None:
    response = http.post("/explanations/cnn?methods=smoothgrad&stdev=nan", content=shapes_png)
    refused(response, 422, "schema_error", "smoothgrad.stdev must be a finite number")
    request = pb.ExplainRequest(
        model="cnn",
        inputs=[image_input(shapes_png)],
        methods=["gradient_shap"],
        params={"stdev": "inf"},
    )
    error = grpc_error(stub.Explain, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "finite" in error.details()
    still_serving(http, stub, shapes_png)


# -- bounded memory inside a method ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("integrated_gradients", {"steps": 300}),
        ("integrated_gradients", {"steps": 100, "internal_batch_size": 100_000}),
        ("smoothgrad", {"samples": 200}),
        ("gradient_shap", {"samples": 160}),
        ("occlusion", {"window": 4, "stride": 4, "internal_batch_size": 4096}),
    ],
)
def test_no_pass_inside_a_method_takes_more_than_its_share(
    runtime2: Runtime, method: str, params: dict[str, Any]
) -> None:
    """Whatever the steps, samples or batch size asked, every forward pass a method makes
    holds at most PASS_ELEMENTS input elements (one input when a single input is larger)."""
    handler = runtime2.get("cnn").handler
    assert isinstance(handler, ImageHandler)
    images = [random_image(48, 48, seed=i) for i in range(3)]
    result = handler.infer(handler.preprocess(images))
    seen: list[int] = []
    hook = handler.network.register_forward_pre_hook(lambda _m, args: seen.append(args[0].numel()))
    try:
        attribution = handler.explain(
            result, build("image", method, params), torch.tensor([0, 1, 2])
        )
    finally:
        hook.remove()
    assert attribution.maps.shape[0] == 3 and np.isfinite(attribution.maps).all()
    assert len(seen) > 1 and max(seen) <= PASS_ELEMENTS, (len(seen), max(seen))


def test_gradient_shap_in_passes_averages_all_its_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split into passes, GradientShap still weighs every draw alike: on a linear model with one
    baseline every draw gives the same map, so any split must give that map."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    inputs = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    batch = ImageBatch(model, None, inputs, torch.tensor([1, 3]))
    method = build("image", "gradient_shap", {"samples": 12, "baselines": 1, "stdev": 0.0})
    whole = method.attribute(batch).maps
    monkeypatch.setattr("service.explain.base.PASS_ELEMENTS", 2 * 3 * 8 * 8 * 5)  # 5 draws a pass
    seen: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        parts = method.attribute(batch).maps
    finally:
        hook.remove()
    assert max(seen) <= 2 * 5 and len(seen) >= 3
    np.testing.assert_allclose(parts, whole, rtol=1e-4, atol=1e-6)


# -- images: accepted formats, pixel limits, overlays ----------------------------------------------
@pytest.mark.parametrize("format", ["ICO", "EPS", "PCX", "TGA", "PPM"])
def test_other_image_formats_are_refused_with_the_list(
    http: TestClient, shapes_png: bytes, format: str
) -> None:
    data = png(random_image(32, 32), format=format)
    response = http.post("/predictions/cnn", content=data)
    refused(response, 400, "bad_input", "PNG, JPEG, GIF, WebP, BMP or TIFF")
    still_serving(http, None, shapes_png)


@pytest.mark.parametrize("format", ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"])
def test_the_accepted_formats_are_served(http: TestClient, format: str) -> None:
    response = http.post("/predictions/cnn", content=png(random_image(40, 30), format=format))
    assert response.status_code == 200, response.text


def test_pillow_bomb_limit_is_glimpses(monkeypatch: pytest.MonkeyPatch, runtime2: Runtime) -> None:
    assert Image.MAX_IMAGE_PIXELS != imaging.PILLOW_DEFAULT_PIXELS  # set by the handlers' setup
    handler = runtime2.get("cnn").handler
    assert isinstance(handler, ImageHandler)
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS >= handler.max_pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", imaging.PILLOW_DEFAULT_PIXELS)
    imaging.allow_pixels(1000)
    assert Image.MAX_IMAGE_PIXELS == 1000
    imaging.allow_pixels(500)  # another model's smaller limit: Pillow keeps the larger one
    assert Image.MAX_IMAGE_PIXELS == 1000
    imaging.allow_pixels(2000)
    assert Image.MAX_IMAGE_PIXELS == 2000


@pytest.mark.parametrize(
    "size", [(200, 150), (150, 200), (10_001, 1), (1, 30_000), (101, 100), (100, 100)]
)
def test_fit_keeps_the_aspect_within_the_pixels(size: tuple[int, int]) -> None:
    image = Image.new("RGB", size)
    fitted, scale = render.fit(image, 10_000)
    width, height = fitted.size
    assert 1 <= width * height <= 10_000 and width >= 1 and height >= 1
    if size[0] * size[1] <= 10_000:
        assert fitted is image and scale == 1.0
    else:
        assert scale == min(width / size[0], height / size[1]) < 1


def test_large_uploads_get_a_scaled_overlay_and_say_so(
    http: TestClient, stub: pb_grpc.GlimpseStub, shapes_png: bytes
) -> None:
    large = png(random_image(300, 200, seed=2))  # 60,000 pixels over a limit of 10,000
    entry = http.post("/explanations/cnn?methods=gradcam", content=large).json()["explanations"][
        "gradcam"
    ]
    width, height = entry["overlay_size"]
    assert entry["overlay_scaled"] is True and width * height <= 10_000
    scale = min(width / 300, height / 200)
    assert entry["overlay_scale"] == pytest.approx(scale, abs=1e-4)
    assert abs(width / height - 1.5) < 0.05
    picture = Image.open(io.BytesIO(base64.b64decode(entry["overlay_png"])))
    assert picture.size == (width, height)
    response = http.post("/heatmaps/cnn", content=large)
    assert response.status_code == 200
    assert float(response.headers["X-Glimpse-Overlay-Scaled"]) == pytest.approx(scale, rel=1e-3)
    assert response.headers["X-Glimpse-Overlay-Size"] == f"{width}x{height}"
    assert Image.open(io.BytesIO(response.content)).size == (width, height)
    small = http.post("/explanations/cnn", content=shapes_png).json()["explanations"]["activation"]
    assert small["overlay_scaled"] is False and small["overlay_size"] == [97, 71]
    assert "X-Glimpse-Overlay-Scaled" not in http.post("/heatmaps/cnn", content=shapes_png).headers
    request = pb.ExplainRequest(model="cnn", inputs=[image_input(large)], include_overlay=True)
    [grid] = stub.Explain(request).explanations[0].image.maps
    assert list(grid.overlay_size) == [width, height] and grid.overlay_scaled
    assert Image.open(io.BytesIO(grid.overlay_png)).size == (width, height)
    still_serving(http, stub, shapes_png)


# -- tabular input hardening -----------------------------------------------------------------------
def test_deeply_nested_json_is_a_400(http: TestClient, shapes_png: bytes) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    for route in ("/predictions/tabular", "/explanations/tabular"):
        response = http.post(route, content=body, headers={"content-type": "application/json"})
        refused(response, 400, "bad_input", "nested too deeply")
    still_serving(http, None, shapes_png)


@pytest.mark.parametrize(
    ("column", "literal"),
    [
        ("CompetitionDistance", "Infinity"),
        ("CompetitionDistance", "-Infinity"),
        ("CompetitionDistance", "NaN"),
        ("CompetitionDistance", '"inf"'),
        ("Store", "NaN"),
        ("Promo", "Infinity"),
    ],
)
def test_non_finite_row_values_are_refused_naming_the_column(
    http: TestClient, shapes_png: bytes, column: str, literal: str
) -> None:
    text = json.dumps({**ROW, column: "__value__"}).replace('"__value__"', literal)
    for route in ("/predictions/tabular", "/explanations/tabular?steps=4"):
        response = http.post(route, content=text, headers={"content-type": "application/json"})
        refused(response, 422, "schema_error", repr(column), "finite")
    assert (
        http.post("/predictions/tabular", json={**ROW, "CompetitionDistance": None}).json()[0] > 0
    )
    still_serving(http, None, shapes_png)


def test_non_finite_row_values_over_grpc(stub: pb_grpc.GlimpseStub) -> None:
    row = glimpse_client.encode_row(ROW)
    row.values["CompetitionDistance"].number_value = float("inf")
    error = grpc_error(stub.Predict, pb.PredictRequest(model="tabular", inputs=[pb.Input(row=row)]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'CompetitionDistance'" in error.details() and "finite" in error.details()
    reply = stub.Predict(pb.PredictRequest(model="tabular", inputs=[row_input(ROW)]))
    assert reply.predictions[0].value > 0


# -- time limit ------------------------------------------------------------------------------------
class Held:
    """Holds a model's worker: every batch waits until `release()` (or 10 s)."""

    def __init__(self, runtime: Runtime, model: str, monkeypatch: pytest.MonkeyPatch) -> None:
        worker = runtime.get(model).worker
        self.gate = threading.Event()
        process = worker._process

        def held(batch: Sequence[tuple[Any, float]]) -> Sequence[Any]:
            self.gate.wait(10)
            return process(batch)

        monkeypatch.setattr(worker, "_process", held)

    def release(self) -> None:
        self.gate.set()


def test_the_time_limit_answers_504_and_drops_queued_work(
    hasty_http: TestClient,
    hasty_stub: pb_grpc.GlimpseStub,
    runtime2: Runtime,
    shapes_png: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = Held(runtime2, "cnn", monkeypatch)
    request = pb.PredictRequest(model="cnn", inputs=[image_input(shapes_png)])
    try:
        started = time.monotonic()
        response = hasty_http.post("/predictions/cnn", content=shapes_png)
        message = refused(response, 504, "deadline_exceeded", "GLIMPSE_REQUEST_TIMEOUT", "1 s")
        assert 0.9 < time.monotonic() - started < 5, message
        error = grpc_error(hasty_stub.Predict, request)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "GLIMPSE_REQUEST_TIMEOUT" in error.details()
        # the client's own, earlier deadline wins over the server's limit
        started = time.monotonic()
        error = grpc_error(hasty_stub.Predict, request, timeout=0.3)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 0.9
    finally:
        held.release()
    still_serving(hasty_http, hasty_stub, shapes_png)


def _call(runtime: Runtime, model: str, limits: Limits, deadline: Deadline | None = None) -> Call:
    served = runtime.get(model)
    timings = Timings(model, runtime.metrics)
    return Call(model, served.worker, runtime.metrics, timings, limits, deadline)


@dataclasses.dataclass(frozen=True)
class PassesAfter(Deadline):
    """A deadline that passes at its `checks`-th check (a test's clock, not the wall's)."""

    checks: int = 1
    seen: list[int] = dataclasses.field(default_factory=list)

    def passed(self) -> bool:
        self.seen.append(1)
        return len(self.seen) >= self.checks


def _attributions(runtime: Runtime, model: str, method: str) -> float:
    labels = {"model": model, "stage": "attribution", "method": method}
    value = runtime.metrics.registry.get_sample_value(
        "glimpse_stage_duration_seconds_count", labels
    )
    return value or 0.0


def test_the_worker_skips_late_jobs_between_stages_and_methods(runtime2: Runtime) -> None:
    model = runtime2.get("cnn")
    flow, handler = model.flow, model.handler
    assert isinstance(flow, ImageFlow) and isinstance(handler, ImageHandler)
    inputs = handler.preprocess([random_image(48, 48, seed=1)])
    methods = {name: build("image", name, {}) for name in ("saliency", "gradcam")}

    def job(checks: int) -> ImageJob:
        deadline = PassesAfter(0.0, "the server's time limit (GLIMPSE_REQUEST_TIMEOUT)", "", checks)
        call = _call(runtime2, "cnn", DEFAULT_LIMITS, deadline)
        layers = frozenset(n for e in methods.values() if (n := handler.layer_for(e)))
        return ImageJob(call, inputs, methods, [None], layers)

    before = {m: _attributions(runtime2, "cnn", m) for m in methods}
    on_time, late_at_start, late_later = job(100), job(1), job(3)
    answers = flow.process([(j, 0.0) for j in (on_time, late_at_start, late_later)])
    assert not isinstance(answers[0], Exception)
    assert set(answers[0].runs[0].attributions) == {"saliency", "gradcam"}
    assert (
        isinstance(answers[1], DeadlineExceeded) and "before its forward pass" in answers[1].message
    )
    # checked before the forward pass, before the first method, then late before the second
    assert isinstance(answers[2], DeadlineExceeded) and "before gradcam ran" in answers[2].message
    after = {m: _attributions(runtime2, "cnn", m) for m in methods}
    assert after["saliency"] - before["saliency"] == 2  # the on-time job and the later one
    assert after["gradcam"] - before["gradcam"] == 1  # the on-time job only


def test_the_tabular_worker_skips_late_jobs(runtime2: Runtime) -> None:
    flow = runtime2.get("tabular").flow
    assert isinstance(flow, TabularFlow)
    late = PassesAfter(0.0, "the server's time limit (GLIMPSE_REQUEST_TIMEOUT)", "", 1)
    ig = {"integrated_gradients": build("tabular", "integrated_gradients", {"steps": 4})}
    jobs = [
        TabularJob(_call(runtime2, "tabular", DEFAULT_LIMITS), [ROW]),
        TabularJob(_call(runtime2, "tabular", DEFAULT_LIMITS, late), [ROW], ig),
        TabularJob(_call(runtime2, "tabular", DEFAULT_LIMITS), [ROW], ig),
    ]
    answers = flow.process([(j, 0.0) for j in jobs])
    assert (
        isinstance(answers[1], DeadlineExceeded) and "GLIMPSE_REQUEST_TIMEOUT" in answers[1].message
    )
    assert answers[0][0] > 0 and answers[2][0].attributions["integrated_gradients"]


# -- concurrency per door --------------------------------------------------------------------------
def _wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_requests_beyond_the_door_limit_get_503_at_once(
    http: TestClient,
    pipeline: Pipeline,
    runtime2: Runtime,
    shapes_png: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = Held(runtime2, "cnn", monkeypatch)
    answers: list[int] = []
    first = threading.Thread(
        target=lambda: answers.append(http.post("/predictions/cnn", content=shapes_png).status_code)
    )
    first.start()
    try:
        _wait_for(lambda: pipeline.gate("HTTP").busy == 1)
        started = time.monotonic()
        for route in ("/predictions/cnn", "/explanations/tabular"):
            response = http.post(route, content=shapes_png)
            refused(response, 503, "overloaded", "GLIMPSE_MAX_CONCURRENCY=1", "HTTP")
        assert time.monotonic() - started < 1  # refused at once, not queued
        assert http.get("/ping").status_code == 200 and http.get("/models").status_code == 200
    finally:
        held.release()
        first.join(timeout=30)
    assert answers == [200]
    still_serving(http, None, shapes_png)


def test_grpc_calls_beyond_the_door_limit_are_unavailable_at_once(
    stub: pb_grpc.GlimpseStub,
    http: TestClient,
    pipeline: Pipeline,
    runtime2: Runtime,
    shapes_png: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = Held(runtime2, "cnn", monkeypatch)
    request = pb.PredictRequest(model="cnn", inputs=[image_input(shapes_png)])
    first = stub.Predict.future(request, timeout=30)
    try:
        _wait_for(lambda: pipeline.gate("gRPC").busy == 1)
        error = grpc_error(stub.Predict, request, timeout=5)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "GLIMPSE_MAX_CONCURRENCY=1" in error.details()
        stream = stub.StreamExplain(
            iter([pb.StreamExplainRequest(id="a", model="cnn", input=image_input(shapes_png))]),
            timeout=5,
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(stream)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert stub.ListModels(pb.ListModelsRequest(), timeout=5).models  # metadata still answers
    finally:
        held.release()
    assert len(first.result(timeout=30).predictions) == 1
    still_serving(http, stub, shapes_png)


def test_every_limit_is_documented() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for field in dataclasses.fields(Limits):
        assert f"GLIMPSE_{field.name.upper()}" in readme, field.name
    assert "X-Glimpse-Overlay-Scaled" in readme and "overlay_scaled" in readme


def test_registry_methods_all_have_a_cost() -> None:
    for name, cls in REGISTRY.items():
        kind = "image" if "image" in cls.kinds else "tabular"
        assert build(kind, name, {}).cost(ModelInput((48, 48))) >= 0
