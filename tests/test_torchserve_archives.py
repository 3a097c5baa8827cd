"""Bring your own model (issue 10): archives made for TorchServe, served by glimpse as they are.

A TorchServe-standard `image_classifier` archive (a model file with one nn.Module class, a
state_dict and index_to_name.json, packed by the real torch-model-archiver, see
tests/torchserve_archives.py) and a TorchScript archive made by `python -m training archive`,
served in process over HTTP and gRPC; the `layer=` parameter of activation and Grad-CAM; and
the real server skipping archives it cannot serve with one log line each.
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.datasets import load_sample_image

from service.config import Settings
from service.explain import methods_for
from service.hooks import hook_count
from service.http import create_app
from service.pipeline import Pipeline
from service.proto.glimpse.v1 import glimpse_pb2 as pb
from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc
from service.runtime import Runtime
from tests.helpers import LOCAL, png
from tests.servers.glimpse import glimpse
from tests.torchserve_archives import (
    CLASSES,
    MODEL_FILE,
    build,
    model_and_weights,
    torchserve_handler,
    torchserve_reference,
    torchvision_python,
)
from training.__main__ import main as training_main

# Cheap settings for the costly methods: what is checked here is that each one answers.
CHEAP = {
    "gradient_shap": {"samples": "2", "baselines": "2"},
    "integrated_gradients": {"steps": "4"},
    "occlusion": {"window": "56", "stride": "56"},
    "smoothgrad": {"samples": "2"},
}
DEFAULT_LAYER = "down.2"  # TinyResNet's last spatial map: [16, 56, 56]
OTHER_LAYERS = ["stem.2", "block.3", "stem", "down.0"]  # [8, 112, 112] and [16, 56, 56]


# -- images: real photos, a landscape and a portrait, as JPEG and PNG bytes -----------------------
def _jpeg(image: Image.Image) -> bytes:
    return png(image, format="JPEG", quality=90)


LANDSCAPE = _jpeg(Image.fromarray(load_sample_image("china.jpg")))  # 640 x 427
PORTRAIT = png(  # 300 x 500: a crop of the flower, stretched to a portrait shape
    Image.fromarray(load_sample_image("flower.jpg")).crop((200, 0, 456, 427)).resize((300, 500))
)
IMAGES = {"landscape-jpeg": LANDSCAPE, "portrait-png": PORTRAIT}


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


# -- fixtures: the archives, one runtime serving both, and its two doors --------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("torchserve_archives")


@pytest.fixture(scope="module")
def tiny_mar(workdir: Path) -> Path:
    """tiny.mar: TinyResNet for TorchServe's built-in image_classifier handler."""
    return build(workdir / "tiny", "tiny")


@pytest.fixture(scope="module")
def tiny_model(tiny_mar: Path, workdir: Path) -> torch.nn.Module:
    """The very network in tiny.mar (its state_dict file loaded into a fresh TinyResNet)."""
    _, _, model = model_and_weights(workdir / "reference")
    model.load_state_dict(torch.load(workdir / "tiny" / "tiny_resnet.pt", weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def scripted_mar(tiny_model: torch.nn.Module, workdir: Path) -> Path:
    """scripted.mar: TinyResNet traced to TorchScript, packed by `python -m training archive`."""
    traced = workdir / "scripted.pt"
    with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit; the files still work
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
        torch.jit.save(torch.jit.trace(tiny_model, torch.zeros(1, 3, 224, 224)), str(traced))
    store = workdir / "scripted_store"
    classes = workdir / "tiny" / "index_to_name.json"
    training_main(
        ["archive", "--torchscript", str(traced), "--classes", str(classes), "--name", "scripted"]
        + ["--out", str(store)]
    )
    return store / "scripted.mar"


@pytest.fixture(scope="module")
def settings(workdir: Path) -> Settings:
    return Settings(model_store=workdir, max_body_bytes=4_000_000, max_image_pixels=4_000_000)


@pytest.fixture(scope="module")
def pipeline(tiny_mar: Path, scripted_mar: Path, settings: Settings) -> Iterator[Pipeline]:
    runtime = Runtime.load([tiny_mar, scripted_mar], max_image_pixels=settings.max_image_pixels)
    assert sorted(runtime.models) == ["scripted", "tiny"]
    yield Pipeline(runtime)
    runtime.close()


@pytest.fixture(scope="module")
def client(settings: Settings, pipeline: Pipeline) -> Iterator[TestClient]:
    with TestClient(create_app(settings, pipeline), base_url=LOCAL) as client:
        yield client


# -- 1. a TorchServe-standard archive, as it is ---------------------------------------------------
@pytest.mark.parametrize("image", IMAGES)
def test_predictions_equal_torchserves_preprocessing_softmax_and_top5(
    client: TestClient, tiny_model: torch.nn.Module, image: str
) -> None:
    data = IMAGES[image]
    response = client.post("/predictions/tiny", content=data)
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = torchserve_reference(tiny_model, decoded(data))
    assert list(answer) == list(expected)  # the same labels, most probable first
    assert list(answer.values()) == pytest.approx(list(expected.values()), abs=1e-3)
    assert set(answer) <= set(CLASSES)


def test_a_label_given_as_a_list_shows_its_last_item(client: TestClient) -> None:
    """index_to_name.json maps "9" to ["n01622779", "owl"]; TorchServe shows "owl"."""
    assert client.get("/models/tiny").json()["classes"][9] == "owl"
    answer = client.post("/predictions/tiny", content=LANDSCAPE).json()
    assert "owl" in answer  # china.jpg's top 5 holds class 9


def test_torchserves_image_classifier_cannot_be_imported_here() -> None:
    """TorchServe's own `image_classifier` handler module imports torchvision, which does not
    work beside this CPU build of torch: the package indexes reachable here hold no CPU build
    of torchvision, and the wheel pip finds for torch 2.13 (torchvision 0.28.0) is built
    against a CUDA torch (its _C.so links libtorch_cuda and libc10_cuda), so its compiled ops
    do not load and `import torchvision` fails ("operator torchvision::nms does not exist").
    So glimpse reproduces the handler's preprocessing without torchvision
    (service/preprocess.py), and `test_predictions_equal_torchserves_own_handler` runs the
    real handler with torchvision's Python code alone."""
    with warnings.catch_warnings():
        # ts/version.py leaves its version.txt open; that is TorchServe's, not the point here
        warnings.simplefilter("ignore", ResourceWarning)
        import ts.version  # noqa: F401
    with pytest.raises(ModuleNotFoundError) as caught:
        import ts.torch_handler.image_classifier  # noqa: F401
    assert caught.value.name == "torchvision"


@pytest.mark.integration
def test_predictions_equal_torchserves_own_handler(
    client: TestClient, tiny_mar: Path, tmp_path: Path
) -> None:
    """TorchServe's real ImageClassifier (initialize, preprocess, inference, postprocess), with
    torchvision's real transforms: its pure-Python files from the 0.28.0 wheel, imported
    without torchvision's __init__ (which loads the compiled ops this torch cannot run)."""
    torchvision_dir = torchvision_python(tmp_path)
    if torchvision_dir is None:
        pytest.skip("pip cannot fetch the torchvision wheel whose transforms TorchServe needs")
    images = list(IMAGES.values())
    theirs = torchserve_handler(tiny_mar, images, tmp_path, torchvision_dir)
    for data, expected in zip(images, theirs, strict=True):
        ours = client.post("/predictions/tiny", content=data).json()
        assert list(ours) == list(expected)
        assert list(ours.values()) == pytest.approx(list(expected.values()), abs=1e-4)


def test_a_thin_strip_is_refused_before_the_resize_makes_it_huge(
    client: TestClient, settings: Settings
) -> None:
    """Resize(256) scales the short side up: a 1 x 100 strip of 100 pixels would become
    256 x 25600 = 6.5 million (a 2000 x 1 PNG of a few hundred bytes took 3.7 s and 1.2 GB;
    1 x 8000 would be half a billion pixels), so the resized size is held to
    max_image_pixels too (4 million here)."""
    assert settings.max_image_pixels == 4_000_000
    fits = png(Image.new("RGB", (1, 40), "white"))  # -> 256 x 10240 = 2.6 million pixels
    assert client.post("/predictions/tiny", content=fits).status_code == 200
    strip = png(Image.new("RGB", (1, 100), "white"))
    for route in ("/predictions/tiny", "/explanations/tiny", "/heatmaps/tiny"):
        response = client.post(route, content=strip)
        assert response.status_code == 413, response.text
        message = response.json()["message"]
        assert "1x100" in message and "256x25600" in message and "4000000" in message


@pytest.mark.parametrize("method", ["activation", "gradcam"])
@pytest.mark.parametrize("image", IMAGES)
def test_heatmaps_are_pngs_of_the_uploads_size(client: TestClient, image: str, method: str) -> None:
    data = IMAGES[image]
    response = client.post("/heatmaps/tiny", content=data, params={"method": method})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    heatmap = Image.open(io.BytesIO(response.content))
    assert heatmap.format == "PNG"
    assert heatmap.size == decoded(data).size
    # The map covers the centre crop the model saw; outside it the photo is only dimmed.
    original = np.asarray(decoded(data), dtype=np.float32)
    picture = np.asarray(heatmap.convert("RGB"), dtype=np.float32)
    np.testing.assert_allclose(picture[2, 2], original[2, 2] * 0.5, atol=1)
    height, width = original.shape[:2]
    middle = (slice(height // 4, 3 * height // 4), slice(width // 4, 3 * width // 4))
    assert np.abs(picture[middle] - original[middle] * 0.5).mean() > 5  # coloured


@pytest.mark.parametrize("method", methods_for("image"))
def test_every_image_method_explains_it(client: TestClient, method: str) -> None:
    params = {"methods": method, **CHEAP.get(method, {})}
    response = client.post("/explanations/tiny", content=PORTRAIT, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    grid = body["explanations"][method]
    assert np.isfinite(np.asarray(grid["values"])).all()
    assert body["target"]["label"] == next(iter(body["prediction"]))


def test_the_model_lists_its_layers_and_default_layer(client: TestClient) -> None:
    described = client.get("/models/tiny").json()
    layers = {layer["name"]: layer["shape"] for layer in described["layers"]}
    assert described["default_layer"] == DEFAULT_LAYER
    assert layers[DEFAULT_LAYER] == [16, 56, 56]
    assert layers["stem.2"] == [8, 112, 112]
    assert set(OTHER_LAYERS) <= set(layers)
    assert "" not in layers and "pool" not in layers  # the model itself, a 1 x 1 map
    assert described["input"]["resize"] == 256 and described["input"]["size"] == [224, 224]


# -- 2. layer= ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["activation", "gradcam"])
def test_layer_picks_the_map_over_http(client: TestClient, method: str) -> None:
    layers = {
        layer["name"]: layer["shape"] for layer in client.get("/models/tiny").json()["layers"]
    }
    maps = {}
    for layer in [None, "stem.2", "block.3"]:
        params = {"methods": method, "overlay": "false", **({"layer": layer} if layer else {})}
        response = client.post("/explanations/tiny", content=LANDSCAPE, params=params)
        assert response.status_code == 200, response.text
        grid = response.json()["explanations"][method]
        shape = layers[layer or DEFAULT_LAYER]
        assert (grid["height"], grid["width"]) == (shape[1], shape[2])
        maps[layer] = np.asarray(grid["values"])
    assert maps[None].shape == (56, 56) and maps["stem.2"].shape == (112, 112)
    assert not np.allclose(maps["stem.2"], maps["block.3"])  # two layers, two maps


@pytest.mark.parametrize("method", ["activation", "gradcam"])
def test_layer_picks_the_map_over_grpc(
    stub: pb_grpc.GlimpseStub, client: TestClient, method: str
) -> None:
    for layer, size in [("stem.2", 112), (DEFAULT_LAYER, 56)]:
        request = pb.ExplainRequest(
            model="tiny",
            inputs=[pb.Input(image=LANDSCAPE)],
            methods=[method],
            params={"layer": layer},
        )
        [explanation] = stub.Explain(request, timeout=60).explanations
        [grid] = explanation.image.maps
        assert (grid.method, grid.height, grid.width) == (method, size, size)
        expected = client.post(
            "/explanations/tiny",
            content=LANDSCAPE,
            params={"methods": method, "layer": layer, "overlay": "false"},
        ).json()["explanations"][method]
        values = np.reshape(grid.values, (grid.height, grid.width))
        np.testing.assert_allclose(values, expected["values"], atol=1e-5)


@pytest.mark.parametrize("method", ["activation", "gradcam"])
def test_an_unknown_layer_is_refused_by_name(
    client: TestClient, stub: pb_grpc.GlimpseStub, method: str
) -> None:
    params = {"methods": method, "layer": "head.nope"}
    response = client.post("/explanations/tiny", content=LANDSCAPE, params=params)
    assert response.status_code == 422
    assert "head.nope" in response.json()["message"]
    assert DEFAULT_LAYER in response.json()["message"]  # it lists the layers to choose from
    heatmap = client.post(
        "/heatmaps/tiny", content=LANDSCAPE, params={"method": method, "layer": "head.nope"}
    )
    assert heatmap.status_code == 422 and "head.nope" in heatmap.json()["message"]
    request = pb.ExplainRequest(
        model="tiny",
        inputs=[pb.Input(image=LANDSCAPE)],
        methods=[method],
        params={"layer": "head.nope"},
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.Explain(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "head.nope" in (caught.value.details() or "")


def test_no_hook_is_left_after_100_explanations_cycling_layers(
    client: TestClient, pipeline: Pipeline
) -> None:
    model = pipeline.runtime.get("tiny").handler.model
    assert model is not None and hook_count(model) == 0
    small = png(decoded(LANDSCAPE).resize((64, 48)))
    choices = [DEFAULT_LAYER, *OTHER_LAYERS, "", "nowhere"]  # "" is the default; one unknown
    order = random.Random(0)
    refused = 0
    for i in range(100):
        method = ("activation", "gradcam")[i % 2]
        layer = choices[order.randrange(len(choices))]
        params = {"methods": method, "layer": layer, "overlay": "false"}
        response = client.post("/explanations/tiny", content=small, params=params)
        assert response.status_code == (422 if layer == "nowhere" else 200), response.text
        refused += response.status_code == 422
    assert 0 < refused < 100
    assert hook_count(model) == 0


# -- 3. a TorchScript archive from `python -m training archive` -----------------------------------
def test_a_torchscript_archive_predicts(client: TestClient, tiny_model: torch.nn.Module) -> None:
    response = client.post("/predictions/scripted", content=LANDSCAPE)
    assert response.status_code == 200, response.text
    expected = torchserve_reference(tiny_model, decoded(LANDSCAPE))
    assert list(response.json()) == list(expected)
    assert list(response.json().values()) == pytest.approx(list(expected.values()), abs=1e-3)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_a_torchscript_archive_explains_with_input_gradients(
    client: TestClient, method: str
) -> None:
    params = {"methods": method, **CHEAP.get(method, {})}
    response = client.post("/explanations/scripted", content=PORTRAIT, params=params)
    assert response.status_code == 200, response.text
    assert np.isfinite(np.asarray(response.json()["explanations"][method]["values"])).all()
    heatmap = client.post("/heatmaps/scripted", content=PORTRAIT, params={"method": method})
    assert heatmap.status_code == 200
    assert Image.open(io.BytesIO(heatmap.content)).size == (300, 500)


@pytest.mark.parametrize("layer", [None, "stem.2"])
@pytest.mark.parametrize("method", ["activation", "gradcam"])
def test_a_torchscript_archive_refuses_layer_methods_and_says_why(
    client: TestClient, stub: pb_grpc.GlimpseStub, method: str, layer: str | None
) -> None:
    params = {"methods": method, **({"layer": layer} if layer else {})}
    response = client.post("/explanations/scripted", content=LANDSCAPE, params=params)
    assert response.status_code == 422, response.text
    message = response.json()["message"]
    assert "TorchScript" in message and "hook" in message
    assert "saliency" in message and "integrated_gradients" in message
    heatmap = client.post("/heatmaps/scripted", content=LANDSCAPE, params={"method": method})
    assert (
        heatmap.status_code == 422
        and heatmap.json()["message"]
        == (
            client.post(
                "/explanations/scripted", content=LANDSCAPE, params={"methods": method}
            ).json()["message"]
        )
    )
    request = pb.ExplainRequest(
        model="scripted", inputs=[pb.Input(image=LANDSCAPE)], methods=[method]
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.Explain(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "TorchScript" in (caught.value.details() or "")


# -- 4. the real server skips what it cannot serve, with one log line each ------------------------
def _skip_lines(log: str, file_name: str) -> list[str]:
    return [line for line in log.splitlines() if file_name in line]


def _serves_tiny(base: str) -> None:
    response = httpx.post(f"{base}/predictions/tiny", content=LANDSCAPE, timeout=60)
    assert response.status_code == 200, response.text
    assert list(response.json())[0] in CLASSES
    assert [m["name"] for m in httpx.get(f"{base}/models", timeout=10).json()["models"]] == ["tiny"]


@pytest.mark.integration
def test_the_server_skips_a_detector_and_a_corrupt_archive(
    tiny_mar: Path, workdir: Path, tmp_path: Path
) -> None:
    detector = build(workdir / "detector", "detector", handler="object_detector")
    broken = tmp_path / "broken.mar"
    broken.write_bytes(random.Random(1).randbytes(4096))
    with glimpse([tiny_mar, detector, broken], tmp_path / "server") as server:
        _serves_tiny(server.http)
    log = (tmp_path / "server" / "glimpse.log").read_text()
    [detector_line] = _skip_lines(log, "detector.mar")
    assert "object_detector" in detector_line and "image_classifier" in detector_line
    [broken_line] = _skip_lines(log, "broken.mar")
    assert "not a .mar archive" in broken_line


@pytest.mark.integration
def test_the_server_skips_an_archive_whose_model_file_does_not_import(
    tiny_mar: Path, workdir: Path, tmp_path: Path
) -> None:
    source = "import glimpse_no_such_package\n" + MODEL_FILE
    bad = build(workdir / "bad_import", "bad_import", model_source=source)
    with glimpse([tiny_mar, bad], tmp_path / "server") as server:
        _serves_tiny(server.http)
    log = (tmp_path / "server" / "glimpse.log").read_text()
    [line] = _skip_lines(log, "bad_import.mar")
    assert "tiny_resnet.py" in line and "glimpse_no_such_package" in line
