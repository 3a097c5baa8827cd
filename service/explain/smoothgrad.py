"""SmoothGrad: saliency averaged over noisy copies of the input (Smilkov et al., 2017), as
Captum's NoiseTunnel(Saliency) computes it.

The noise comes from the call's own generator seeded with `seed`: the same input gives
the same map, and calls on other threads (other models' workers) never touch the draws.
Noisy copies are taken in passes of at most PASS_ELEMENTS input elements, so memory
stays bounded at any `samples`.
"""

from __future__ import annotations

import torch
from captum.attr import Saliency

from service.explain.base import (
    Attribution,
    Explainer,
    ImageBatch,
    ModelInput,
    Param,
    per_pass,
    register,
)


@register
class SmoothGrad(Explainer):
    name = "smoothgrad"
    signed = False
    reduction = "max of |gradient| over colour channels, averaged over noisy samples"
    summary = "Saliency averaged over Gaussian-noised copies of the input (NoiseTunnel)."
    batchable = False  # its noise is drawn for the whole call
    params = {
        "samples": Param(int, 16, 1, 256, "noisy copies averaged"),
        "stdev": Param(float, 0.2, 0.0, 5.0, "noise standard deviation (normalised units)"),
        "seed": Param(int, 0, 0, 2**31 - 1, "seed of the noise"),
    }

    def cost(self, model_input: ModelInput) -> int:
        return int(self.options["samples"])

    def attribute(self, batch: ImageBatch) -> Attribution:
        inputs = batch.inputs.detach()
        samples = self.options["samples"]
        generator = torch.Generator().manual_seed(self.options["seed"])
        saliency = Saliency(batch.model)
        total = torch.zeros_like(inputs)
        copies = len(inputs) * samples  # each input's copies sit next to each other
        step = per_pass(inputs[0].numel())
        for start in range(0, copies, step):
            owners = torch.arange(start, min(copies, start + step)) // samples
            noise = torch.randn(inputs[owners].shape, generator=generator, dtype=inputs.dtype)
            noisy = (
                inputs[owners] + self.options["stdev"] * noise.to(inputs.device)
            ).requires_grad_()
            grads = saliency.attribute(noisy, target=batch.targets[owners])  # |gradient|
            total.index_add_(0, owners.to(inputs.device), grads.detach())
        return Attribution.of((total / samples).amax(dim=1))
