"""Every registered image method: shapes, determinism, hook hygiene, flat memory, validation."""

from __future__ import annotations

import gc
import resource

import numpy as np
import pytest
import torch
from PIL import Image

from service.errors import SchemaError
from service.explain import REGISTRY, build, methods_for
from service.handlers.image import ImageHandler, Inference
from service.hooks import hook_count
from service.runtime import Runtime
from training.shapes import make_shapes

IMAGE_METHODS = methods_for("image")
# Cheap settings so the whole registry runs in seconds; defaults are exercised over HTTP.
FAST = {
    "integrated_gradients": {"steps": 8},
    "gradient_shap": {"samples": 4},
    "smoothgrad": {"samples": 4},
    "occlusion": {"window": 12, "stride": 12},
}


@pytest.fixture(scope="module")
def handler(runtime: Runtime) -> ImageHandler:
    handler = runtime.get("cnn").handler
    assert isinstance(handler, ImageHandler)
    return handler


@pytest.fixture(scope="module")
def result(handler: ImageHandler) -> Inference:
    images = [Image.fromarray(a) for a in make_shapes(3, seed=7, size=48).images]
    return handler.infer(handler.preprocess(images))


def targets(result: Inference) -> torch.Tensor:
    return result.probabilities.argmax(dim=1)


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_map_per_input(handler: ImageHandler, result: Inference, method: str) -> None:
    explainer = build("image", method, FAST.get(method, {}))
    maps = handler.explain(result, explainer, targets(result)).maps
    assert maps.ndim == 3 and maps.shape[0] == 3 and maps.dtype == np.float32
    assert np.isfinite(maps).all() and np.abs(maps).max() > 0
    if not REGISTRY[method].signed:
        assert (maps >= 0).all()


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_same_input_same_map(handler: ImageHandler, result: Inference, method: str) -> None:
    first = handler.explain(result, build("image", method, FAST.get(method, {})), targets(result))
    again = handler.explain(result, build("image", method, FAST.get(method, {})), targets(result))
    assert np.array_equal(first.maps, again.maps)


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_no_hook_left_after_success_or_error(
    handler: ImageHandler, result: Inference, method: str
) -> None:
    assert handler.model is not None
    before = hook_count(handler.model)
    handler.explain(result, build("image", method, FAST.get(method, {})), targets(result))
    assert hook_count(handler.model) == before
    broken = Inference(torch.zeros(1, 5, 48, 48), result.probabilities[:1], {})  # 5 channels
    with pytest.raises((RuntimeError, AssertionError)):
        handler.explain(broken, build("image", method, FAST.get(method, {})), targets(broken))
    assert hook_count(handler.model) == before == 0


def test_capture_hook_removed_when_forward_fails(handler: ImageHandler) -> None:
    assert handler.model is not None
    with pytest.raises(RuntimeError):
        handler.infer(torch.zeros(1, 5, 48, 48))  # wrong channel count
    assert hook_count(handler.model) == 0


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_every_parameter_is_validated(method: str) -> None:
    for name, param in REGISTRY[method].params.items():
        with pytest.raises(SchemaError, match=f"{method}.{name}"):
            build("image", method, {name: "not-a-number" if param.choices is None else "nope"})
        if param.high is not None:
            with pytest.raises(SchemaError, match=name):
                build("image", method, {name: param.high * 10 + 1})
    with pytest.raises(SchemaError, match="no parameter"):
        build("image", method, {"no_such_parameter": 1})


def rss_bytes() -> int:
    """Current resident set size (not the peak) from /proc."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def test_memory_stays_flat_over_200_explanations(handler: ImageHandler, result: Inference) -> None:
    """200 explanations through activation + gradcam: live objects and RSS do not grow."""
    explainers = [build("image", "activation", {}), build("image", "gradcam", {})]

    def run(times: int) -> None:
        for _ in range(times):
            fresh = handler.infer(result.inputs)
            for explainer in explainers:
                handler.explain(fresh, explainer, targets(fresh))

    run(20)  # warm up allocator caches
    gc.collect()
    objects, rss = len(gc.get_objects()), rss_bytes()
    run(200)
    gc.collect()
    assert len(gc.get_objects()) - objects < 200, "explanations leave Python objects behind"
    assert rss_bytes() - rss < 30_000_000, f"RSS grew by {rss_bytes() - rss} bytes"


class _Tail(torch.nn.Module):
    """The model's tail with an identity layer in front, for Captum to hook."""

    def __init__(self, handler: ImageHandler) -> None:
        super().__init__()
        self.layer = torch.nn.Identity()
        assert handler.tail is not None
        self.tail = handler.tail

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.tail(self.layer(activations))


def test_gradcam_on_the_tail_gives_captum_s_maps(handler: ImageHandler, result: Inference) -> None:
    """The tail path writes out Captum's LayerGradCam: the same maps as Captum on the tail
    (to float rounding), and as Captum on the whole model as built, hooked at the layer
    (to the lean copy's folding), for a different target per input."""
    from captum.attr import LayerGradCam

    chosen = torch.tensor([0, 2, 3])
    ours = handler.explain(result, build("image", "gradcam", {}), chosen).maps
    assert handler.default_layer is not None
    activations = result.activations[handler.default_layer]
    tail = _Tail(handler)
    on_tail = LayerGradCam(tail, tail.layer).attribute(
        activations.detach().requires_grad_(), target=chosen, relu_attributions=True
    )
    layer = handler.module(handler.default_layer)
    on_model = LayerGradCam(handler.network, layer).attribute(
        result.inputs, target=chosen, relu_attributions=True
    )
    scale = float(np.abs(ours).max())
    assert scale > 0
    assert np.allclose(ours, on_tail.squeeze(1).detach().numpy(), atol=1e-6 * scale)
    assert np.allclose(ours, on_model.squeeze(1).detach().numpy(), atol=1e-5 * scale)
