"""A faster inference-only copy of an image model, for answers that need no hooks or gradients.

Predictions read nothing but the logits, so they may run through a copy of the network
rearranged for the CPU: each convolution's batch norm folded into its weights (what
`torch.fx.experimental.optimization.fuse` does; that module warns on import), and the
weights and inputs in channels-last layout, which oneDNN's convolutions prefer. On the
default CNN that takes 13–20 % off each forward pass, batch 1 to 64 (bench/README.md).

The layers named in `keep` (the handler's default layer) stay modules of the copy under
their own names, so a hook on one reads the same activations as on the model: the
activation map and Grad-CAM (which runs the archive's tail on those activations) use the
copy too. The inside of a kept layer is folded on its own, and nothing is folded into its
output. Methods that differentiate the whole network, or read another layer, run the
model as the archive built it.

The copy is made once, when the handler is set up, and only kept when it gives the same
logits, and the same output for each kept layer, as the model on a trial batch (within
`TOLERANCE`); a model that torch.fx cannot trace (data-dependent control flow,
TorchScript) keeps its one network.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from contextlib import ExitStack

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from service.hooks import capture_output
from service.layers import is_script_module

# Largest |difference| between the copy's logits and the model's, relative to their scale.
TOLERANCE = 1e-5


def lean_copy(
    model: nn.Module, example: torch.Tensor, keep: Collection[str] = ()
) -> tuple[nn.Module | None, str]:
    """(the inference-only copy, "") or (None, why there is none). `keep` names modules of
    `model` that must stay hookable in the copy, with the same outputs. `example` is a batch
    of the model's input shape; the check runs it with random values."""
    if is_script_module(model):
        return None, "a TorchScript model is served as it is"
    try:
        lean = fuse(model, keep)
        lean.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # in place
    except Exception as exc:  # torch.fx refuses many ways: each means "serve it as it is"
        return None, f"torch.fx cannot trace it ({type(exc).__name__}: {exc})"
    trial = torch.randn((2, *example.shape[1:]), generator=torch.Generator().manual_seed(0)).to(
        example.dtype
    )
    with torch.inference_mode(), ExitStack() as hooks:
        theirs = {n: hooks.enter_context(capture_output(model.get_submodule(n))) for n in keep}
        ours = {n: hooks.enter_context(capture_output(lean.get_submodule(n))) for n in keep}
        expected = model(trial)
        got = lean(channels_last(trial))
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return None, "the traced copy answers in another shape"
    pairs: list[tuple[str, torch.Tensor | None, torch.Tensor | None]] = [("logits", got, expected)]
    pairs += [(f"layer {n!r}", ours[n].output, theirs[n].output) for n in keep]
    for what, a, b in pairs:
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return None, f"the traced copy's {what} has another shape"
        error = float((a - b).abs().max()) / (1.0 + float(b.abs().max()))
        if error > TOLERANCE:
            return None, f"the traced copy's {what} differ by {error:.1e} (over {TOLERANCE:.0e})"
    return lean, ""


def channels_last(inputs: torch.Tensor) -> torch.Tensor:
    """`inputs` [N, C, H, W] in the layout the lean copy's weights are in."""
    return inputs.contiguous(memory_format=torch.channels_last)


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, with the modules named in `keep` left whole (calls, not inlined)."""

    def __init__(self, keep: Collection[str]) -> None:
        super().__init__()
        self.keep = set(keep)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.keep or super().is_leaf_module(
            m, module_qualified_name
        )


def fuse(model: nn.Module, keep: Collection[str] = ()) -> nn.Module:
    """A traced copy of `model` (in eval mode) with every Conv2d -> BatchNorm2d pair, where the
    convolution feeds nothing else, folded into one Conv2d. The modules named in `keep` stay
    modules of the copy, under the same names, with their own insides folded the same way
    where torch.fx can trace them; no batch norm is folded into a kept module's output."""
    root = copy.deepcopy(model)
    traced = torch.fx.GraphModule(root, _Tracer(keep).trace(root))
    for name in keep:
        inside = traced.get_submodule(name)
        if not _is_leaf(inside):
            try:
                inside = fuse(inside)
            except Exception:  # noqa: BLE001, S112 - left whole: still the same outputs
                continue
            parent, _, child = name.rpartition(".")
            setattr(traced.get_submodule(parent) if parent else traced, child, inside)
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
        if {str(source.target), str(node.target)} & set(keep):
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


def _is_leaf(module: nn.Module) -> bool:
    """A module torch.fx would call rather than trace into (torch.nn's own layers)."""
    return torch.fx.Tracer().is_leaf_module(module, "")
