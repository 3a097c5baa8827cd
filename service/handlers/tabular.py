"""The tabular handler: JSON rows in, predictions in original units (and attributions) out.

The archive's metadata carries the fitted procs, so serving replays the training
preprocessing exactly. The model predicts log(target); `predict_rows` answers
exp(output). `explain_rows` attributes the log output to the raw columns: embedding
dimensions are summed to their column, date parts to their date column and `<col>_na`
flags to `<col>`, so `base_value + sum(attributions) = log(prediction)`.

Example: ``handler.predict_rows([{"Store": 1, "Date": "2014-12-01", ...}])`` -> [5234.2]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from service.errors import BadInput
from service.explain import build
from service.explain.base import Explainer, TabularBatch
from service.handlers.base import GlimpseHandler
from service.procs import TabularProcs
from service.results import RowResult
from service.rows import read_rows

Row = Mapping[str, Any]


class TabularHandler(GlimpseHandler):
    """Predicts a target from rows of raw columns. Metadata: procs, target, reference rows."""

    kind = "tabular"
    default_method = "integrated_gradients"

    def setup(self) -> None:
        meta = self.metadata
        self.procs = TabularProcs.from_json(meta["procs"])
        self.columns = self.procs.schema()
        self.target: str = meta["target"]
        references = meta["explain"]["references"]
        self.references = (
            torch.tensor(references["embedded"], dtype=torch.float32),
            torch.tensor(references["continuous"], dtype=torch.float32),
        )
        self.grouping = self._grouping()
        with torch.no_grad():
            self.base_value = float(self.model_head(*self.references).mean())

    # -- the stages, each usable on its own --------------------------------------------------
    def decode(self, payload: Any) -> list[Row]:
        """A JSON object, a list of them or {"rows": [...]} (bytes, str or decoded) -> rows."""
        if isinstance(payload, bytes | bytearray | str):
            try:
                payload = json.loads(payload)
            except ValueError as error:  # not UTF-8, not JSON, or a number of too many digits
                raise BadInput(f"the body is not JSON: {error}") from None
            except RecursionError:
                raise BadInput(
                    "the JSON is nested too deeply: send an object of column values, a list of "
                    'them or {"rows": [...]}'
                ) from None
        if isinstance(payload, Mapping) and isinstance(payload.get("rows"), list):
            return list(payload["rows"])
        if isinstance(payload, Mapping):
            return [payload]
        if isinstance(payload, list):
            return payload
        raise BadInput("send a JSON object of column values, or a list of them")

    def preprocess(self, rows: Sequence[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows -> (codes [N, n_cat] int64, continuous [N, n_cont] float32)."""
        codes, cont = self.procs.apply(read_rows(rows, self.columns))
        return torch.from_numpy(codes), torch.from_numpy(cont)

    def forward(self, rows: Sequence[Row]) -> torch.Tensor:
        """Rows -> the model's output [N], log of the target."""
        codes, cont = self.preprocess(rows)
        with torch.no_grad():
            output: torch.Tensor = self.net(codes, cont)
        return output

    def predict_rows(self, rows: Sequence[Row]) -> list[float]:
        """Predicted target values in original units, one per row."""
        if not rows:
            return []
        return torch.exp(self.forward(rows).double()).tolist()

    def explain_rows(
        self,
        rows: Sequence[Row],
        method: Explainer | str = "integrated_gradients",
        params: dict[str, Any] | None = None,
    ) -> list[RowResult]:
        """Per row: prediction, base_value, attributions per raw column and convergence delta.

        `method` is a built explainer (the pipeline's) or a method name with `params`.
        Attributions live in log space: base_value + sum(attributions) = log(prediction).
        """
        if not rows:
            return []
        explainer = build(self.kind, method, params or {}) if isinstance(method, str) else method
        codes, cont = self.preprocess(rows)
        with torch.no_grad():
            embedded = self.net.embed(codes)
            output = self.model_head(embedded, cont)
        batch = TabularBatch(self.model_head, embedded, cont, *self.references)
        attribution = explainer.attribute_tabular(batch)
        parts = torch.cat([attribution.embedded, attribution.continuous], dim=1)
        per_column = (parts.detach().double() @ self.grouping).numpy()
        gaps = per_column.sum(axis=1) - (output.double().numpy() - self.base_value)
        names = [column.name for column in self.columns]
        return [
            RowResult(
                prediction=float(np.exp(float(output[i]))),
                base_value=self.base_value,
                attributions={
                    explainer.name: dict(zip(names, per_column[i].tolist(), strict=True))
                },
                convergence_delta={
                    explainer.name: attribution.extra(i).get("convergence_delta", float(gaps[i]))
                },
                extras=_further(explainer.name, attribution.extra(i)),
            )
            for i in range(len(rows))
        ]

    def model_head(self, embedded: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        """The model from the embedding outputs on: [N, n_emb], [N, n_cont] -> [N]."""
        result: torch.Tensor = self.net.head(embedded, cont)
        return result

    @property
    def net(self) -> Any:
        """The TabularModel, built from the archive's own architecture file (hence untyped)."""
        assert self.model is not None, "initialize the handler first"
        return self.model

    def _grouping(self) -> torch.Tensor:
        """[n_emb + n_cont, n_columns] 0/1: which raw column each model input belongs to."""
        names = [column.name for column in self.columns]
        owners = self.procs.feature_sources(self.net.emb_dims)
        grouping = torch.zeros(len(owners), len(names), dtype=torch.float64)
        for feature, owner in enumerate(owners):
            grouping[feature, names.index(owner)] = 1.0
        return grouping

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "input": {"type": "tabular", "columns": self.column_schema()},
        }

    def column_schema(self) -> list[dict[str, Any]]:
        """Each raw column: name, type, required, and its categories or fill value."""
        categorify, fill = self.procs.categorify, self.procs.fill
        assert categorify.categories is not None and fill.medians is not None
        described = []
        for column in self.columns:
            entry: dict[str, Any] = {
                "name": column.name,
                "type": column.type,
                "required": column.required,
            }
            if column.type == "categorical":
                entry["categories"] = categorify.categories[column.name][1:]
                entry["unknown"] = "mapped to #na#"
            elif column.type == "continuous":
                entry["missing"] = f"filled with the training median {fill.medians[column.name]}"
            else:
                entry["format"] = "ISO 8601 date, e.g. 2015-07-31"
            described.append(entry)
        return described


def _further(method: str, extra: dict[str, float]) -> dict[str, dict[str, float]]:
    """A method's extras beyond the convergence delta, keyed by the method; {} for none."""
    further = {k: v for k, v in extra.items() if k != "convergence_delta"}
    return {method: further} if further else {}
