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

`compiled_copy` then compiles the copy with TorchScript (traced, frozen, optimised for
inference), answering the kept layers' outputs beside the logits, so no hook is needed.
Its pass runs in C++ from end to end, taking the GIL back once rather than at each op; on
the default CNN it takes 14-23 % off a pass in-process, and predictions at c=4 went from
132 to 173 req/s (bench/README.md). It is kept under the same check, at two more batch
sizes; where torch.jit refuses, the traced copy serves.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from service.hooks import run_capturing
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
    trial = _trial(example, 2)
    got = _hooked(lean, keep, channels_last(trial))
    why = _differs("traced copy", got, _hooked(model, keep, trial))
    return (None, why) if why else (lean, "")


def compiled_copy(
    lean: nn.Module, model: nn.Module, example: torch.Tensor, keep: Sequence[str] = ()
) -> tuple[torch.jit.ScriptModule | None, str]:
    """(the lean copy compiled by TorchScript, "") or (None, why there is none).

    The copy is traced, frozen (its weights become constants) and optimised for inference
    (oneDNN's prepacked convolutions), and answers ``(logits, *outputs)``: the outputs of
    the layers named in `keep`, in that order, in place of hooks. Its forward pass runs in
    C++ from end to end, giving the GIL back once per pass rather than at each op. It is
    kept when it agrees with `model` as the lean copy must, at batch sizes other than the one
    it was traced at.
    torch.jit is deprecated in favour of torch.compile, which took 41 s here to compile this
    network and gave 3 % (bench/README.md); its DeprecationWarnings are not passed on."""
    if not isinstance(lean, torch.fx.GraphModule):
        return None, "there is no traced copy to compile"
    try:
        compiled = _compile(lean, example, keep)
        for batch in (1, 3):  # traced at 2: a size baked into the trace shows here
            trial = _trial(example, batch)
            with torch.inference_mode():
                answer = compiled(channels_last(trial))
            got = (answer[0], dict(zip(keep, answer[1:], strict=True)))
            if why := _differs("compiled copy", got, _hooked(model, keep, trial)):
                return None, why
    except Exception as exc:  # torch.jit refuses many ways: each means "serve the lean copy"
        return None, f"torch.jit cannot compile it ({type(exc).__name__}: {exc})"
    return compiled, ""


def _compile(lean: torch.fx.GraphModule, example: torch.Tensor, keep: Sequence[str]) -> Any:
    """`lean`, answering its kept layers' outputs too, traced, frozen and optimised."""
    graph = torch.fx.Graph()
    values: dict[torch.fx.Node, torch.fx.Node] = {}
    logits = graph.graph_copy(lean.graph, values)
    layers = {str(n.target): values[n] for n in lean.graph.nodes if n.op == "call_module"}
    graph.output((logits, *(layers[name] for name in keep)))
    both = torch.fx.GraphModule(lean, graph).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(both, channels_last(_trial(example, 2)), check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


Outputs = tuple[object, dict[str, torch.Tensor | None]]  # logits, and each kept layer's output


def _trial(example: torch.Tensor, batch: int) -> torch.Tensor:
    """A batch of `batch` random inputs of `example`'s shape and type, the same every time."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch, *example.shape[1:]), generator=generator).to(example.dtype)


def _hooked(network: nn.Module, keep: Collection[str], inputs: torch.Tensor) -> Outputs:
    """`network`'s answer for `inputs`, and the outputs of its layers named in `keep`."""
    with torch.inference_mode():
        return run_capturing(network, {n: network.get_submodule(n) for n in keep}, inputs)


def _differs(which: str, got: Outputs, expected: Outputs) -> str:
    """What in a copy's answer differs from the model's by more than TOLERANCE ("": none)."""
    if not isinstance(got[0], torch.Tensor) or not isinstance(expected[0], torch.Tensor):
        return f"the {which} or the model answers something other than one tensor"
    if got[0].shape != expected[0].shape:
        return f"the {which} answers in another shape"
    pairs: list[tuple[str, torch.Tensor | None, torch.Tensor | None]] = [
        ("logits", got[0], expected[0])
    ]
    pairs += [(f"layer {n!r}", got[1].get(n), output) for n, output in expected[1].items()]
    for what, a, b in pairs:
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return f"the {which}'s {what} has another shape"
        error = float((a - b).abs().max()) / (1.0 + float(b.abs().max()))
        if error > TOLERANCE:
            return f"the {which}'s {what} differ by {error:.1e} (over {TOLERANCE:.0e})"
    return ""


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
