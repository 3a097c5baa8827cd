"""GradientShap: expected gradients x (input - baseline) over random baselines (Captum).

Baselines are seeded Gaussian noise around the data set's mean colour, so the
same input gives the same map.
"""

from __future__ import annotations

import torch
from captum.attr import GradientShap as CaptumGradientShap

from service.explain.base import Attribution, Explainer, ImageBatch, Param, register, seeded


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
        with seeded(self.options["seed"]):
            baselines = torch.randn(self.options["baselines"], *inputs.shape[1:])
            maps = CaptumGradientShap(batch.model).attribute(
                inputs,
                baselines=baselines,
                target=batch.targets,
                n_samples=self.options["samples"],
                stdevs=self.options["stdev"],
            )
        return Attribution.of(maps.sum(dim=1))
