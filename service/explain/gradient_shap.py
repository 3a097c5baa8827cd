"""GradientShap: expected gradients x (input - baseline) over random baselines (Captum).

Baselines are seeded Gaussian noise around the data set's mean colour, so the
same input gives the same map.
"""

from __future__ import annotations

import torch
from captum.attr import GradientShap as CaptumGradientShap

from service.explain.base import (
    Attribution,
    Explainer,
    ImageBatch,
    ModelInput,
    Param,
    per_pass,
    register,
    seeded,
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
        with seeded(self.options["seed"]):
            baselines = torch.randn(self.options["baselines"], *batch.inputs.shape[1:])
            return batch.in_parts(lambda part: self._attribute(part, baselines))

    def _attribute(self, batch: ImageBatch, baselines: torch.Tensor) -> Attribution:
        """The mean over `samples` draws for all the batch's inputs, taken in passes of as
        many draws as PASS_ELEMENTS allows (one pass when they all fit)."""
        inputs = batch.inputs.detach()
        samples = self.options["samples"]
        size = per_pass(inputs.numel(), samples)
        if size >= samples:
            return Attribution.of(self._draws(batch, baselines, samples).sum(dim=1))
        total = torch.zeros_like(inputs)
        for start in range(0, samples, size):
            draws = min(size, samples - start)
            total += self._draws(batch, baselines, draws) * draws
        return Attribution.of((total / samples).sum(dim=1))

    def _draws(self, batch: ImageBatch, baselines: torch.Tensor, draws: int) -> torch.Tensor:
        """Captum's GradientShap over `draws` random baselines per input: [N, C, H, W]."""
        maps: torch.Tensor = CaptumGradientShap(batch.model).attribute(
            batch.inputs.detach(),
            baselines=baselines,
            target=batch.targets,
            n_samples=draws,
            stdevs=self.options["stdev"],
        )
        return maps.detach()
