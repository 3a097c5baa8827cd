"""The tabular procs: fitted on training data, replayed on new data, unseen values and NaN;
and client rows read into a table (service.rows)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.errors import SchemaError
from service.procs import (
    NA,
    AddDatepart,
    Categorify,
    FillMissing,
    Normalize,
    TabularProcs,
    proc_from_json,
)
from service.rows import Column, category_key, read_rows


def objects(*values: object) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def roundtrip(proc):  # what the archive does: JSON out, JSON back in
    return proc_from_json(json.loads(json.dumps(proc.to_json())))


def test_category_keys_are_canonical() -> None:
    assert category_key(1) == category_key(1.0) == category_key("1") == category_key(True) == "1"
    assert category_key(" a ") == "a"
    assert category_key(None) is category_key(float("nan")) is category_key("") is None


def test_categorify_maps_unseen_and_missing_to_na() -> None:
    proc = roundtrip(Categorify(["Store"]).fit({"Store": np.array([3, 1, 2, 1, 10])}))

    assert proc.categories == {"Store": [NA, "1", "2", "3", "10"]}
    out = proc.apply({"Store": objects(1, "10", 99, None, 2.0)})
    assert out["Store"].tolist() == [1, 4, 0, 0, 2]


def test_fill_missing_uses_the_training_median_and_flags() -> None:
    train = {"Distance": np.array([100.0, np.nan, 300.0, 500.0]), "Age": np.array([1.0, 2, 3, 4])}
    proc = roundtrip(FillMissing(["Distance", "Age"]).fit(train))

    out = proc.apply({"Distance": np.array([np.nan, 50.0]), "Age": np.array([np.nan, 7.0])})
    assert out["Distance"].tolist() == [300.0, 50.0]
    assert out["Distance_na"].tolist() == [1, 0]
    assert out["Age"].tolist() == [2.5, 7.0]  # no NaN in training: filled, but no flag
    assert "Age_na" not in out


def test_normalize_uses_training_statistics() -> None:
    proc = roundtrip(
        Normalize(["x", "flat"]).fit({"x": np.array([1.0, 3.0]), "flat": np.array([5.0, 5.0])})
    )

    out = proc.apply({"x": np.array([2.0, 5.0]), "flat": np.array([5.0, 6.0])})
    assert out["x"].tolist() == [0.0, 3.0]
    assert out["flat"].tolist() == [0.0, 1.0]  # a constant column keeps std 1


def test_add_datepart_replaces_the_date_by_its_parts() -> None:
    days = np.array(["2014-12-31", "2015-01-01", "2015-03-31"], dtype="datetime64[D]")
    proc = roundtrip(
        AddDatepart(
            "Date",
            ["Year", "Week", "Dayofweek", "Is_year_end", "Is_quarter_end", "Dayofyear", "Elapsed"],
        )
    )

    out = proc.apply({"Date": days})
    assert "Date" not in out
    assert out["Date_Year"].tolist() == [2014, 2015, 2015]
    assert out["Date_Week"].tolist() == [1, 1, 14]  # ISO weeks
    assert out["Date_Dayofweek"].tolist() == [2, 3, 1]  # Wednesday, Thursday, Tuesday
    assert out["Date_Is_year_end"].tolist() == [1, 0, 0]
    assert out["Date_Is_quarter_end"].tolist() == [1, 0, 1]
    assert out["Date_Dayofyear"].tolist() == [365.0, 1.0, 90.0]
    assert out["Date_Elapsed"][1] == 1420070400.0  # seconds since 1970-01-01


@pytest.fixture
def train_table() -> dict[str, np.ndarray]:
    return {
        "Store": np.array([1, 2, 3, 1, 2, 3]),
        "Distance": np.array([10.0, np.nan, 30.0, 10.0, np.nan, 30.0]),
        "Date": np.arange("2015-01-01", "2015-01-07", dtype="datetime64[D]"),
    }


def test_the_chain_fits_on_train_and_replays_on_new_rows(train_table) -> None:
    procs = TabularProcs(["Store"], ["Distance"], ["Date"], {"Date": ["Day", "Dayofyear"]})
    procs = TabularProcs.from_json(json.loads(json.dumps(procs.fit(train_table).to_json())))

    assert procs.cat_names == ["Store", "Date_Day", "Distance_na"]
    assert procs.cont_names == ["Distance", "Date_Dayofyear"]
    assert procs.cardinalities == [4, 7, 3]
    assert procs.sources == {
        "Store": "Store",
        "Date_Day": "Date",
        "Distance_na": "Distance",
        "Distance": "Distance",
        "Date_Dayofyear": "Date",
    }
    rows = [
        {"Store": 2, "Distance": 20, "Date": "2015-01-02"},
        {"Store": "unseen", "Date": "2015-02-01"},
    ]
    codes, cont = procs.apply(read_rows(rows, procs.schema()))
    assert codes.tolist() == [[2, 2, 1], [0, 1, 2]]  # unseen store -> #na#; 1 Feb is day 1, seen
    assert cont.dtype == np.float32 and cont.shape == (2, 2)
    assert cont[1, 0] == cont[0, 0] == pytest.approx(0.0)  # missing -> median 20 -> mean 20


def test_read_rows_names_the_offending_column() -> None:
    columns = [
        Column("Store", "categorical"),
        Column("Distance", "continuous", required=False),
        Column("Date", "date"),
    ]

    with pytest.raises(SchemaError, match="'Store'"):
        read_rows([{"Date": "2015-01-01"}], columns)
    with pytest.raises(SchemaError, match="'Distance'.*must be a number"):
        read_rows([{"Store": 1, "Date": "2015-01-01", "Distance": "far"}], columns)
    with pytest.raises(SchemaError, match="'Date'.*ISO date"):
        read_rows([{"Store": 1, "Date": "yesterday"}], columns)
    with pytest.raises(SchemaError, match="'Store'.*string or a number"):
        read_rows([{"Store": [1], "Date": "2015-01-01"}], columns)
    table = read_rows([{"Store": 1, "Date": "2015-01-01T10:00:00", "Distance": "12.5"}], columns)
    assert table["Distance"].tolist() == [12.5]
    assert str(table["Date"][0]) == "2015-01-01"
