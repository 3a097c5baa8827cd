"""SmoothGrad: saliency averaged over noisy copies of the input (Smilkov et al., 2017).

What Captum's NoiseTunnel(Saliency) computes with nt_type="smoothgrad", but the noise
comes from the call's own generator seeded with `seed`: the same input gives the same
map, and calls on other threads (other models' workers) never touch the draws.
"""

from __future__ import annotations

import torch
from captum.attr import Saliency

from service.explain.base import Attribution, Explainer, ImageBatch, Param, register


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

    def attribute(self, batch: ImageBatch) -> Attribution:
        inputs = batch.inputs.detach()
        samples = self.options["samples"]
        generator = torch.Generator().manual_seed(self.options["seed"])
        # Each input's `samples` copies sit next to each other, as in NoiseTunnel.
        copies = inputs.repeat_interleave(samples, dim=0)
        noise = torch.randn(copies.shape, generator=generator, dtype=copies.dtype)
        noisy = (copies + self.options["stdev"] * noise.to(copies.device)).requires_grad_()
        targets = batch.targets.repeat_interleave(samples)
        grads = Saliency(batch.model).attribute(noisy, target=targets)  # |gradient|
        mean = grads.view(inputs.shape[0], samples, *inputs.shape[1:]).mean(dim=1)
        return Attribution.of(mean.amax(dim=1))
