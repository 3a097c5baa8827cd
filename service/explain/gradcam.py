"""Grad-CAM: the last conv block's activations weighted by the target's gradient (Captum).

Captum's LayerGradCam takes gradients to that layer only (torch.autograd.grad on
the layer output), never a full backward over all parameters, and keeps the
positive evidence (ReLU). When the archive names the model's tail (activations ->
logits), Grad-CAM runs that tail on the activations the prediction's forward pass
already captured, so the network's body is not run a second time. On that path the
map is Captum's formula written out (`tail_gradcam`: one autograd.grad, the gradients'
spatial mean as channel weights, ReLU of the weighted sum): Captum's hooks and
bookkeeping cost 0.8 ms a call where the arithmetic costs 0.7, and a test holds the two
to the same maps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from captum.attr import LayerGradCam

from service.explain.base import LAYER, Attribution, Explainer, ImageBatch, register


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
            return Attribution.of(tail_gradcam(batch.tail, batch.activations, batch.targets))
        assert batch.layer is not None, "Grad-CAM needs a layer"
        cam = LayerGradCam(batch.model, batch.layer)
        maps = cam.attribute(batch.inputs.detach(), target=batch.targets, relu_attributions=True)
        return Attribution.of(maps.squeeze(1))


def tail_gradcam(
    tail: Callable[[torch.Tensor], torch.Tensor], activations: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """[N, h, w] Grad-CAM maps from a layer's activations [N, C, h, w] and the model's tail
    (activations -> logits [N, K]) for one target class per input: what Captum's
    LayerGradCam(relu_attributions=True) computes with the tail's input as its layer, without
    its hooks."""
    layer = activations.detach().requires_grad_()
    with torch.enable_grad():
        logits = tail(layer)
        (gradients,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), layer)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * layer.detach()).sum(dim=1))
