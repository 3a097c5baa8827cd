"""SmoothGrad: saliency averaged over noisy copies of the input (Captum NoiseTunnel).

The noise is drawn from a seeded generator, so the same input gives the same map.
"""

from __future__ import annotations

from captum.attr import NoiseTunnel, Saliency

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
        with seeded(self.options["seed"]):
            return batch.in_parts(self._attribute)

    def _attribute(self, batch: ImageBatch) -> Attribution:
        """The noisy copies of all the batch's inputs, as many per pass as PASS_ELEMENTS allows."""
        tunnel = NoiseTunnel(Saliency(batch.model))
        samples = self.options["samples"]
        grads = tunnel.attribute(
            batch.inputs.detach().requires_grad_(),
            nt_type="smoothgrad",
            target=batch.targets,
            nt_samples=samples,
            stdevs=self.options["stdev"],
            nt_samples_batch_size=per_pass(batch.inputs.numel(), samples),
        )
        return Attribution.of(grads.amax(dim=1))
