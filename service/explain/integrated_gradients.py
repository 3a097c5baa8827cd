"""Integrated Gradients: gradients averaged along the straight path from a baseline.

Images start from zeros after normalisation (the data set's mean colour) and keep the
sign, summed over colour channels. Tabular rows start from the training-mean row in
embedding space, so each column's attribution is its contribution relative to the
average row and `base + sum(attributions) = output` up to Captum's convergence delta.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients as CaptumIG

from service.explain.base import Explainer, ImageBatch, Param, TabularBatch, register


@register
class IntegratedGradients(Explainer):
    name = "integrated_gradients"
    signed = True
    kinds = frozenset({"image", "tabular"})
    summary = "Integrated Gradients from a zero (mean-colour) or training-mean baseline (Captum)."
    params = {
        "steps": Param(int, 50, 1, 1000, "points on the path from the baseline"),
        "internal_batch_size": Param(int, None, 1, 100_000, "path points per forward pass"),
    }

    def __init__(self, **raw: Any) -> None:
        super().__init__(**raw)
        self.last_delta = np.zeros(0, dtype=np.float32)

    def attribute(self, batch: ImageBatch) -> torch.Tensor:
        """[N, H, W]: attributions to each pixel for the target class, summed over channels."""
        inputs = batch.inputs.detach()
        attributions, delta = CaptumIG(batch.model).attribute(
            inputs, baselines=torch.zeros_like(inputs), target=batch.targets,
            return_convergence_delta=True, **self._captum_options(),
        )  # fmt: skip
        self.last_delta = delta.detach().cpu().numpy()
        return attributions.sum(dim=1)

    def attribute_tabular(self, batch: TabularBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Attributions to the embedding outputs [N, E] and the continuous inputs [N, C]."""
        inputs = (batch.embedded.detach(), batch.continuous.detach())
        baselines = (batch.baseline_embedded.expand_as(inputs[0]),
                     batch.baseline_continuous.expand_as(inputs[1]))  # fmt: skip
        (embedded, continuous), delta = CaptumIG(batch.head).attribute(
            inputs, baselines=baselines, return_convergence_delta=True, **self._captum_options()
        )
        self.last_delta = delta.detach().cpu().numpy()
        return embedded, continuous

    def extras(self, index: int) -> dict[str, Any]:
        return {"convergence_delta": float(self.last_delta[index])}

    def _captum_options(self) -> dict[str, Any]:
        return {"n_steps": self.options["steps"],
                "internal_batch_size": self.options["internal_batch_size"]}  # fmt: skip
