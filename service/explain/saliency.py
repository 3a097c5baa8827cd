"""Saliency: |d target / d pixel|, the largest over colour channels (Simonyan et al., 2014)."""

from __future__ import annotations

from captum.attr import Saliency as CaptumSaliency

from service.explain.base import Attribution, Explainer, ImageBatch, register


@register
class Saliency(Explainer):
    name = "saliency"
    signed = False
    reduction = "max of |gradient| over colour channels"
    summary = "Absolute input gradient of the target class (Captum Saliency)."

    def attribute(self, batch: ImageBatch) -> Attribution:
        inputs = batch.inputs.detach().requires_grad_()
        grads = CaptumSaliency(batch.model).attribute(inputs, target=batch.targets)
        return Attribution.of(grads.amax(dim=1))
