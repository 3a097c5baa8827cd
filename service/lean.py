"""A faster inference-only copy of an image model, for answers that need no hooks or gradients.

Predictions read nothing but the logits, so they may run through a copy of the network
rearranged for the CPU: each convolution's batch norm folded into its weights (what
`torch.fx.experimental.optimization.fuse` does; that module warns on import), and the
weights and inputs in channels-last layout, which oneDNN's convolutions prefer. On the
default CNN that takes 13–20 % off each forward pass, batch 1 to 64 (bench/README.md).
Explanations keep the model as the archive built it: their hooks name its modules, and
their gradients flow through its batch norms.

The copy is made once, when the handler is set up, and only kept when it gives the same
logits as the model on a trial batch (within `TOLERANCE`); a model that torch.fx cannot
trace (data-dependent control flow, TorchScript) keeps its one network.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from service.layers import is_script_module

# Largest |difference| between the copy's logits and the model's, relative to their scale.
TOLERANCE = 1e-5


def lean_copy(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module | None, str]:
    """(the inference-only copy, "") or (None, why there is none). `example` is a batch of
    the model's input shape; the check runs it with random values."""
    if is_script_module(model):
        return None, "a TorchScript model is served as it is"
    try:
        lean = fuse(model)
        lean.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # in place
    except Exception as exc:  # torch.fx refuses many ways: each means "serve it as it is"
        return None, f"torch.fx cannot trace it ({type(exc).__name__}: {exc})"
    trial = torch.randn((2, *example.shape[1:]), generator=torch.Generator().manual_seed(0)).to(
        example.dtype
    )
    with torch.inference_mode():
        expected = model(trial)
        got = lean(channels_last(trial))
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return None, "the traced copy answers in another shape"
    error = float((got - expected).abs().max()) / (1.0 + float(expected.abs().max()))
    if error > TOLERANCE:
        return None, f"the traced copy's logits differ by {error:.1e} (over {TOLERANCE:.0e})"
    return lean, ""


def channels_last(inputs: torch.Tensor) -> torch.Tensor:
    """`inputs` [N, C, H, W] in the layout the lean copy's weights are in."""
    return inputs.contiguous(memory_format=torch.channels_last)


def fuse(model: nn.Module) -> nn.Module:
    """A traced copy of `model` (in eval mode) with every Conv2d -> BatchNorm2d pair, where the
    convolution feeds nothing else, folded into one Conv2d."""
    traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        conv, norm = modules.get(str(source.target)), modules.get(str(node.target))
        if not (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)):
            continue
        if len(source.users) > 1 or not norm.track_running_stats:
            continue
        fused = fuse_conv_bn_eval(conv, norm)
        parent, _, name = str(source.target).rpartition(".")
        setattr(traced.get_submodule(parent) if parent else traced, name, fused)
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
    traced.delete_all_unused_submodules()
    traced.graph.lint()
    traced.recompile()
    return traced
