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

With `delta_tol`, each input (image, or tabular row) is integrated with `steps` path
points, then twice as many, and so on up to `max_steps`, until its |convergence delta|
is at most the tolerance; its extras report the steps used, the delta reached and
whether it converged (False when `max_steps` was reached first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from captum.attr import IntegratedGradients as CaptumIG

from service.errors import SchemaError
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
MAX_STEPS = 8192  # the most path points delta_tol may take for one input (steps: 1000)


@register
class IntegratedGradients(Explainer):
    name = "integrated_gradients"
    signed = True
    kinds = frozenset({"image", "tabular"})
    reductions = {"tabular": "sum over each column's model inputs (embedding outputs)"}
    summary = "Integrated Gradients from a blurred or mean-colour image (Captum)."
    summaries = {
        "tabular": "Integrated Gradients from K training reference rows, averaged (Captum)."
    }
    params = {
        "steps": Param(
            int, 50, 1, 1000, "points on the path from the baseline (with delta_tol: the first try)"
        ),
        "baseline": Param(
            str,
            "blur",
            choices=("blur", "zeros"),
            help="start from a blurred copy of the image or from the mean colour",
            kinds=frozenset({"image"}),
        ),
        "delta_tol": Param(
            float,
            None,
            1e-9,
            1.0,
            "converge: double steps (up to max_steps) until |convergence delta| <= this; "
            "default: a fixed number of steps",
        ),
        "max_steps": Param(
            int,
            4096,
            1,
            MAX_STEPS,
            "with delta_tol: the most path points tried; an input still above the tolerance "
            "there is reported with converged=false",
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

    def __init__(self, kind: str | None = None, /, **raw: Any) -> None:
        super().__init__(kind, **raw)
        self.tries = self.schedule()  # refuses steps above max_steps with delta_tol, on entry

    def schedule(self) -> list[int]:
        """The path lengths tried: `steps` alone, or with delta_tol `steps`, doubled up to
        `max_steps`; SchemaError when steps is above max_steps."""
        steps, cap = int(self.options["steps"]), int(self.options["max_steps"])
        if self.options["delta_tol"] is None:
            return [steps]
        if steps > cap:
            raise SchemaError(
                f"integrated_gradients.steps ({steps}) is above max_steps ({cap}): with "
                "delta_tol, steps is the first try and max_steps the last; lower steps or "
                "raise max_steps"
            )
        tries = [steps]
        while tries[-1] < cap:
            tries.append(min(2 * tries[-1], cap))
        return tries

    def cost(self, model_input: ModelInput) -> int:
        """One evaluation per path point, from each reference row (tabular); with delta_tol,
        the worst case: every try of the schedule, up to max_steps."""
        return sum(self.tries) * model_input.references

    def attribute(self, batch: ImageBatch) -> Attribution:
        """[N, H, W]: attributions to each pixel for the target class, summed over channels."""
        return batch.in_parts(self._attribute)

    def _attribute(self, batch: ImageBatch) -> Attribution:
        inputs = batch.inputs.detach()
        baselines = blur(inputs) if self.options["baseline"] == "blur" else torch.zeros_like(inputs)
        ig = CaptumIG(batch.model)
        # Path points per pass: bounded by elements, and never fewer than the inputs (Captum
        # takes at least one step for every input in each pass).
        points = per_pass(inputs[0].numel(), self.options["internal_batch_size"])

        def integrate(rows: torch.Tensor, steps: int) -> tuple[list[torch.Tensor], torch.Tensor]:
            attributions, delta = ig.attribute(
                inputs[rows],
                baselines=baselines[rows],
                target=batch.targets[rows],
                return_convergence_delta=True,
                n_steps=steps,
                internal_batch_size=max(len(rows), points),
            )
            return [attributions.detach().sum(dim=1)], delta.detach()

        (maps,), extras = self._converge(integrate, len(inputs))
        return Attribution.of(maps, extras)

    def _converge(
        self,
        integrate: Callable[[torch.Tensor, int], tuple[list[torch.Tensor], torch.Tensor]],
        n: int,
    ) -> tuple[list[torch.Tensor], tuple[dict[str, float], ...]]:
        """Run `integrate(rows, steps)` over the schedule: every input with the first path
        length, then only those still above delta_tol with the next. Returns the parts of
        each input's last try and its extras (convergence_delta; with delta_tol also steps,
        converged and delta_tol)."""
        tol = self.options["delta_tol"]
        rows = torch.arange(n)
        parts: list[torch.Tensor] = []
        delta = torch.zeros(n, dtype=torch.float64)
        used = torch.zeros(n, dtype=torch.int64)
        for steps in self.tries:
            found, found_delta = integrate(rows, steps)
            if not parts:
                parts = [torch.zeros((n, *p.shape[1:]), dtype=p.dtype) for p in found]
            for whole, part in zip(parts, found, strict=True):
                whole[rows] = part
            delta[rows] = found_delta.to(torch.float64).flatten()
            used[rows] = steps
            if tol is not None:
                rows = rows[delta[rows].abs() > tol]
            if not len(rows):
                break
        if tol is None:
            return parts, _deltas(delta)
        return parts, tuple(
            {
                "convergence_delta": float(d),
                "steps": int(s),
                "converged": bool(abs(d) <= tol),
                "delta_tol": float(tol),
            }
            for d, s in zip(delta.tolist(), used.tolist(), strict=True)
        )

    def attribute_tabular(self, batch: TabularBatch) -> TabularAttribution:
        """Attributions to the embedding outputs [N, E] and the continuous inputs [N, C],
        averaged over the K reference rows (IG from each, as in Expected Gradients)."""

        def integrate(rows: torch.Tensor, steps: int) -> tuple[list[torch.Tensor], torch.Tensor]:
            some = replace(batch, embedded=batch.embedded[rows], continuous=batch.continuous[rows])
            embedded, continuous, delta = self._tabular(some, steps)
            return [embedded, continuous], delta

        (embedded, continuous), extras = self._converge(integrate, batch.embedded.shape[0])
        return TabularAttribution(embedded, continuous, extras)

    def _tabular(
        self, batch: TabularBatch, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One try with `steps` path points: attributions [N, E], [N, C] and deltas [N]."""
        k = batch.baseline_embedded.shape[0]
        width = batch.embedded.shape[1] + batch.continuous.shape[1]  # elements per path point
        wanted = self.options["internal_batch_size"] or TABULAR_CHUNK
        budget = max(per_pass(width, wanted), k)
        rows = budget // k  # input rows per Captum call: rows * K paths, one path point each
        parts = [
            self._paths(batch, start, rows, budget, steps)
            for start in range(0, batch.embedded.shape[0], rows)
        ]
        return (
            torch.cat([e for e, _, _ in parts]),
            torch.cat([c for _, c, _ in parts]),
            torch.cat([delta for _, _, delta in parts]),
        )

    def _paths(
        self, batch: TabularBatch, start: int, rows: int, budget: int, steps: int
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
            n_steps=steps,
            internal_batch_size=budget,
        )
        return (
            attr_e.detach().view(n, k, -1).mean(dim=1),
            attr_c.detach().view(n, k, -1).mean(dim=1),
            delta.detach().view(n, k).mean(dim=1),
        )


def _deltas(delta: torch.Tensor) -> tuple[dict[str, float], ...]:
    """Captum's per-input convergence deltas as each input's extras."""
    return tuple({"convergence_delta": float(d)} for d in delta.detach().cpu().flatten())
