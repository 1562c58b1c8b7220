"""The value of collaboration, party by party: islands vs federated vs pooled.

    table = fedlab.collaboration.compare_parties(experiment, extra={"federated, DP": with_dp})

One row per party (client): its training rows, whether its data were corrupted or flagged, and the
test score on its own test rows of (1) its island model (``local``: it trains alone), (2) the
federated model of ``experiment`` (and of each ``extra`` experiment), (3) the pooled model (the
same model and schedule on every party's training rows in one place: what sharing raw data would
give). The score is accuracy for classification and RMSE in the target's units for regression;
``gain`` is how much the federated model improves on the island (positive: better).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def island_scores(model, client_params, data) -> np.ndarray:
    """[K] each party's score with its own model (client_params: a pytree with a leading [K] axis)
    on its own test rows: accuracy, or RMSE in the target's units (NaN without test rows)."""
    import jax
    import jax.numpy as jnp

    off = data.test_offsets
    width = max(int(data.test_counts.max()), 1)
    rows = np.minimum(off[:-1, None] + np.arange(width), max(len(data.y_test) - 1, 0))
    mask = np.arange(width) < data.test_counts[:, None]
    out = np.asarray(jax.jit(jax.vmap(model.apply))(client_params, jnp.asarray(data.x_test[rows])))
    y = data.y_test[rows]
    if data.num_classes > 0:
        per_row = (out.argmax(-1) == y).astype(np.float64)
    else:
        per_row = ((out - y) * (data.target_scale or (0.0, 1.0))[1]) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (per_row * mask).sum(1) / mask.sum(1)
    return mean if data.num_classes > 0 else np.sqrt(mean)


def pooled_data(data):
    """The federation's rows as one client (train and test), for the pooled baseline."""
    from fedlab.data.federated import FederatedDataset

    return FederatedDataset(f"{data.name}/pooled", data.x_train, data.y_train, np.array([0, len(data.y_train)]),
                            data.x_test, data.y_test, np.array([0, len(data.y_test)]), data.num_classes,
                            ("pooled",), data.feature_names, data.train_weights, data.target_scale)


def compare_parties(experiment, *, extra: dict | None = None, islands: bool = True,
                    pooled: bool = True) -> pd.DataFrame:
    """Per party: island vs federated (``experiment``, and each of ``extra``: name -> Experiment on
    the same data) vs pooled; see the module docstring. ``table.attrs``: metric, histories."""
    from fedlab.data.quality import client_scores

    built = experiment.build()
    data, model = built.data, built.model
    history = experiment.run(built=built, progress=False)
    regression = data.num_classes == 0
    table = pd.DataFrame({"party": data.names(), "train_rows": data.train_counts, "test_rows": data.test_counts})
    if experiment.corrupt:
        table["corrupted"] = experiment.load_tables().corrupted
    if built.quality is not None:
        table["flagged"] = built.quality["flagged"].to_numpy(bool)
    histories = {"federated": history}
    plain = experiment.replace(corrupt="", client_weighting="size", privacy=None, partition=None,
                               partition_options={}, num_clients=None, clients_per_round=None, sampling=None)
    lr = {k: v for k, v in experiment.algorithm_options.items() if k == "client_lr"}
    if islands:
        alone = plain.replace(algorithm="local", algorithm_options=lr, clients_per_round=data.num_clients)
        h = alone.run(data=data, progress=False)
        table["island"] = island_scores(model, h.state.client_states, data)
        histories["island"] = h
    table["federated"] = client_scores(model, history.params, data)
    for name, other in (extra or {}).items():
        b = other.build()
        h = other.run(built=b, progress=False)
        table[name] = client_scores(b.model, h.params, b.data)
        histories[name] = h
    if pooled:
        h = plain.replace(clients_per_round=1).run(data=pooled_data(data), progress=False)
        table["pooled"] = client_scores(model, h.params, data)
        histories["pooled"] = h
    if islands:
        table["gain"] = (table["island"] - table["federated"]) if regression else (table["federated"] - table["island"])
    table.attrs["metric"] = "test RMSE" if regression else "test accuracy"
    table.attrs["histories"] = histories
    return table


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean (weighted by test rows) and the worst party's score of each model column."""
    models = [c for c in table.columns if c not in ("party", "train_rows", "test_rows", "corrupted", "flagged", "gain")]
    regression = table.attrs.get("metric") == "test RMSE"
    has = table["test_rows"] > 0
    w = table.loc[has, "test_rows"]
    rows = {}
    for c in models:
        v = table.loc[has, c]
        rows[c] = {"mean": float(np.average(v, weights=w)), "worst party": float(v.max() if regression else v.min())}
        if "corrupted" in table and table["corrupted"].any():
            rows[c]["corrupted parties"] = float(table.loc[has & table["corrupted"], c].mean())
    return pd.DataFrame(rows).T
