"""Occlusion: the drop in the target's score when a square patch is greyed out (Captum)."""

from __future__ import annotations

from captum.attr import Occlusion as CaptumOcclusion

from service.explain.base import Attribution, Explainer, ImageBatch, Param, register


@register
class Occlusion(Explainer):
    name = "occlusion"
    signed = True
    reduction = "sum over colour channels"
    summary = "Score drop when a sliding patch is replaced by the mean colour."
    params = {
        "window": Param(int, 8, 1, 256, "patch side in model-input pixels"),
        "stride": Param(int, 4, 1, 256, "step between patches"),
        "internal_batch_size": Param(int, 64, 1, 4096, "perturbed copies per forward pass"),
    }

    def attribute(self, batch: ImageBatch) -> Attribution:
        window, stride = self.options["window"], self.options["stride"]
        maps = CaptumOcclusion(batch.model).attribute(
            batch.inputs.detach(),
            target=batch.targets,
            baselines=0.0,
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            perturbations_per_eval=self.options["internal_batch_size"],
        )
        return Attribution.of(maps.sum(dim=1))
