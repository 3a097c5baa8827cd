"""Grad-CAM: the last conv block's activations weighted by the target's gradient.

Captum's LayerGradCam takes gradients to that layer only (torch.autograd.grad
on the layer output), never a full backward over all parameters; ReLU keeps the
evidence for the class.
"""

from __future__ import annotations

import torch
from captum.attr import LayerGradCam

from service.explain.base import Explainer, ImageBatch, register


@register
class GradCam(Explainer):
    name = "gradcam"
    signed = False
    reduction = "gradient-weighted sum over the last conv block's channels, then ReLU"
    summary = "Grad-CAM on the last conv block (Captum LayerGradCam)."

    def attribute(self, batch: ImageBatch) -> torch.Tensor:
        cam = LayerGradCam(batch.model, batch.layer)
        maps = cam.attribute(batch.inputs, target=batch.targets, relu_attributions=True)
        return maps.squeeze(1)
