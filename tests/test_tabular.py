"""The tabular path end to end: a CSV trained into tabular.mar, served by its handler."""

from __future__ import annotations

import csv
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from service.archive import open_archive
from service.errors import BadInput, SchemaError
from service.explain import methods_for
from service.handlers.tabular import TabularHandler
from tests.helpers import ROW
from training import rossmann
from training.tabular import TabularConfig, train_tabular


def write_csv(path: Path) -> Path:
    """A small generated store-sales table as a user's CSV (empty cells for missing values)."""
    data = rossmann.make_rossmann(n_stores=6, years=1, seed=3)
    names = [*rossmann.COLUMNS, rossmann.TARGET]
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(names)
        for i in range(len(data)):
            values = [data.table[name][i] for name in names]
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in values])
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tabular")
    config = TabularConfig(
        csv=write_csv(tmp / "sales.csv"),
        cat=rossmann.CATEGORICAL,
        cont=rossmann.CONTINUOUS,
        date=rossmann.DATE,
        target="Sales",
        epochs=2,
        batch_size=256,
        out=tmp / "store",
    )
    return train_tabular(config)


@pytest.fixture(scope="module")
def handler(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> TabularHandler:
    opened = open_archive(archive, tmp_path_factory.mktemp("unpacked")).handler
    assert isinstance(opened, TabularHandler)
    return opened


def test_the_archive_carries_everything_serving_needs(archive: Path) -> None:
    names = set(zipfile.ZipFile(archive).namelist())
    assert {
        "MAR-INF/MANIFEST.json",
        "metadata.json",
        "tabular.py",
        "tabular.pt",
        "glimpse_tabular_handler.py",
    } <= names
    metadata = json.loads(zipfile.ZipFile(archive).read("metadata.json"))
    assert metadata["kind"] == "tabular" and metadata["target"] == "Sales"
    assert metadata["architecture"]["class"] == "TabularModel"
    assert metadata["procs"]["cat"] == rossmann.CATEGORICAL
    assert "Dayofweek" not in metadata["procs"]["date_parts"]["Date"]  # DayOfWeek carries it
    assert {c["name"] for c in metadata["schema"]} == set(rossmann.COLUMNS)
    assert metadata["evaluation"]["rmspe"] > 0 and metadata["evaluation"]["gbm_rmspe"] > 0
    assert len(metadata["explain"]["references"]["embedded"]) == 64  # reference rows for IG
    assert metadata["data"]["split"]["valid_from"] > "2013-11"  # the latest period


def test_predictions_are_sales_in_original_units(handler: TabularHandler) -> None:
    [sales] = handler.predict_rows([ROW])
    assert 500 < sales < 50_000
    as_torchserve = handler.handle([{"body": ROW}, {"body": json.dumps([ROW, ROW]).encode()}], None)
    assert as_torchserve == [[sales], [sales, sales]]


def test_missing_optional_and_unknown_values_are_filled(handler: TabularHandler) -> None:
    without = {key: value for key, value in ROW.items() if key != "CompetitionDistance"}
    assert handler.predict_rows([without]) == handler.predict_rows(
        [{**ROW, "CompetitionDistance": None}]
    )
    unknown = handler.predict_rows([{**ROW, "Store": 999, "StoreType": "zzz"}])
    assert unknown[0] > 0


@pytest.mark.parametrize(
    ("change", "column"),
    [
        ({"Store": None}, "Store"),
        ({"Date": "not a date"}, "Date"),
        ({"CompetitionDistance": "far"}, "CompetitionDistance"),
        ({"Promo": {"a": 1}}, "Promo"),
    ],
)
def test_schema_errors_name_the_column(handler: TabularHandler, change: dict, column: str) -> None:
    row = {key: value for key, value in {**ROW, **change}.items() if value is not None}
    with pytest.raises(SchemaError, match=f"'{column}'"):
        handler.predict_rows([row])


def test_bad_bodies_are_bad_input(handler: TabularHandler) -> None:
    with pytest.raises(BadInput):
        handler.decode(b"{not json")
    with pytest.raises(BadInput):
        handler.decode(42)


def test_attributions_add_up_to_the_log_prediction(handler: TabularHandler) -> None:
    rows = [ROW, {**ROW, "Promo": 0, "Store": 3}, {**ROW, "Date": "2013-12-23"}]
    explained = handler.explain_rows(rows, "integrated_gradients", {"steps": 64})

    for row in explained:
        attributions = row.attributions["integrated_gradients"]
        assert set(attributions) == set(rossmann.COLUMNS)
        total = row.base_value + sum(attributions.values())
        assert total == pytest.approx(math.log(row.prediction), abs=1e-2)
        assert abs(row.convergence_delta["integrated_gradients"]) < 1e-2
    assert [r.prediction for r in explained] == pytest.approx(handler.predict_rows(rows))


def test_describe_lists_the_column_schema(handler: TabularHandler) -> None:
    described = handler.describe()
    assert described["kind"] == "tabular" and described["target"] == "Sales"
    columns = {c["name"]: c for c in described["input"]["columns"]}
    assert columns["Store"]["type"] == "categorical" and columns["Store"]["required"]
    assert set(columns["StoreType"]["categories"]) <= {"a", "b", "c", "d"}
    distance = columns["CompetitionDistance"]
    assert distance["type"] == "continuous" and not distance["required"]
    assert columns["Date"]["type"] == "date"
    assert "integrated_gradients" in methods_for("tabular")


def test_unknown_method_is_a_schema_error(handler: TabularHandler) -> None:
    with pytest.raises(SchemaError, match="unknown explanation method"):
        handler.explain_rows([ROW], "gradcam")


def test_the_generator_is_additive_in_log_space() -> None:
    data = rossmann.make_rossmann(n_stores=50, years=2, seed=1)
    assert len(np.unique(data.table["Store"])) == 50 and (data.table["Sales"] > 0).all()
    log_mean = rossmann.INTERCEPT + sum(data.effects.values())
    assert np.allclose(log_mean, data.log_mean)
    residual = np.log(data.table["Sales"]) - data.log_mean
    assert residual.std() == pytest.approx(data.sigma, rel=0.05)
    assert 0.05 < np.isnan(data.table["CompetitionDistance"]).mean() < 0.2
    assert data.noise_floor() == pytest.approx(math.sqrt(1 - math.exp(-(data.sigma**2))), rel=0.05)
