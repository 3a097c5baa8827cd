"""Which layers of a model can give an activation map, found by one trial forward pass.

`spatial_layers(model, example)` hooks every submodule, runs `example` through
the model once (eval mode, no gradients) and lists each submodule whose output
is a 4-D tensor [N, C, h, w] with h * w > 1, in the order the outputs were
produced. `auto_layer` picks the latest spatial map the network computes (the
last listed output, named by the innermost module that produced it once), which
is what activation and Grad-CAM style explanations want.

Choices:

* The model itself (name "") is never listed: its output is the prediction.
* Containers are listed too (any named module can be hooked, and the serving
  handler finds layers by name), after their children, since a container's hook
  fires when its own forward returns. When a container returns the very tensor
  one of its descendants produced (a Sequential returns its last child's
  output) its `alias_of` names that descendant; `auto_layer` prefers the inner
  name of that tensor, the module that actually computed the map (`features.3`,
  not `features`), unless that module runs more than once per forward (see
  `pick_layer`). A residual block computes a new tensor, so it is no alias.
* A module called several times (one ReLU reused) is listed once, where its last
  call falls, with the shape of its last output, because a capture hook keeps
  the last output; `calls` says how often it ran.
* Submodules that are ScriptModules cannot be hooked and are left out.

TorchScript, found by experiment with torch 2.13 on modules saved with
`torch.jit.save` (scripted and traced) and read back with `torch.jit.load`:

* `torch.jit.load` returns a `RecursiveScriptModule`, an `nn.Module` and a
  `torch.jit.ScriptModule`; `named_modules()` works and lists the original
  names ("features", "features.0", ...), `state_dict()` and `eval()` work, and a
  submodule can be called on its own.
* Hooks are impossible: `register_forward_hook`, `register_forward_pre_hook` and
  `register_full_backward_hook` raise "RuntimeError: register_forward_hook is not
  supported on ScriptModules", on the root and on every submodule alike.
* Gradients with respect to the input work (`x.requires_grad_()`, backward of
  one logit gives `x.grad`), and Captum's IntegratedGradients runs on it, so
  saliency and integrated gradients remain possible; layer maps do not.

So for a ScriptModule `spatial_layers` returns [] and `auto_layer` raises
`NoSpatialLayer` with `SCRIPT_MODULE_REASON`, without running the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

SCRIPT_MODULE_REASON = (
    "TorchScript modules accept no forward hooks (torch.jit.load returns a ScriptModule whose "
    "register_forward_hook raises), so no layer's activations can be captured; "
    "input-gradient methods (saliency, integrated gradients) still work"
)
NO_SPATIAL_REASON = "no submodule outputs a 4-D [N, C, h, w] tensor with h * w > 1"


class NoSpatialLayer(ValueError):
    """The model has no layer whose output is a spatial map; the message says why."""


@dataclass(frozen=True)
class LayerInfo:
    """A submodule with a spatial output: its name, its output shape [C, h, w] for one input."""

    name: str
    shape: tuple[int, int, int]
    type: str
    alias_of: str | None = None  # a descendant that produced the very same output tensor
    calls: int = 1

    def __str__(self) -> str:
        return f"{self.name} {list(self.shape)}"


def is_script_module(model: nn.Module) -> bool:
    return isinstance(model, torch.jit.ScriptModule)


def spatial_layers(model: nn.Module, example: torch.Tensor) -> list[LayerInfo]:
    """Submodules whose output on `example` ([N, 3, H, W]) is a spatial map, in output order.

    One forward pass in eval mode without gradients; every module's training flag
    is restored afterwards and no hook is left behind, also when the forward raises.
    Returns [] for a ScriptModule (see the module docstring).
    """
    if is_script_module(model):
        return []
    seen: dict[str, tuple[int, torch.Tensor, int]] = {}  # name -> (order, output, calls)
    counter = [0]
    handles: list[RemovableHandle] = []

    def make_hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(_module: nn.Module, _inputs: tuple[Any, ...], output: Any) -> None:
            counter[0] += 1
            calls = seen[name][2] + 1 if name in seen else 1
            if isinstance(output, torch.Tensor):
                seen[name] = (counter[0], output, calls)
            else:
                seen.pop(name, None)

        return hook

    modes = {module: module.training for module in model.modules()}
    try:
        for name, module in model.named_modules():
            if name and not is_script_module(module):
                handles.append(module.register_forward_hook(make_hook(name)))
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    ordered = sorted(seen.items(), key=lambda item: item[1][0])
    layers: list[LayerInfo] = []
    outputs: list[tuple[str, torch.Tensor]] = []
    for name, (_order, output, calls) in ordered:
        if output.dim() != 4 or output.shape[2] * output.shape[3] <= 1:
            continue
        alias = next(
            (
                earlier
                for earlier, tensor in reversed(outputs)
                if tensor is output and earlier.startswith(name + ".")
            ),
            None,
        )
        outputs.append((name, output))
        c, h, w = (int(v) for v in output.shape[1:])
        module_type = type(model.get_submodule(name)).__name__
        layers.append(LayerInfo(name, (c, h, w), module_type, alias, calls))
    return layers


def auto_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The module whose output is the model's last spatial map (see `pick_layer`);
    NoSpatialLayer if there is none."""
    if is_script_module(model):
        raise NoSpatialLayer(SCRIPT_MODULE_REASON)
    return pick_layer(spatial_layers(model, example)).name


def pick_layer(layers: list[LayerInfo]) -> LayerInfo:
    """`auto_layer`'s choice among already listed layers: the last map, by its inner name.

    The last listed layer produced the last spatial map; when it is an alias, the
    choice moves inward to the descendant that computed the tensor, as long as that
    descendant runs once per forward (a torchvision BasicBlock ends with its shared
    `relu`, called twice, so the block itself is chosen, not `layer4.1.relu`).
    """
    if not layers:
        raise NoSpatialLayer(NO_SPATIAL_REASON)
    by_name = {layer.name: layer for layer in layers}
    chosen = layers[-1]
    while chosen.alias_of is not None and by_name[chosen.alias_of].calls == 1:
        chosen = by_name[chosen.alias_of]
    return chosen
