"""Train the tabular model and archive it as tabular.mar.

Data: the generated Rossmann-like table by default (its noise floor and true effects
are known), or a CSV whose categorical, continuous, date and target columns are named.
Validation is the latest period (the last `valid_fraction` of dates), never a random
split. Procs are fitted on the training split only; the network learns log(target) and
is scored by RMSPE on the original scale, beside a HistGradientBoostingRegressor on the
same features and split, and beside the generator's noise floor.

Example: ``train_tabular(TabularConfig(epochs=2, out=tmp))`` -> tmp / "tabular.mar"
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from service.procs import DATE_CATEGORICAL, DATE_PARTS, TabularProcs, date_parts
from service.rows import Column, Table, category_key, read_rows
from training import rossmann
from training.architectures import tabular as tabular_arch
from training.archive import write_archive
from training.loop import epoch_batches, fit_one_cycle
from training.lr_find import LRFindResult, lr_find


@dataclass
class TabularConfig:
    """How to build tabular.mar; the defaults meet the RMSPE and attribution targets."""

    csv: Path | None = None
    cat: list[str] = field(default_factory=list)
    cont: list[str] = field(default_factory=list)
    date: list[str] = field(default_factory=list)
    target: str = "Sales"
    out: Path = Path("model_store")
    name: str = "tabular"
    epochs: int = 15
    batch_size: int = 512
    lr: float = 1e-2
    weight_decay: float = 1.0
    layers: tuple[int, ...] = (512, 256)
    ps: tuple[float, ...] = (0.001, 0.01)
    emb_drop: float = 0.04
    valid_fraction: float = 0.15
    n_stores: int = 60
    years: int = 2
    seed: int = 0
    gbm: bool = True
    references: int = 64
    # Run the learning-rate range test first and train with its suggestion instead of `lr`.
    lr_auto: bool = False


@dataclass
class TabularData:
    """A raw table (target included), its column roles, where it came from, and for
    generated data the generator's ground truth."""

    table: Table
    cat: list[str]
    cont: list[str]
    date: list[str]
    target: str
    source: dict[str, Any]
    truth: rossmann.Rossmann | None = None


# -- data ----------------------------------------------------------------------------------------
def load_data(config: TabularConfig) -> TabularData:
    if config.csv is None:
        data = rossmann.make_rossmann(config.n_stores, config.years, seed=config.seed)
        source = {
            "dataset": "generated rossmann",
            "n_stores": config.n_stores,
            "years": config.years,
            "sigma": data.sigma,
            "seed": config.seed,
        }
        return TabularData(
            data.table,
            rossmann.CATEGORICAL,
            rossmann.CONTINUOUS,
            rossmann.DATE,
            rossmann.TARGET,
            source,
            data,
        )
    table = read_csv(config.csv, config.cat, config.cont, config.date, config.target)
    source = {"dataset": "csv", "path": str(config.csv), "rows": len(table[config.target])}
    return TabularData(table, config.cat, config.cont, config.date, config.target, source)


def read_csv(path: Path, cat: list[str], cont: list[str], date: list[str], target: str) -> Table:
    """The named columns of a CSV; rows whose target is missing or not positive are dropped
    (the model learns log(target), and zero rows are closed days in Rossmann's sense)."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        header = reader.fieldnames or []
        for name in [*cat, *cont, *date, target]:
            if name not in header:
                raise ValueError(f"{path} has no column {name!r}; its columns are {header}")
        rows = list(reader)
    columns = (
        [Column(c, "categorical") for c in cat]
        + [Column(c, "continuous") for c in cont]
        + [Column(d, "date") for d in date]
        + [Column(target, "continuous")]
    )
    table = read_rows(rows, columns)
    keep = table[target] > 0  # NaN compares False
    return {name: values[keep] for name, values in table.items()}


def split_by_time(table: Table, date: list[str], fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) row indices: valid is the last `fraction` of dates (of rows without one)."""
    n = len(next(iter(table.values())))
    if not date:
        cut = n - max(1, round(n * fraction))
        return np.arange(cut), np.arange(cut, n)
    days = table[date[0]]
    unique = np.unique(days)
    valid_from = unique[-max(1, round(len(unique) * fraction))]
    return np.flatnonzero(days < valid_from), np.flatnonzero(days >= valid_from)


def redundant_parts(train: Table, date: str, cat: list[str]) -> list[str]:
    """Date parts that a categorical column already carries one-to-one (Rossmann's DayOfWeek
    is Date's Dayofweek + 1): kept twice, one fact's attribution would split between them."""
    parts = date_parts(train[date])
    keys = {column: np.array([category_key(v) or "" for v in train[column]]) for column in cat}
    redundant = []
    for part in DATE_CATEGORICAL:
        n_part = len(np.unique(parts[part]))
        for column in cat:
            n_pairs = len(set(zip(parts[part].tolist(), keys[column].tolist(), strict=True)))
            if n_part > 1 and n_pairs == n_part == len(np.unique(keys[column])):
                redundant.append(part)
                break
    return redundant


def subset(table: Table, index: np.ndarray) -> Table:
    return {name: values[index] for name, values in table.items()}


# -- training ------------------------------------------------------------------------------------
class Packed(torch.nn.Module):
    """Lets the shared fit loop call `model((codes, cont))`."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.model(*inputs)


@dataclass
class Prepared:
    """Everything between the raw table and the fit: splits, fitted procs, model inputs."""

    data: TabularData
    train_index: np.ndarray
    valid_index: np.ndarray
    train: Table
    valid: Table
    procs: TabularProcs
    x_train: tuple[np.ndarray, np.ndarray]
    x_valid: tuple[np.ndarray, np.ndarray]
    y_train: torch.Tensor


def prepare(config: TabularConfig) -> Prepared:
    """Load, split by time, fit the procs on the training split, apply them to both."""
    data = load_data(config)
    train_index, valid_index = split_by_time(data.table, data.date, config.valid_fraction)
    train, valid = subset(data.table, train_index), subset(data.table, valid_index)
    redundant = {d: redundant_parts(train, d, data.cat) for d in data.date}
    parts = {d: [p for p in DATE_PARTS if p not in redundant[d]] for d in data.date}
    procs = TabularProcs(data.cat, data.cont, data.date, parts).fit(train)
    y_train = torch.from_numpy(np.log(train[data.target])).float()
    return Prepared(
        data,
        train_index,
        valid_index,
        train,
        valid,
        procs,
        procs.apply(train),
        procs.apply(valid),
        y_train,
    )


def train_tabular(config: TabularConfig) -> Path:
    """Load, split, fit procs on train, train, evaluate on the later period, archive."""
    torch.manual_seed(config.seed)
    prepared = prepare(config)
    data, procs = prepared.data, prepared.procs
    train_index, valid_index = prepared.train_index, prepared.valid_index
    train, valid = prepared.train, prepared.valid
    x_train, x_valid, y_train = prepared.x_train, prepared.x_valid, prepared.y_train
    model, args = build_model(procs, y_train, config)
    lr, lr_rule = config.lr, "given"
    if config.lr_auto:
        found = find_lr(model, x_train, y_train, config)
        print(found.describe())
        lr, lr_rule = found.suggestion, f"lr-find: {found.rule}"
    fit(model, x_train, y_train, config, lr)
    evaluation = evaluate(model, x_valid, valid[data.target])
    if config.gbm:
        evaluation["gbm_rmspe"] = gbm_rmspe(
            procs, x_train, train[data.target], x_valid, valid[data.target], config.seed
        )
    if data.truth is not None:
        evaluation["noise_floor_rmspe"] = data.truth.noise_floor(valid_index)
    print(format_table(evaluation))
    valid_from = str(valid[data.date[0]].min()) if data.date else None
    split = {
        "valid_fraction": config.valid_fraction,
        "valid_from": valid_from,
        "n_train": len(train_index),
        "n_valid": len(valid_index),
    }
    metadata = {
        "target": data.target,
        "procs": procs.to_json(),
        "schema": [asdict(column) for column in procs.schema()],
        "explain": {
            "references": references(model, procs, x_train, config.references, config.seed)
        },
        "evaluation": evaluation,
        "data": {**data.source, "split": split},
        "training": {
            "epochs": config.epochs,
            "lr": lr,
            "lr_rule": lr_rule,
            "batch_size": config.batch_size,
            "weight_decay": config.weight_decay,
            "optimizer": "AdamW",
            "schedule": "one-cycle",
            "loss": "MSE on log(target)",
        },
    }
    return write_archive(
        name=config.name,
        kind="tabular",
        model=model,
        architecture_file=Path(tabular_arch.__file__),
        architecture_args=args,
        metadata=metadata,
        out_dir=config.out,
    )


def build_model(
    procs: TabularProcs, y_train: torch.Tensor, config: TabularConfig
) -> tuple[tabular_arch.TabularModel, dict[str, Any]]:
    """The model and its architecture arguments. Embedding sizes follow fastai's rule;
    y_range is the training log-target range, padded by log(1.2) at least on each side."""
    low, high = float(y_train.min()), float(y_train.max())
    pad = max(0.1 * (high - low), math.log(1.2))
    emb_szs = [(n, tabular_arch.embedding_size(n)) for n in procs.cardinalities]
    args: dict[str, Any] = {
        "emb_szs": emb_szs,
        "n_cont": len(procs.cont_names),
        "layers": list(config.layers),
        "ps": list(config.ps),
        "emb_drop": config.emb_drop,
        "y_range": [low - pad, high + pad],
    }
    return tabular_arch.TabularModel(**args), args


def make_batches(
    x: tuple[np.ndarray, np.ndarray], y: torch.Tensor, batch_size: int, generator: torch.Generator
) -> tuple[Any, int]:
    """`batches(epoch)` of ((codes, cont), log target), shuffled; and the steps per epoch."""
    codes, cont = torch.from_numpy(x[0]), torch.from_numpy(x[1])
    return epoch_batches(  # whole batches only: BatchNorm needs more than one row
        len(y), batch_size, generator, lambda i: ((codes[i], cont[i]), y[i]), whole=True
    )


def find_lr(
    model: tabular_arch.TabularModel,
    x: tuple[np.ndarray, np.ndarray],
    y: torch.Tensor,
    config: TabularConfig,
    num: int = 100,
    rule: str = "minimum",
) -> LRFindResult:
    """The range test on the training batches, its suggestion by `rule`; the model comes back
    unchanged."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    batches, _ = make_batches(x, y, config.batch_size, generator)
    return lr_find(
        Packed(model),
        batches,
        F.mse_loss,
        num=num,
        weight_decay=config.weight_decay,
        threads=1,
        desc="lr-find tabular",
        rule=rule,
    )


def fit(
    model: tabular_arch.TabularModel,
    x: tuple[np.ndarray, np.ndarray],
    y: torch.Tensor,
    config: TabularConfig,
    lr: float | None = None,
) -> None:
    """Train with the one-cycle loop at `lr` (default: config.lr)."""
    generator = torch.Generator().manual_seed(config.seed)
    batches, steps = make_batches(x, y, config.batch_size, generator)
    # A small MLP gains little from threads and loses a lot on busy cores: one thread.
    fit_one_cycle(
        Packed(model),
        batches,
        steps,
        config.epochs,
        F.mse_loss,
        lr=config.lr if lr is None else lr,
        weight_decay=config.weight_decay,
        desc=f"training {config.name}",
        threads=1,
    )


# -- evaluation ----------------------------------------------------------------------------------
def rmspe(target: np.ndarray, prediction: np.ndarray) -> float:
    """Root mean squared percentage error, on the original scale."""
    return float(np.sqrt(np.mean(((target - prediction) / target) ** 2)))


def predict(model: torch.nn.Module, x: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x[0]), torch.from_numpy(x[1]))
    return np.exp(out.double().numpy())


def evaluate(
    model: torch.nn.Module, x_valid: tuple[np.ndarray, np.ndarray], y_valid: np.ndarray
) -> dict[str, Any]:
    return {"rmspe": rmspe(y_valid, predict(model, x_valid)), "n_valid": len(y_valid)}


def gbm_rmspe(
    procs: TabularProcs,
    x_train: tuple[np.ndarray, np.ndarray],
    y_train: np.ndarray,
    x_valid: tuple[np.ndarray, np.ndarray],
    y_valid: np.ndarray,
    seed: int,
) -> float:
    """HistGradientBoostingRegressor on the same processed features, log target (200 rounds
    scored best of 200 / 500 / 1000 on the default data: 0.115 / 0.117 / 0.120)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    categorical = [n <= 255 for n in procs.cardinalities] + [False] * len(procs.cont_names)
    gbm = HistGradientBoostingRegressor(
        max_iter=200,
        learning_rate=0.1,
        early_stopping=False,
        categorical_features=categorical,
        random_state=seed,
    )
    gbm.fit(np.hstack(x_train), np.log(y_train))
    return rmspe(y_valid, np.exp(gbm.predict(np.hstack(x_valid))))


def references(
    model: tabular_arch.TabularModel,
    procs: TabularProcs,
    x_train: tuple[np.ndarray, np.ndarray],
    k: int,
    seed: int,
) -> dict[str, list[list[float]]]:
    """K reference rows in model-input space ([K, E] embedding outputs, [K, C] continuous)
    whose every raw column follows its training distribution: per column, a systematic
    sample of the training rows sorted by that column's values (so K rows cover all stores,
    all seasons, the whole distance range), the columns paired up at random."""
    codes, cont = x_train
    with torch.no_grad():
        features = torch.cat([model.embed(torch.from_numpy(codes)), torch.from_numpy(cont)], 1)
    owners = np.array(procs.feature_sources(model.emb_dims))
    inputs = dict(zip(procs.cat_names, codes.T, strict=True))
    inputs.update(zip(procs.cont_names, cont.T, strict=True))
    rng = np.random.default_rng(seed)
    positions = ((np.arange(k) + 0.5) * len(codes) / k).astype(int)
    chosen = torch.zeros(k, features.shape[1])
    for column in dict.fromkeys(owners):
        keys = [values for name, values in inputs.items() if procs.sources[name] == column]
        rows = np.lexsort(keys[::-1])[positions]
        index = torch.from_numpy(np.flatnonzero(owners == column))
        chosen[:, index] = features[rng.permutation(rows)][:, index]
    return {
        "embedded": chosen[:, : model.n_emb].tolist(),
        "continuous": chosen[:, model.n_emb :].tolist(),
    }


def format_table(evaluation: dict[str, Any]) -> str:
    """The network, the GBM baseline and the noise floor, RMSPE on the later period."""
    rows = [
        ("network", evaluation.get("rmspe")),
        ("gradient boosting", evaluation.get("gbm_rmspe")),
        ("noise floor", evaluation.get("noise_floor_rmspe")),
    ]
    lines = [f"{'RMSPE, later period':<22}{'value':>8}"]
    lines += [f"{name:<22}{value:>8.4f}" for name, value in rows if value is not None]
    return "\n".join(lines)
