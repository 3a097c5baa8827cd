"""Forward hooks as per-call resources: registered on entry, removed on exit, even on error."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name` (as in `model.named_modules()`), or a clear KeyError."""
    modules: dict[str, nn.Module] = dict(model.named_modules())
    if name not in modules:
        raise KeyError(f"the model has no layer {name!r}; it has {sorted(modules)[:20]} ...")
    return modules[name]


class Captured:
    """What a capture hook saw: `output` holds the layer's output tensor after the forward."""

    output: torch.Tensor | None = None


@contextmanager
def capture_output(layer: nn.Module) -> Iterator[Captured]:
    """Keep `layer`'s output from the forward pass that runs inside the block.

    Example: ``with capture_output(model.features[-1]) as seen: model(x)`` then ``seen.output``.
    """
    seen = Captured()

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        seen.output = output.detach()

    handle = layer.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def run_capturing(
    network: nn.Module, layers: Mapping[str, nn.Module], inputs: torch.Tensor
) -> tuple[Any, dict[str, torch.Tensor | None]]:
    """`network(inputs)`, and by name the output of each of `layers` in that pass (None for
    one that did not run); the hooks are removed before it returns, also on error."""
    with ExitStack() as hooks:
        seen = {name: hooks.enter_context(capture_output(layer)) for name, layer in layers.items()}
        answer = network(inputs)
    return answer, {name: c.output for name, c in seen.items()}


def hook_count(model: nn.Module) -> int:
    """How many forward, pre-forward and backward hooks remain on any module of `model`."""
    total = 0
    for module in model.modules():
        total += len(module._forward_hooks) + len(module._forward_pre_hooks)
        total += len(module._backward_hooks) + len(getattr(module, "_backward_pre_hooks", {}))
    return total
