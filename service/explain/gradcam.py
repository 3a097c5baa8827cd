"""Grad-CAM: the last conv block's activations weighted by the target's gradient (Captum).

Captum's LayerGradCam takes gradients to that layer only (torch.autograd.grad on
the layer output), never a full backward over all parameters, and keeps the
positive evidence (ReLU). When the archive names the model's tail (activations ->
logits), Grad-CAM runs that tail on the activations the prediction's forward pass
already captured, so the network's body is not run a second time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from captum.attr import LayerGradCam
from torch import nn

from service.explain.base import LAYER, Attribution, Explainer, ImageBatch, register


class _Tail(nn.Module):
    """Wraps a tail function so that its input is a layer Captum can hook."""

    def __init__(self, tail: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.layer = nn.Identity()
        self.tail = tail

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.tail(self.layer(activations))


@register
class GradCam(Explainer):
    name = "gradcam"
    signed = False
    reduction = "gradient-weighted sum over the last conv block's channels, then ReLU"
    needs_activations = True
    summary = "Grad-CAM on the last conv block (Captum LayerGradCam)."
    params = {"layer": LAYER}

    def attribute(self, batch: ImageBatch) -> Attribution:
        if batch.tail is not None and batch.activations is not None:
            tail = _Tail(batch.tail)
            inputs = batch.activations.detach().requires_grad_()
            cam = LayerGradCam(tail, tail.layer)
        else:
            assert batch.layer is not None, "Grad-CAM needs a layer"
            inputs = batch.inputs.detach()
            cam = LayerGradCam(batch.model, batch.layer)
        maps = cam.attribute(inputs, target=batch.targets, relu_attributions=True)
        return Attribution.of(maps.squeeze(1))
