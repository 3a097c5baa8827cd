"""Score a tabular archive built on generated data, through the serving handler.

Regenerates the archive's data from the generator settings in its metadata and checks:

- RMSPE of the served predictions on the later (validation) period, against the
  generator's noise floor (must be <= 1.2x) and the GBM baseline (must be no worse);
- attribution recovery: over `n` held-out rows, the mean Spearman rank correlation
  between the served per-column attributions and the generator's true per-column
  log-effects, each centred on its mean over the training rows (must be >= 0.8);
- completeness: max |sum(attributions) + base - log(prediction)| (must be <= 1e-2, and
  <= `delta_tol` when IG is asked to converge to it: `--delta-tol`, default 1e-4; then the
  steps it took are reported too).

Example: ``print(format_report(evaluate_tabular(Path("model_store/tabular.mar"))))``
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from service.archive import open_archive
from service.handlers.tabular import TabularHandler
from training import rossmann
from training.tabular import rmspe, split_by_time

FLOOR_RATIO, MIN_SPEARMAN, MAX_GAP = 1.2, 0.8, 1e-2
DELTA_TOL = 1e-4


def evaluate_tabular(
    archive: Path, n: int = 200, seed: int = 0, delta_tol: float | None = DELTA_TOL
) -> dict[str, Any]:
    """The figures above, as a dict; ValueError for an archive not built on generated data."""
    with tempfile.TemporaryDirectory() as workdir:
        handler = open_archive(archive, Path(workdir)).handler
        assert isinstance(handler, TabularHandler)
        source = handler.metadata["data"]
        if source.get("dataset") != "generated rossmann":
            raise ValueError(f"{archive} was not trained on generated data: no truth to score")
        data = rossmann.make_rossmann(
            source["n_stores"], source["years"], source["sigma"], source["seed"]
        )
        split = source["split"]
        train, valid = split_by_time(data.table, rossmann.DATE, split["valid_fraction"])
        sales = data.table[rossmann.TARGET][valid]
        predictions: np.ndarray = np.array(handler.predict_rows(to_rows(data.table, valid)))
        held_out = np.random.default_rng(seed).choice(valid, size=min(n, len(valid)), replace=False)
        params = {} if delta_tol is None else {"delta_tol": delta_tol}
        explained = handler.explain_rows(
            to_rows(data.table, held_out), "integrated_gradients", params
        )
        evaluation = handler.metadata["evaluation"]
    truth = np.stack(
        [data.effects[c][held_out] - data.effects[c][train].mean() for c in rossmann.COLUMNS],
        axis=1,
    )
    method = "integrated_gradients"
    served = np.array(
        [[row.attributions[method][c] for c in rossmann.COLUMNS] for row in explained]
    )
    gaps = [
        abs(sum(row.attributions[method].values()) + row.base_value - np.log(row.prediction))
        for row in explained
    ]
    correlations = [spearmanr(a, t).statistic for a, t in zip(served, truth, strict=True)]
    converging = [row.extras.get(method, {}) for row in explained]
    return {
        "rmspe": rmspe(sales, predictions),
        "gbm_rmspe": evaluation.get("gbm_rmspe"),
        "noise_floor_rmspe": data.noise_floor(valid),
        "n_valid": len(valid),
        "valid_from": split["valid_from"],
        "spearman_mean": float(np.mean(correlations)),
        "spearman_min": float(np.min(correlations)),
        "completeness_max_gap": float(np.max(gaps)),
        "convergence_delta_max": float(max(abs(r.convergence_delta[method]) for r in explained)),
        "n_explained": len(explained),
        "delta_tol": delta_tol,
        "mean_steps": float(np.mean([e.get("steps", 50) for e in converging])),
        "max_steps_used": int(max(e.get("steps", 50) for e in converging)),
        "converged": float(np.mean([bool(e.get("converged", True)) for e in converging])),
    }


def to_rows(table: dict[str, np.ndarray], index: np.ndarray) -> list[dict[str, Any]]:
    """Table rows as a client would send them: ISO dates, plain numbers, no NaN (key left out)."""
    rows = []
    for i in index:
        row: dict[str, Any] = {}
        for column in rossmann.COLUMNS:
            value = table[column][i]
            if isinstance(value, np.datetime64):
                row[column] = str(value)
            elif isinstance(value, np.floating) and np.isnan(value):
                continue
            else:
                row[column] = value.item()
        rows.append(row)
    return rows


def checks(report: dict[str, Any]) -> list[tuple[str, bool]]:
    floor, gbm = report["noise_floor_rmspe"], report["gbm_rmspe"]
    return [
        (f"RMSPE <= {FLOOR_RATIO} x noise floor", report["rmspe"] <= FLOOR_RATIO * floor),
        ("RMSPE no worse than GBM", gbm is None or report["rmspe"] <= gbm),
        (f"mean Spearman >= {MIN_SPEARMAN}", report["spearman_mean"] >= MIN_SPEARMAN),
        (f"completeness gap <= {MAX_GAP}", report["completeness_max_gap"] <= MAX_GAP),
        *(
            [(f"completeness gap <= delta_tol {tol:g}", report["completeness_max_gap"] <= tol)]
            if (tol := report.get("delta_tol")) is not None
            else []
        ),
    ]


def format_report(report: dict[str, Any]) -> str:
    floor = report["noise_floor_rmspe"]
    lines = [
        f"later period from {report['valid_from']} ({report['n_valid']} rows)",
        f"{'RMSPE':<22}{'value':>8}{'x floor':>9}",
        *(
            f"{name:<22}{value:>8.4f}{value / floor:>9.3f}"
            for name, value in (
                ("network (served)", report["rmspe"]),
                ("gradient boosting", report["gbm_rmspe"]),
                ("noise floor", floor),
            )
            if value is not None
        ),
        f"attribution recovery over {report['n_explained']} held-out rows: mean Spearman "
        f"{report['spearman_mean']:.3f} (min {report['spearman_min']:.3f})",
        f"completeness: max |sum + base - log pred| = {report['completeness_max_gap']:.2e}; "
        f"max |convergence delta| = {report['convergence_delta_max']:.2e}",
        f"IG steps: mean {report['mean_steps']:.0f}, max {report['max_steps_used']} "
        + (
            f"(delta_tol {report['delta_tol']}); converged {report['converged']:.1%}"
            if report["delta_tol"] is not None
            else "(fixed)"
        ),
    ]
    lines += [f"{'PASS' if ok else 'FAIL'}  {name}" for name, ok in checks(report)]
    return "\n".join(lines)
