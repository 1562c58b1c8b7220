"""Federated transfer learning and personalization: baselines and sweeps around the registered
personalizing and meta-learning strategies (``local``, ``ditto``, ``fedper``, ``fedrep``,
``perfedavg``, ``maml``, ``fomaml``, ``metasgd``, ``reptile``).

    fedlab.transfer.pooled(experiment)       # the centralized baseline, evaluated per client
    fedlab.transfer.sweep(base, {"FedAvg": {}, "Ditto": {"algorithm": "ditto"}}, alphas=[0.1, 1], seeds=[0, 1])

Every comparison reads three levels: islands (``local``: each client alone), federated, and
pooled (all training rows in one place, which no federation may do: the upper reference).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from fedlab.transfer import fedmd  # noqa: F401  (registers algorithm "fedmd")

__all__ = ["SWEEP_COLUMNS", "curve", "curve_figure", "fedmd", "per_client", "pool", "pooled", "rounds_to", "sweep"]


def pool(data):
    """``data`` with every client's rows in one client (train and test), same row order."""
    return type(data)(data.name, data.x_train, data.y_train, np.array([0, len(data.y_train)]),
                      data.x_test, data.y_test, np.array([0, len(data.y_test)]), data.num_classes,
                      feature_names=data.feature_names, train_weights=data.train_weights)


def pooled(experiment, data=None) -> dict:
    """The centralized baseline of ``experiment``: its model trained by SGD on all clients'
    training rows pooled, for rounds x local work steps with batches of batch_size x
    clients_per_round rows (the rows a round of the federation sees), then evaluated on every
    client's own test rows. Returns test_accuracy and client_acc_{mean,p10,p50,p90} (the
    pooled model is the model every client uses, so these are its personal columns too)."""
    from fedlab.core.simulate import Evaluator, simulate

    built = experiment.replace(holdout_clients=0.0, algorithm="fedavg",
                               algorithm_options={k: v for k, v in experiment.algorithm_options.items()
                                                  if k == "client_lr"}, privacy=None).build(data)
    one = pool(built.data)
    steps = {"local_steps": experiment.local_steps} if experiment.local_steps else {
        "local_epochs": experiment.local_epochs or 1}
    history = simulate(built.strategy, built.model, one, rounds=experiment.rounds, clients_per_round=1,
                       batch_size=experiment.batch_size * built.clients_per_round, seed=experiment.seed,
                       progress=False, eval_every=experiment.rounds, **steps)
    metrics = Evaluator(built.model, built.data)(history.params)
    return {"test_accuracy": metrics["test_accuracy"],
            **{f"client_acc_{s}": metrics[f"client_acc_{s}"] for s in ("mean", "p10", "p50", "p90")}}


SWEEP_COLUMNS = ["alpha", "seed", "method", "global_acc_mean", "personal_acc_mean", "personal_acc_p10",
                 "personal_acc_p50", "personal_acc_p90", "new_client_accuracy", "bytes_up"]


def sweep(base, variants: dict, *, alphas, seeds, pooled_baseline: bool = True, progress: bool = False,
          log=None) -> pd.DataFrame:
    """Run ``base`` (an Experiment) with each variant's changes (``{"label": {"algorithm": ...}}``)
    on a Dirichlet(alpha) partition for every alpha and seed; one row per run (its last
    evaluated round): global_acc_mean (the global model's mean per-client accuracy, NaN for
    islands), personal_acc_* (the model each client uses), bytes_up (whole run). With
    ``pooled_baseline`` a row "pooled" adds the centralized reference. ``log(row)`` is called
    after each run."""
    rows = []
    for alpha in alphas:
        for seed in seeds:
            experiment = base.replace(partition="dirichlet", partition_options={"alpha": float(alpha)}, seed=seed)
            data = experiment.load_data()
            for label, changes in variants.items():
                history = experiment.replace(**changes).run(data=data, progress=progress)
                last = history.iloc[-1]
                rows.append({"alpha": alpha, "seed": seed, "method": label,
                             "global_acc_mean": last.get("client_acc_mean", np.nan),
                             **{c: last.get(c, np.nan) for c in SWEEP_COLUMNS[4:-1]},
                             "bytes_up": history["bytes_up"].sum(), "status": history.status})
                if log is not None:
                    log(rows[-1])
            if pooled_baseline:
                p = pooled(experiment, data)
                rows.append({"alpha": alpha, "seed": seed, "method": "pooled",
                             "global_acc_mean": p["client_acc_mean"],
                             **{f"personal_acc_{s}": p[f"client_acc_{s}"] for s in ("mean", "p10", "p50", "p90")},
                             "new_client_accuracy": np.nan, "bytes_up": np.nan, "status": "completed"})
                if log is not None:
                    log(rows[-1])
    return pd.DataFrame(rows)


def curve(table: pd.DataFrame, value: str = "personal_acc_mean") -> pd.DataFrame:
    """alpha x method table of ``value``: 'mean ± std' over seeds, from a ``sweep`` table."""
    g = table.groupby(["alpha", "method"], sort=False)[value]
    out = (g.mean().map("{:.3f}".format) + " ± " + g.std(ddof=0).map("{:.3f}".format)).unstack("method")
    return out[list(dict.fromkeys(table["method"]))]



def rounds_to(history, column: str, target: float) -> float:
    """The first round at which ``history[column]`` reaches ``target`` (NaN if it never does)."""
    reached = history.loc[history[column] >= target, "round"]
    return float(reached.iloc[0]) if len(reached) else float("nan")


def per_client(experiment, history, data=None) -> pd.DataFrame:
    """One row per client of a finished run of ``experiment``: its test rows, the global model's
    accuracy on them (NaN for islands) and the accuracy of the model it uses (personal, after the
    run's fine-tuning: the numbers behind the History's last personal_acc_* row)."""
    from fedlab.core.personal import PersonalEvaluator

    built = experiment.build(data)
    state = history.state
    kw = dict(lr=experiment.finetune_lr, batch_size=experiment.batch_size, seed=experiment.seed)
    personal = PersonalEvaluator(built.strategy, built.model, built.data,
                                 steps=built.strategy.adapt_steps + experiment.finetune_steps, **kw)
    table = personal.per_client(state.server_state, state.client_states, state.round)
    out = table[["client", "test_rows"]].copy()
    if built.strategy.global_model:
        plain = built.strategy._replace(personal_params=None, adapt_steps=0)
        out["global_accuracy"] = PersonalEvaluator(plain, built.model, built.data, **kw).per_client(
            state.server_state, state.client_states)["personal_accuracy"]
    else:
        out["global_accuracy"] = np.nan
    out["personal_accuracy"] = table["personal_accuracy"]
    return out


def curve_figure(table: pd.DataFrame, title: str = "Personalized vs global accuracy"):
    """Plotly figure of a ``sweep`` table: mean over seeds of each method's personal_acc_mean
    (solid) and global_acc_mean (dotted, methods with a global model) against alpha (log axis),
    with the seeds' standard deviation as error bars."""
    import plotly.graph_objects as go

    from fedlab.report import PALETTE

    fig = go.Figure()
    for i, (method, part) in enumerate(table.groupby("method", sort=False)):
        g = part.groupby("alpha")
        color = PALETTE[i % len(PALETTE)]
        for column, dash, suffix in (("personal_acc_mean", "solid", ""), ("global_acc_mean", "dot", " (global)")):
            mean = g[column].mean()
            if mean.isna().all() or (suffix and method == "pooled"):
                continue
            if suffix and np.allclose(mean, g["personal_acc_mean"].mean(), equal_nan=True):
                continue                    # FedAvg-like: the global model is the one every client uses
            fig.add_trace(go.Scatter(x=mean.index, y=mean, name=method + suffix, mode="lines+markers",
                                     line=dict(color=color, dash=dash),
                                     error_y=dict(type="data", array=g[column].std(ddof=0), visible=True)))
    fig.update_layout(title=title, xaxis=dict(type="log", title="Dirichlet alpha (label skew: small = skewed)"),
                      yaxis=dict(title="mean per-client test accuracy"), template="plotly_white")
    return fig
