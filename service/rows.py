"""Client rows read into a table, and the one key a category value is known by.

A table is a dict of column name -> [N] numpy array: categorical columns hold canonical
string keys (`category_key`, or None), continuous ones float64 (NaN for missing), date ones
datetime64[D]. `read_rows` turns JSON-like rows into one, raising SchemaError naming the
column for a wrong type or a missing required column; the procs (service.procs) take it
from there, at training time and at serve time alike.

Example: ``read_rows([{"Store": 1, "Date": "2015-07-31"}], procs.schema())``
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import SchemaError

Table = dict[str, np.ndarray]
FLOAT32_MAX = float(np.finfo(np.float32).max)


def category_key(value: Any) -> str | None:
    """The one string a category value is known by: 1, 1.0, "1" and True are all "1"."""
    if value is None or isinstance(value, bool | np.bool_):
        return None if value is None else str(int(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return text or None
        return category_key(number)
    raise TypeError(f"{value!r} is not a category")


@dataclass(frozen=True)
class Column:
    """One raw input column: type is "categorical", "continuous" or "date"."""

    name: str
    type: str
    required: bool = True


def read_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> Table:
    """JSON-like rows -> a table of `columns`; SchemaError names the offending column.

    A required column must be present in every row; an optional (continuous) one may be
    absent or null and is then NaN. Extra keys are ignored. Empty strings count as missing.
    """
    table: Table = {}
    for column in columns:
        values = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise SchemaError(f"row {i} must be a JSON object of column values, got {row!r}")
            if column.required and column.name not in row:
                raise SchemaError(f"row {i} is missing the required column {column.name!r}")
            values.append(_read_value(column, row.get(column.name), i))
        table[column.name] = _as_array(column, values)
    return table


def _read_value(column: Column, value: Any, row: int) -> Any:
    where = f"column {column.name!r} (row {row})"
    if column.type == "continuous":
        if value is None or value == "":
            return math.nan
        try:
            number = float(value)  # numbers, and numeric strings as a CSV holds them
        except (TypeError, ValueError):
            raise SchemaError(f"{where} must be a number, got {value!r}") from None
        except OverflowError:  # a JSON integer of more than 308 digits
            raise SchemaError(f"{where} is too large: send a number below 1.8e308") from None
        if not math.isfinite(number):
            raise SchemaError(
                f"{where} must be a finite number, got {value!r}: send null (or leave the "
                "column out) for a missing value"
            )
        if abs(number) > FLOAT32_MAX:  # the model computes in float32
            raise SchemaError(f"{where} is too large: send a number below 3.4e38")
        return number
    if column.type == "categorical":
        if isinstance(value, float | np.floating) and not math.isfinite(value):
            raise SchemaError(
                f"{where} must be a string or a finite number, got {value!r}: send null for a "
                "missing value"
            )
        try:
            return category_key(value)
        except TypeError:
            raise SchemaError(f"{where} must be a string or a number, got {value!r}") from None
    try:
        return np.datetime64(dt.datetime.fromisoformat(str(value).strip()).date(), "D")
    except ValueError:
        raise SchemaError(f"{where} must be an ISO date like 2015-07-31, got {value!r}") from None


def _as_array(column: Column, values: list[Any]) -> np.ndarray:
    if column.type == "continuous":
        return np.array(values, dtype=np.float64)
    if column.type == "date":
        return np.array(values, dtype="datetime64[D]")
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
