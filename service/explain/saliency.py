"""Saliency: |d target / d pixel|, the largest over colour channels (Simonyan et al., 2014)."""

from __future__ import annotations

import torch
from captum.attr import Saliency as CaptumSaliency

from service.explain.base import Explainer, ImageBatch, register


@register
class Saliency(Explainer):
    name = "saliency"
    signed = False
    reduction = "max of |gradient| over colour channels"
    summary = "Absolute input gradient of the target class (Captum Saliency)."

    def attribute(self, batch: ImageBatch) -> torch.Tensor:
        inputs = batch.inputs.detach().requires_grad_()
        grads = CaptumSaliency(batch.model).attribute(inputs, target=batch.targets)
        return grads.amax(dim=1)
