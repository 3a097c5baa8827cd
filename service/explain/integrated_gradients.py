"""Integrated Gradients: gradients averaged along the straight path from a baseline.

Images start by default from a blurred copy of themselves (a zero image carries no
information for a model that standardises each image, so the path would jump at its
start and the integral would not converge); `baseline=zeros` starts from the data
set's mean colour. Attributions keep their sign, summed over colour channels.

Tabular rows start from each of K reference rows drawn from the training data (in
embedding space) and the attributions are averaged over them (Expected Gradients), so a
column's attribution is its contribution relative to the average row and
`base + sum(attributions) = output`, base being the references' mean output, up to
Captum's convergence delta.
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients as CaptumIG

from service.explain.base import (
    Attribution,
    Explainer,
    ImageBatch,
    ModelInput,
    Param,
    TabularAttribution,
    TabularBatch,
    blur,
    per_pass,
    register,
)

TABULAR_CHUNK = 8192  # path points per forward pass when the caller sets no internal_batch_size


@register
class IntegratedGradients(Explainer):
    name = "integrated_gradients"
    signed = True
    kinds = frozenset({"image", "tabular"})
    summary = "Integrated Gradients from a zero (mean-colour) or training-mean baseline (Captum)."
    params = {
        "steps": Param(int, 50, 1, 1000, "points on the path from the baseline"),
        "baseline": Param(
            str,
            "blur",
            choices=("blur", "zeros"),
            help="images: start from a blurred copy or from the mean colour",
        ),
        "internal_batch_size": Param(
            int,
            None,
            1,
            100_000,
            "path points per forward pass (default: as many as one bounded pass holds, which "
            "also caps a larger value)",
        ),
    }

    def cost(self, model_input: ModelInput) -> int:
        """One evaluation per path point, from each reference row (tabular)."""
        return int(self.options["steps"]) * model_input.references

    def attribute(self, batch: ImageBatch) -> Attribution:
        """[N, H, W]: attributions to each pixel for the target class, summed over channels."""
        return batch.in_parts(self._attribute)

    def _attribute(self, batch: ImageBatch) -> Attribution:
        inputs = batch.inputs.detach()
        baselines = blur(inputs) if self.options["baseline"] == "blur" else torch.zeros_like(inputs)
        # Path points per pass: bounded by elements, and never fewer than the inputs (Captum
        # takes at least one step for every input in each pass).
        points = per_pass(inputs[0].numel(), self.options["internal_batch_size"])
        attributions, delta = CaptumIG(batch.model).attribute(
            inputs,
            baselines=baselines,
            target=batch.targets,
            return_convergence_delta=True,
            n_steps=self.options["steps"],
            internal_batch_size=max(len(inputs), points),
        )
        return Attribution.of(attributions.sum(dim=1), _deltas(delta))

    def attribute_tabular(self, batch: TabularBatch) -> TabularAttribution:
        """Attributions to the embedding outputs [N, E] and the continuous inputs [N, C],
        averaged over the K reference rows (IG from each, as in Expected Gradients)."""
        k = batch.baseline_embedded.shape[0]
        width = batch.embedded.shape[1] + batch.continuous.shape[1]  # elements per path point
        wanted = self.options["internal_batch_size"] or TABULAR_CHUNK
        budget = max(per_pass(width, wanted), k)
        rows = budget // k  # input rows per Captum call: rows * K paths, one path point each
        parts = [
            self._paths(batch, start, rows, budget)
            for start in range(0, batch.embedded.shape[0], rows)
        ]
        return TabularAttribution(
            torch.cat([e for e, _, _ in parts]),
            torch.cat([c for _, c, _ in parts]),
            _deltas(torch.cat([delta for _, _, delta in parts])),
        )

    def _paths(
        self, batch: TabularBatch, start: int, rows: int, budget: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """IG of rows [start, start + rows) from every reference, averaged over references."""
        embedded = batch.embedded[start : start + rows].detach()
        continuous = batch.continuous[start : start + rows].detach()
        n, k = embedded.shape[0], batch.baseline_embedded.shape[0]
        inputs = (embedded.repeat_interleave(k, dim=0), continuous.repeat_interleave(k, dim=0))
        baselines = (batch.baseline_embedded.repeat(n, 1), batch.baseline_continuous.repeat(n, 1))
        (attr_e, attr_c), delta = CaptumIG(batch.head).attribute(
            inputs,
            baselines=baselines,
            return_convergence_delta=True,
            n_steps=self.options["steps"],
            internal_batch_size=budget,
        )
        return (
            attr_e.view(n, k, -1).mean(dim=1),
            attr_c.view(n, k, -1).mean(dim=1),
            delta.detach().view(n, k).mean(dim=1),
        )


def _deltas(delta: torch.Tensor) -> tuple[dict[str, float], ...]:
    """Captum's per-input convergence deltas as each input's extras."""
    return tuple({"convergence_delta": float(d)} for d in delta.detach().cpu().flatten())
