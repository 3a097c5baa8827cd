"""The lean copy that predictions run through: same answers, folded batch norms, compiled
where torch.jit compiles it, and the model as built for everything that hooks or
differentiates it."""

from __future__ import annotations

import torch
from torch import nn

from service.handlers.image import ImageHandler
from service.hooks import capture_output
from service.lean import TOLERANCE, compiled_copy, lean_copy
from service.runtime import Runtime


def _handler(runtime: Runtime) -> ImageHandler:
    handler = runtime.models["cnn"].handler
    assert isinstance(handler, ImageHandler)
    return handler


def _inputs(handler: ImageHandler, n: int = 5) -> torch.Tensor:
    return torch.randn((n, 3, *handler.size), generator=torch.Generator().manual_seed(7))


def test_the_default_cnn_has_a_lean_copy_with_no_batch_norm_left(runtime: Runtime) -> None:
    handler = _handler(runtime)
    assert handler.lean is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in handler.lean.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in handler.network.modules())
    convs = [m for m in handler.lean.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


def test_predictions_through_the_lean_copy_equal_the_models_own(runtime: Runtime) -> None:
    handler = _handler(runtime)
    inputs = _inputs(handler)
    lean = handler.infer(inputs, capture=False, inference=True).probabilities
    with torch.no_grad():
        own = torch.softmax(handler.network(inputs), dim=1)
    assert torch.allclose(lean, own, atol=1e-5, rtol=0)


def test_predictions_and_default_layer_maps_never_run_the_model_as_built(
    runtime: Runtime,
) -> None:
    handler = _handler(runtime)
    assert handler.default_layer is not None
    assert handler.lean_layers == {handler.default_layer}
    inputs = _inputs(handler, 2)
    with capture_output(handler.module(handler.default_layer)) as seen:
        handler.infer(inputs, capture=False, inference=True)
        result = handler.infer(inputs, capture=True)
    assert seen.output is None
    with torch.no_grad(), capture_output(handler.module(handler.default_layer)) as own:
        handler.network(inputs)
    assert own.output is not None
    assert torch.allclose(result.activations[handler.default_layer], own.output, atol=1e-5)


def test_another_layer_is_read_from_the_model_as_built(runtime: Runtime) -> None:
    handler = _handler(runtime)
    other = next(name for name in handler.layers if name != handler.default_layer)
    inputs = _inputs(handler, 2)
    with capture_output(handler.module(other)) as seen:
        result = handler.infer(inputs, capture=False, layers=[other])
    assert seen.output is not None
    assert torch.equal(result.activations[other], seen.output)


def test_a_kept_layer_keeps_its_name_and_output_and_nothing_folds_into_it() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    model[1].running_mean.uniform_()  # a batch norm that changes its input
    model.eval()
    lean, reason = lean_copy(model, torch.zeros(1, 3, 8, 8), keep=["1"])
    assert lean is not None, reason
    assert isinstance(lean.get_submodule("1"), nn.BatchNorm2d)  # left whole: it is hooked
    folded, _ = lean_copy(model, torch.zeros(1, 3, 8, 8))
    assert folded is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


class Branchy(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        if y.mean() > 0:
            y = y * 2
        return y.mean(dim=(2, 3))


def test_a_model_fx_cannot_trace_keeps_its_one_network() -> None:
    lean, reason = lean_copy(Branchy().eval(), torch.zeros(1, 3, 8, 8))
    assert lean is None
    assert "torch.fx cannot trace it" in reason


class Drifting(nn.Module):
    """Traces fine, but draws noise on every call: no two forward passes agree."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3)) + torch.rand(1)


def test_a_copy_whose_logits_differ_is_not_kept() -> None:
    lean, reason = lean_copy(Drifting().eval(), torch.zeros(1, 3, 8, 8))
    assert lean is None
    assert f"{TOLERANCE:.0e}" in reason


def test_the_default_cnn_is_compiled_and_answers_its_layer_as_the_model_does_at_any_batch(
    runtime: Runtime,
) -> None:
    handler = _handler(runtime)
    assert handler.compiled is not None
    assert handler.compiled_layers == (handler.default_layer,)
    for n in (1, 2, 4, 7):  # traced at 2; checked at 1 and 3 when made
        inputs = _inputs(handler, n)
        result = handler.infer(inputs, capture=True)
        with torch.no_grad(), capture_output(handler.module(handler.default_layer)) as own:
            logits = handler.network(inputs)
        assert torch.allclose(result.probabilities, torch.softmax(logits, dim=1), atol=1e-5)
        assert own.output is not None
        assert torch.allclose(result.activations[handler.default_layer], own.output, atol=1e-5)


def test_the_compiled_copy_serves_in_place_of_the_traced_one_and_its_hooks(
    runtime: Runtime,
) -> None:
    handler = _handler(runtime)
    assert handler.default_layer is not None
    inputs = _inputs(handler, 3)
    with capture_output(handler.module(handler.default_layer, lean=True)) as traced:
        prediction = handler.infer(inputs, capture=False, inference=True)
        explanation = handler.infer(inputs, capture=True)
    assert traced.output is None  # the traced copy never ran
    assert prediction.activations == {}  # only what was asked for
    assert set(explanation.activations) == {handler.default_layer}
    assert prediction.probabilities.is_inference()
    assert not explanation.probabilities.is_inference()


def test_a_compiled_copy_that_disagrees_with_the_model_is_not_kept() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten()).eval()
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten()).eval()
    lean, reason = lean_copy(model, torch.zeros(1, 3, 8, 8))
    assert lean is not None, reason
    kept, reason = compiled_copy(lean, model, torch.zeros(1, 3, 8, 8))
    assert kept is not None, reason
    compiled, reason = compiled_copy(lean, other, torch.zeros(1, 3, 8, 8))
    assert compiled is None
    assert "compiled copy's logits differ" in reason


def test_only_a_traced_copy_is_compiled() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).eval()
    compiled, reason = compiled_copy(model, model, torch.zeros(1, 3, 8, 8))
    assert compiled is None
    assert reason == "there is no traced copy to compile"


def test_a_copy_torch_jit_cannot_run_is_not_kept() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).eval()
    lean, reason = lean_copy(model, torch.zeros(1, 3, 8, 8))
    assert lean is not None, reason
    compiled, reason = compiled_copy(lean, model, torch.zeros(1, 3, 8, 8), keep=["no-such-layer"])
    assert compiled is None
    assert reason.startswith("torch.jit cannot compile it (KeyError")
