"""GradientShap: expected gradients x (input - baseline) over random baselines
(Lundberg and Lee, 2017), as Captum's GradientShap computes it.

Baselines are Gaussian noise around the data set's mean colour. Every draw (the
baseline distribution, the baseline picked for each sample, the noise on the input and
the point between baseline and input) comes from the call's own generator seeded with
`seed`: the same input gives the same map, and calls on other threads (other models'
workers) never touch the draws. Captum's Saliency supplies the gradients. The draws are
taken in passes of at most PASS_ELEMENTS input elements, so memory stays bounded at any
`samples`.
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
class GradientShap(Explainer):
    name = "gradient_shap"
    signed = True
    reduction = "sum over colour channels"
    summary = "SHAP values approximated by expected gradients over random baselines."
    batchable = False  # its noise is drawn for the whole call
    params = {
        "samples": Param(int, 32, 1, 512, "random baseline draws per input"),
        "baselines": Param(int, 8, 1, 64, "size of the baseline distribution"),
        "stdev": Param(float, 0.1, 0.0, 5.0, "noise added to each draw (normalised units)"),
        "seed": Param(int, 0, 0, 2**31 - 1, "seed of baselines and noise"),
    }

    def cost(self, model_input: ModelInput) -> int:
        return int(self.options["samples"])

    def attribute(self, batch: ImageBatch) -> Attribution:
        inputs = batch.inputs.detach()
        samples = self.options["samples"]
        draws = len(inputs) * samples  # each input's draws sit next to each other
        generator = torch.Generator().manual_seed(self.options["seed"])
        shape = inputs.shape[1:]
        distribution = torch.randn(
            (self.options["baselines"], *shape), generator=generator, dtype=inputs.dtype
        ).to(inputs.device)
        picks = torch.randint(len(distribution), (draws,), generator=generator)
        alphas = torch.rand(draws, generator=generator, dtype=inputs.dtype).to(inputs.device)
        saliency = Saliency(batch.model)
        total = torch.zeros_like(inputs)
        step = per_pass(inputs[0].numel())
        for start in range(0, draws, step):
            span = torch.arange(start, min(draws, start + step))
            owners = span // samples
            noise = torch.randn((len(span), *shape), generator=generator, dtype=inputs.dtype)
            noisy = inputs[owners] + self.options["stdev"] * noise.to(inputs.device)
            baselines = distribution[picks[span]]
            weight = alphas[span].view(-1, *[1] * len(shape))
            between = (weight * noisy + (1 - weight) * baselines).requires_grad_()
            grads = saliency.attribute(between, target=batch.targets[owners], abs=False)
            total.index_add_(0, owners.to(inputs.device), ((noisy - baselines) * grads).detach())
        return Attribution.of((total / samples).sum(dim=1))
