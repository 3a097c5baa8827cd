"""GradientShap: expected gradients x (input - baseline) over random baselines
(Lundberg and Lee, 2017), as Captum's GradientShap computes it.

Baselines are Gaussian noise around the data set's mean colour. Every draw (the
baseline distribution, the baseline picked for each sample, the noise on the input and
the point between baseline and input) comes from the call's own generator seeded with
`seed`: the same input gives the same map, and calls on other threads (other models'
workers) never touch the draws. Captum's Saliency supplies the gradients.
"""

from __future__ import annotations

import torch
from captum.attr import Saliency

from service.explain.base import Attribution, Explainer, ImageBatch, Param, register


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

    def attribute(self, batch: ImageBatch) -> Attribution:
        inputs = batch.inputs.detach()
        n, samples = inputs.shape[0], self.options["samples"]
        generator = torch.Generator().manual_seed(self.options["seed"])

        def draw(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator, dtype=inputs.dtype)

        distribution = draw(self.options["baselines"], *inputs.shape[1:])
        picks = torch.randint(len(distribution), (n * samples,), generator=generator)
        baselines = distribution[picks].to(inputs.device)
        # Each input's `samples` draws sit next to each other, as in Captum's NoiseTunnel.
        noisy = inputs.repeat_interleave(samples, dim=0)
        noisy = noisy + self.options["stdev"] * draw(*noisy.shape).to(inputs.device)
        alphas = torch.rand(n * samples, generator=generator, dtype=inputs.dtype)
        alphas = alphas.to(inputs.device).view(-1, *[1] * (inputs.dim() - 1))
        between = (alphas * noisy + (1 - alphas) * baselines).requires_grad_()
        targets = batch.targets.repeat_interleave(samples)
        grads = Saliency(batch.model).attribute(between, target=targets, abs=False)
        shares = (noisy - baselines) * grads
        mean = shares.view(n, samples, *inputs.shape[1:]).mean(dim=1)
        return Attribution.of(mean.sum(dim=1))
