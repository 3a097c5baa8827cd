"""Occlusion: the drop in the target's score when a square patch is greyed out (Captum)."""

from __future__ import annotations

from captum.attr import Occlusion as CaptumOcclusion

from service.errors import SchemaError
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
class Occlusion(Explainer):
    name = "occlusion"
    signed = True
    reduction = "sum over colour channels"
    summary = "Score drop when a sliding patch is replaced by the mean colour."
    params = {
        "window": Param(int, 8, 1, 256, "patch side in model-input pixels"),
        "stride": Param(int, 4, 1, 256, "step between patches"),
        "internal_batch_size": Param(
            int, 64, 1, 4096, "perturbed copies per forward pass (fewer when they are large)"
        ),
    }

    def cost(self, model_input: ModelInput) -> int:
        """The number of window positions on the model's input; SchemaError when the window
        or the stride is larger than the input's side."""
        window, stride = int(self.options["window"]), int(self.options["stride"])
        side = min(model_input.size)
        if window > side or stride > side:
            raise SchemaError(
                f"occlusion.window and occlusion.stride must be at most the model input's "
                f"side, {side} pixels ({model_input.size[0]}x{model_input.size[1]}), got "
                f"window={window} and stride={stride}: choose smaller ones"
            )
        height, width = model_input.size
        return ((height - window) // stride + 1) * ((width - window) // stride + 1)

    def attribute(self, batch: ImageBatch) -> Attribution:
        return batch.in_parts(self._attribute)

    def _attribute(self, batch: ImageBatch) -> Attribution:
        window, stride = self.options["window"], self.options["stride"]
        inputs = batch.inputs.detach()
        maps = CaptumOcclusion(batch.model).attribute(
            inputs,
            target=batch.targets,
            baselines=0.0,
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            perturbations_per_eval=per_pass(inputs.numel(), self.options["internal_batch_size"]),
        )
        return Attribution.of(maps.sum(dim=1))
