"""fastai-style tabular preprocessing, fitted on the training split and replayed at serve time.

A table (service.rows reads client rows into one) is a dict of column name -> [N] numpy
array: categorical columns hold canonical string keys (or None), continuous ones float64
(NaN for missing), date ones datetime64[D]. The procs, applied in this order, each `fit` on
training data, `apply` to any table, and round-trip through JSON (`to_json` /
`from_json`), so the archive carries their state:

- AddDatepart: a date column -> Year, Month, Week, Day, Dayofweek, Is_month/quarter/year
  _start/_end (categorical) and Dayofyear, Elapsed (continuous); the date column is dropped.
- FillMissing: NaN -> the training median, plus a categorical `<col>_na` flag for columns
  that had missing values in training.
- Categorify: values -> codes into the training categories; index 0 is `#na#`, which
  takes missing and unseen values.
- Normalize: continuous columns -> (x - mean) / std with the training mean and std.

`TabularProcs` chains them and turns a table into model inputs: codes [N, n_cat] int64
and continuous [N, n_cont] float32; `schema` gives the raw columns rows must hold.

Example: ``procs = TabularProcs(cat=["Store"], cont=["Distance"], date=["Date"]).fit(train)``
then ``codes, cont = procs.apply(read_rows(rows, procs.schema()))``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.rows import Column, Table, category_key

NA = "#na#"
DATE_CATEGORICAL = [
    "Year",
    "Month",
    "Week",
    "Day",
    "Dayofweek",
    "Is_month_end",
    "Is_month_start",
    "Is_quarter_end",
    "Is_quarter_start",
    "Is_year_end",
    "Is_year_start",
]
DATE_CONTINUOUS = ["Dayofyear", "Elapsed"]
DATE_PARTS = DATE_CATEGORICAL + DATE_CONTINUOUS


def _natural(key: str) -> tuple[int, float, str]:
    """Sort numbers numerically before words alphabetically."""
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


# -- the procs -----------------------------------------------------------------------------------
@dataclass
class AddDatepart:
    """Replace the date column `column` by its `parts` (named `<column>_<part>`)."""

    column: str
    parts: list[str]

    def fit(self, table: Table) -> AddDatepart:
        return self

    def apply(self, table: Table) -> Table:
        out = {key: value for key, value in table.items() if key != self.column}
        parts = date_parts(table[self.column])
        out.update({f"{self.column}_{part}": parts[part] for part in self.parts})
        return out

    @property
    def cat_names(self) -> list[str]:
        return [f"{self.column}_{p}" for p in self.parts if p in DATE_CATEGORICAL]

    @property
    def cont_names(self) -> list[str]:
        return [f"{self.column}_{p}" for p in self.parts if p in DATE_CONTINUOUS]

    def to_json(self) -> dict[str, Any]:
        return {"proc": "AddDatepart", "column": self.column, "parts": self.parts}


def date_parts(days: np.ndarray) -> dict[str, np.ndarray]:
    """datetime64 [N] -> every part in DATE_PARTS, each [N] (categorical ones as int)."""
    days = days.astype("datetime64[D]")
    month_start = days.astype("datetime64[M]")
    month = month_start.astype(int) % 12 + 1
    day = (days - month_start).astype(int) + 1
    month_end = (days + 1).astype("datetime64[M]") != month_start
    unique, inverse = np.unique(days, return_inverse=True)
    weeks = np.array([d.isocalendar()[1] for d in unique.astype(dt.date)], dtype=int)
    return {
        "Year": days.astype("datetime64[Y]").astype(int) + 1970,
        "Month": month,
        "Week": weeks[inverse.reshape(-1)] if len(days) else np.zeros(0, dtype=int),
        "Day": day,
        "Dayofweek": (days.astype(int) + 3) % 7,  # 0 = Monday, as pandas
        "Is_month_end": month_end.astype(int),
        "Is_month_start": (day == 1).astype(int),
        "Is_quarter_end": (month_end & (month % 3 == 0)).astype(int),
        "Is_quarter_start": ((day == 1) & (month % 3 == 1)).astype(int),
        "Is_year_end": ((month == 12) & (day == 31)).astype(int),
        "Is_year_start": ((month == 1) & (day == 1)).astype(int),
        "Dayofyear": ((days - days.astype("datetime64[Y]")).astype(int) + 1).astype(float),
        "Elapsed": days.astype("datetime64[s]").astype(np.int64).astype(float),
    }


@dataclass
class FillMissing:
    """NaN -> training median; a `<col>_na` flag for columns with NaN in training."""

    columns: list[str]
    medians: dict[str, float] | None = None
    flagged: list[str] | None = None

    def fit(self, table: Table) -> FillMissing:
        self.medians = {c: _median(table[c]) for c in self.columns}
        self.flagged = [c for c in self.columns if np.isnan(table[c]).any()]
        return self

    def apply(self, table: Table) -> Table:
        assert self.medians is not None and self.flagged is not None, "fit FillMissing first"
        out = dict(table)
        for column in self.columns:
            missing = np.isnan(table[column])
            out[column] = np.where(missing, self.medians[column], table[column])
            if column in self.flagged:
                out[f"{column}_na"] = missing.astype(int)
        return out

    @property
    def cat_names(self) -> list[str]:
        return [f"{c}_na" for c in self.flagged or []]

    def to_json(self) -> dict[str, Any]:
        return {
            "proc": "FillMissing",
            "columns": self.columns,
            "medians": self.medians,
            "flagged": self.flagged,
        }


def _median(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(np.median(present)) if len(present) else 0.0


@dataclass
class Categorify:
    """Values -> int codes; `categories[c][0]` is `#na#` (missing or unseen)."""

    columns: list[str]
    categories: dict[str, list[str]] | None = None

    def fit(self, table: Table) -> Categorify:
        self.categories = {}
        for column in self.columns:
            seen = {key for key in _keys(table[column]) if key is not None}
            self.categories[column] = [NA, *sorted(seen, key=_natural)]
        return self

    def apply(self, table: Table) -> Table:
        assert self.categories is not None, "fit Categorify first"
        out = dict(table)
        for column in self.columns:
            index: dict[str | None, int] = {k: i for i, k in enumerate(self.categories[column])}
            out[column] = np.array([index.get(k, 0) for k in _keys(table[column])], dtype=np.int64)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"proc": "Categorify", "columns": self.columns, "categories": self.categories}


def _keys(values: np.ndarray) -> list[str | None]:
    """Canonical keys of a column, computed once per distinct value."""
    if values.dtype == object:
        return [category_key(v) for v in values]
    unique, inverse = np.unique(values, return_inverse=True)
    keys = [category_key(v.item()) for v in unique]
    return [keys[i] for i in inverse.reshape(-1)]


@dataclass
class Normalize:
    """Continuous columns -> (x - mean) / std, with the training mean and std."""

    columns: list[str]
    means: dict[str, float] | None = None
    stds: dict[str, float] | None = None

    def fit(self, table: Table) -> Normalize:
        self.means = {c: float(np.mean(table[c])) for c in self.columns}
        self.stds = {c: float(np.std(table[c])) or 1.0 for c in self.columns}
        return self

    def apply(self, table: Table) -> Table:
        assert self.means is not None and self.stds is not None, "fit Normalize first"
        out = dict(table)
        for c in self.columns:
            out[c] = (table[c] - self.means[c]) / self.stds[c]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "proc": "Normalize",
            "columns": self.columns,
            "means": self.means,
            "stds": self.stds,
        }


Proc = AddDatepart | FillMissing | Categorify | Normalize
PROCS: dict[str, type[Proc]] = {
    p.__name__: p for p in (AddDatepart, FillMissing, Categorify, Normalize)
}


def proc_from_json(state: Mapping[str, Any]) -> Proc:
    fields = {key: value for key, value in state.items() if key != "proc"}
    return PROCS[state["proc"]](**fields)


# -- the chain -----------------------------------------------------------------------------------
class TabularProcs:
    """AddDatepart per date column, then FillMissing, Categorify and Normalize.

    `cat_names` / `cont_names` are the model's input columns after processing;
    `sources` maps each of them back to the raw column it came from.
    """

    def __init__(
        self,
        cat: Sequence[str],
        cont: Sequence[str],
        date: Sequence[str] = (),
        date_parts: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.cat, self.cont, self.date = list(cat), list(cont), list(date)
        chosen = date_parts or {}
        self.dateparts = [AddDatepart(d, list(chosen.get(d, DATE_PARTS))) for d in self.date]
        self.procs: list[Proc] = []

    def fit(self, table: Table) -> TabularProcs:
        """Fit every proc, in order, on the training table."""
        table = self._dates(table)
        fill = FillMissing(self.cont).fit(table)
        table = fill.apply(table)
        categorify = Categorify(self.cat + self._date_cats() + fill.cat_names).fit(table)
        normalize = Normalize(self.cont + self._date_conts()).fit(table)
        self.procs = [fill, categorify, normalize]
        return self

    def apply(self, table: Table) -> tuple[np.ndarray, np.ndarray]:
        """A raw table -> (codes [N, n_cat] int64, continuous [N, n_cont] float32)."""
        if not self.procs:
            raise RuntimeError("fit the procs on the training table first")
        table = self._dates(table)
        for proc in self.procs:
            table = proc.apply(table)
        n = len(next(iter(table.values()))) if table else 0
        codes = (
            np.stack([table[c] for c in self.cat_names], axis=1)
            if self.cat_names
            else (np.zeros((n, 0), dtype=np.int64))
        )
        cont = (
            np.stack([table[c] for c in self.cont_names], axis=1)
            if self.cont_names
            else (np.zeros((n, 0)))
        )
        return codes.astype(np.int64), cont.astype(np.float32)

    def _dates(self, table: Table) -> Table:
        for proc in self.dateparts:
            table = proc.apply(table)
        return table

    def _date_cats(self) -> list[str]:
        return [name for proc in self.dateparts for name in proc.cat_names]

    def _date_conts(self) -> list[str]:
        return [name for proc in self.dateparts for name in proc.cont_names]

    @property
    def categorify(self) -> Categorify:
        return next(p for p in self.procs if isinstance(p, Categorify))

    @property
    def fill(self) -> FillMissing:
        return next(p for p in self.procs if isinstance(p, FillMissing))

    @property
    def cat_names(self) -> list[str]:
        return self.categorify.columns

    @property
    def cont_names(self) -> list[str]:
        return self.cont + self._date_conts()

    @property
    def cardinalities(self) -> list[int]:
        """Categories per categorical input, `#na#` included."""
        assert self.categorify.categories is not None
        return [len(self.categorify.categories[c]) for c in self.cat_names]

    @property
    def sources(self) -> dict[str, str]:
        """Processed column -> raw column: date parts to their date, `<col>_na` to `<col>`."""
        origin = {
            name: proc.column
            for proc in self.dateparts
            for name in proc.cat_names + proc.cont_names
        }
        origin.update({f"{c}_na": c for c in self.fill.flagged or []})
        return {name: origin.get(name, name) for name in self.cat_names + self.cont_names}

    def feature_sources(self, embedding_dims: Sequence[int]) -> list[str]:
        """The raw column of each model input: every embedding dim, then each continuous."""
        sources = self.sources
        owners = [
            sources[name]
            for name, dims in zip(self.cat_names, embedding_dims, strict=True)
            for _ in range(dims)
        ]
        return owners + [sources[name] for name in self.cont_names]

    def schema(self) -> list[Column]:
        """The raw input columns: categorical and date ones required, continuous optional."""
        return (
            [Column(c, "categorical") for c in self.cat]
            + [Column(c, "continuous", required=False) for c in self.cont]
            + [Column(d, "date") for d in self.date]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "cat": self.cat,
            "cont": self.cont,
            "date": self.date,
            "date_parts": {proc.column: proc.parts for proc in self.dateparts},
            "procs": [proc.to_json() for proc in self.procs],
        }

    @classmethod
    def from_json(cls, state: Mapping[str, Any]) -> TabularProcs:
        procs = cls(state["cat"], state["cont"], state["date"], state["date_parts"])
        procs.procs = [proc_from_json(p) for p in state["procs"]]
        return procs
