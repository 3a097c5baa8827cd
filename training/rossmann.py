"""A generated Rossmann-like daily store-sales table whose true effects are known.

The process, per store s and open day d (all effects in log space)::

    log Sales = 8.5 + store[s] + store_type[s] + assortment[s] + day_of_week[d]
                + date(d) + promo * 0.30 + promo2 * 0.08 + state_holiday[d, s]
                + school_holiday * 0.06 + competition(distance) + noise,  noise ~ N(0, sigma)

- Store: an idiosyncratic level per store, N(0, 0.25).
- StoreType a-d and Assortment a-c: store attributes with fixed effects (STORE_TYPE,
  ASSORTMENT). About a third of stores are refitted once (a new format or assortment
  from a random day on), so these effects are not just part of a store's level.
- DayOfWeek 1 (Monday) .. 7: fixed effects; most stores are closed on Sundays.
- Date: season (a yearly sine), the pre-Christmas ramp in December and a payday lift on
  the first three days of each month (`date_effect`).
- Promo: on weekdays of alternate weeks, each store with its own phase (so promo and date
  are not confounded). Promo2: a store's continuing promotion, running in the months of its
  interval once the store has joined.
- StateHoliday "0"/"a" public/"b" Easter/"c" Christmas per state (four states); most stores
  close on holidays. SchoolHoliday: summer and autumn breaks staggered by state and year.
- CompetitionDistance in metres: -0.3 * exp(-distance / 3000); missing (NaN) means no
  competitor yet (effect 0): a few stores never have one, some get their first one during
  the period, and about a third see a nearer competitor open.

Closed days are dropped (as in the Rossmann competition: no Sales 0 rows). Each row's
true log-effect per column is returned with the table, so attributions can be scored, and
sigma fixes the noise floor: the best possible RMSPE is sqrt(1 - exp(-sigma**2)).

Example: ``data = make_rossmann(n_stores=60, years=2, seed=0); data.table["Sales"]``
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

COLUMNS = [
    "Store",
    "StoreType",
    "Assortment",
    "DayOfWeek",
    "Date",
    "Promo",
    "StateHoliday",
    "SchoolHoliday",
    "CompetitionDistance",
    "Promo2",
]
CATEGORICAL = [
    "Store",
    "StoreType",
    "Assortment",
    "DayOfWeek",
    "Promo",
    "StateHoliday",
    "SchoolHoliday",
    "Promo2",
]
CONTINUOUS = ["CompetitionDistance"]
DATE = ["Date"]
TARGET = "Sales"

INTERCEPT = 8.5
STORE_SD = 0.25
STORE_TYPE = {"a": 0.0, "b": 0.35, "c": -0.1, "d": 0.12}
STORE_TYPE_P = [0.45, 0.1, 0.15, 0.3]
ASSORTMENT = {"a": 0.0, "b": 0.22, "c": 0.12}
ASSORTMENT_P = [0.5, 0.1, 0.4]
DAY_OF_WEEK = [0.18, 0.05, 0.0, 0.02, 0.08, -0.12, -0.25]  # Monday .. Sunday
PROMO, PROMO2, SCHOOL_HOLIDAY = 0.30, 0.08, 0.06
STATE_HOLIDAY = {"0": 0.0, "a": 0.15, "b": 0.1, "c": 0.25}
PROMO2_INTERVALS = [(1, 4, 7, 10), (2, 5, 8, 11), (3, 6, 9, 12)]
N_STATES = 4


@dataclass
class Rossmann:
    """The table (column -> [N] array, Sales included), each column's true log-effect [N],
    the noise-free log Sales [N] and the noise sigma."""

    table: dict[str, np.ndarray]
    effects: dict[str, np.ndarray]
    log_mean: np.ndarray
    sigma: float

    def __len__(self) -> int:
        return len(self.log_mean)

    def noise_floor(self, index: np.ndarray | None = None) -> float:
        """RMSPE of the best possible predictor, exp(log_mean - 1.5 sigma^2), on `index` rows."""
        rows = slice(None) if index is None else index
        sales = self.table[TARGET][rows]
        best = np.exp(self.log_mean[rows] - 1.5 * self.sigma**2)
        return float(np.sqrt(np.mean(((sales - best) / sales) ** 2)))


def make_rossmann(
    n_stores: int = 60, years: int = 2, sigma: float = 0.1, seed: int = 0, start: str = "2013-01-01"
) -> Rossmann:
    """Daily sales of `n_stores` stores over `years` years from `start`, closed days dropped."""
    rng = np.random.default_rng(seed)
    first = np.datetime64(start, "D")
    days = np.arange(first, np.datetime64(f"{int(start[:4]) + years}{start[4:]}", "D"))
    stores = _stores(n_stores, days, rng)
    grid = _daily(stores, days, rng)
    open_ = grid.pop("open")
    effects = {col: grid.pop(f"effect_{col}")[open_] for col in COLUMNS}
    table = {col: values[open_] for col, values in grid.items()}
    log_mean = INTERCEPT + sum(effects.values())
    noise = rng.normal(0.0, sigma, size=len(log_mean))
    table[TARGET] = np.round(np.exp(log_mean + noise), 2)
    return Rossmann(table, effects, log_mean, sigma)


def date_effect(days: np.ndarray) -> np.ndarray:
    """Season + December ramp + payday, for datetime64[D] days [D] -> [D]."""
    day_of_year = (days - days.astype("datetime64[Y]")).astype(int) + 1
    day_of_month = (days - days.astype("datetime64[M]")).astype(int) + 1
    month = days.astype("datetime64[M]").astype(int) % 12 + 1
    season = 0.08 * np.sin(2 * np.pi * (day_of_year - 80) / 365.25)
    december = np.where(month == 12, 0.3 * np.clip((day_of_month - 1) / 23, 0, 1), 0.0)
    december[(month == 12) & (day_of_month > 24)] = 0.0
    payday = np.where(day_of_month <= 3, 0.06, 0.0)
    return season + december + payday


def _stores(n: int, days: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-store attributes [S]."""
    n_days = len(days)
    far = np.clip(np.exp(rng.normal(np.log(4000), 1.2, n)), 20, 75_000).round(-1)
    near = (far * rng.uniform(0.05, 0.6, n)).clip(20).round(-1)
    kind = rng.random(n)
    far[kind < 0.18] = np.nan  # no competitor before the change ...
    near[kind < 0.05] = np.nan  # ... nor after it, for a few stores
    near[kind > 0.5] = far[kind > 0.5]  # no change for half of them
    promo2 = rng.random(n) < 0.5
    return {
        "level": rng.normal(0.0, STORE_SD, n),
        "type": _refits(list(STORE_TYPE), STORE_TYPE_P, n, n_days, rng),
        "assortment": _refits(list(ASSORTMENT), ASSORTMENT_P, n, n_days, rng),
        "state": rng.integers(0, N_STATES, n),
        "distance": np.stack([far, near], axis=1),  # [S, 2]: before and after `competition_day`
        "competition_day": rng.integers(30, n_days - 30, n),
        "promo_phase": rng.integers(0, 14, n),
        "promo2_from": np.where(promo2, rng.integers(-200, n_days - 60, n), n_days + 1),
        "promo2_interval": rng.integers(0, len(PROMO2_INTERVALS), n),
        "sunday": rng.random(n) < 0.05,
    }


def _refits(
    values: list[str], p: list[float], n: int, n_days: int, rng: np.random.Generator
) -> np.ndarray:
    """[S, D] attribute per store and day: a third of stores change it once, on a random day."""
    before, after = rng.choice(values, n, p=p), rng.choice(values, n, p=p)
    change = np.where(rng.random(n) < 1 / 3, rng.integers(30, n_days - 30, n), n_days)
    return np.where(np.arange(n_days)[None, :] < change[:, None], before[:, None], after[:, None])


def _daily(
    stores: dict[str, np.ndarray], days: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Every column and effect on the [S, D] grid, flattened store-major, plus `open`."""
    n, n_days = len(stores["level"]), len(days)
    day_index = np.arange(n_days)[None, :]
    weekday = (days.astype(int) + 3) % 7  # 0 = Monday (1970-01-01 was a Thursday)
    month = days.astype("datetime64[M]").astype(int) % 12 + 1
    holiday = _state_holidays(days)[stores["state"]]  # [S, D] of "0"/"a"/"b"/"c"
    school = _school_holidays(days)[stores["state"]]
    promo = (weekday[None, :] < 5) & (
        ((days.astype(int)[None, :] + stores["promo_phase"][:, None]) // 7) % 2 == 0
    )
    intervals = np.array(PROMO2_INTERVALS)[stores["promo2_interval"]]  # [S, 4]
    promo2 = (day_index >= stores["promo2_from"][:, None]) & (
        (month[None, :, None] == intervals[:, None, :]).any(axis=2)
    )
    changed = day_index >= stores["competition_day"][:, None]
    distance = np.where(changed, stores["distance"][:, 1:], stores["distance"][:, :1])
    is_holiday = holiday != "0"
    open_ = (weekday[None, :] < 6) | stores["sunday"][:, None]
    open_ &= ~is_holiday | (rng.random((n, n_days)) < 0.1)
    open_ &= rng.random((n, n_days)) > 0.005  # odd closures (refits, strikes)
    full = np.ones((n, n_days))
    grid = {
        "Store": np.arange(1, n + 1)[:, None] * np.ones((1, n_days), dtype=int),
        "StoreType": stores["type"],
        "Assortment": stores["assortment"],
        "DayOfWeek": (weekday + 1)[None, :] * np.ones((n, 1), dtype=int),
        "Date": np.repeat(days[None, :], n, axis=0),
        "Promo": promo.astype(int),
        "StateHoliday": holiday,
        "SchoolHoliday": school.astype(int),
        "CompetitionDistance": distance,
        "Promo2": promo2.astype(int),
        "effect_Store": stores["level"][:, None] * full,
        "effect_StoreType": np.vectorize(STORE_TYPE.get)(stores["type"]),
        "effect_Assortment": np.vectorize(ASSORTMENT.get)(stores["assortment"]),
        "effect_DayOfWeek": np.array(DAY_OF_WEEK)[weekday][None, :] * full,
        "effect_Date": date_effect(days)[None, :] * full,
        "effect_Promo": PROMO * promo,
        "effect_StateHoliday": np.vectorize(STATE_HOLIDAY.get)(holiday).astype(float),
        "effect_SchoolHoliday": SCHOOL_HOLIDAY * school,
        "effect_CompetitionDistance": np.nan_to_num(-0.3 * np.exp(-distance / 3000)),
        "effect_Promo2": PROMO2 * promo2,
        "open": open_,
    }
    return {key: value.reshape(-1) for key, value in grid.items()}


def _state_holidays(days: np.ndarray) -> np.ndarray:
    """[N_STATES, D] holiday codes: national ones, Easter ("b"), Christmas ("c"), regional."""
    codes = np.full((N_STATES, len(days)), "0", dtype="<U1")
    position = {day: i for i, day in enumerate(days.astype(object))}
    for year in sorted({day.year for day in position}):
        easter = _easter(year)
        national = {
            dt.date(year, 1, 1): "a",
            dt.date(year, 5, 1): "a",
            dt.date(year, 10, 3): "a",
            easter - dt.timedelta(days=2): "b",
            easter + dt.timedelta(days=1): "b",
            easter + dt.timedelta(days=39): "a",
            easter + dt.timedelta(days=50): "a",
            dt.date(year, 12, 25): "c",
            dt.date(year, 12, 26): "c",
        }
        regional = {
            dt.date(year, 1, 6): [0],
            dt.date(year, 11, 1): [1, 2],
            easter + dt.timedelta(days=60): [0, 3],
        }
        for day, code in national.items():
            if day in position:
                codes[:, position[day]] = code
        for day, states in regional.items():
            if day in position:
                codes[states, position[day]] = "a"
    return codes


def _school_holidays(days: np.ndarray) -> np.ndarray:
    """[N_STATES, D] booleans: a six-week summer break and a two-week autumn break per state,
    staggered by state and rotating by year."""
    school = np.zeros((N_STATES, len(days)), dtype=bool)
    year = days.astype("datetime64[Y]").astype(int) + 1970
    day_of_year = (days - days.astype("datetime64[Y]")).astype(int) + 1
    for state in range(N_STATES):
        slot = (state + year) % N_STATES
        summer = 172 + 11 * slot
        autumn = 280 + 5 * slot
        school[state] = ((day_of_year >= summer) & (day_of_year < summer + 42)) | (
            (day_of_year >= autumn) & (day_of_year < autumn + 14)
        )
    return school


def _easter(year: int) -> dt.date:
    """Gregorian Easter Sunday (the anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    leap = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * leap) // 451
    month, day = divmod(h + leap - 7 * m + 114, 31)
    return dt.date(year, month, day + 1)
