"""Activation map: the channel mean of the last conv block's activations.

Captured by a forward hook during the prediction's own forward pass, so it
costs no extra pass: it shows where the network's last features fire, whatever
the class.
"""

from __future__ import annotations

from service.explain.base import LAYER, Attribution, Explainer, ImageBatch, ModelInput, register


@register
class Activation(Explainer):
    name = "activation"
    signed = False
    reduction = "mean over the last conv block's channels"
    needs_activations = True
    needs_gradients = False
    stage = "heatmap"
    summary = "Channel-averaged activations of the last conv block (no extra pass)."
    params = {"layer": LAYER}

    def cost(self, model_input: ModelInput) -> int:
        return 0  # read from the prediction's own forward pass

    def attribute(self, batch: ImageBatch) -> Attribution:
        assert batch.activations is not None, "the forward pass captured no activations"
        return Attribution.of(batch.activations.mean(dim=1))
