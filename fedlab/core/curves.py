"""Per-client curves: each evaluated round's metric for every evaluated client, kept as the run goes.

The Evaluator computes each client's test accuracy (regression: test RMSE) every evaluated round
to get the ``client_acc_*`` (``client_rmse_*``) quantiles, and a personalizing strategy's
PersonalEvaluator each client's accuracy with its own model for ``personal_acc_*``; ``ClientCurves``
keeps those vectors instead of dropping them. ``History.client_rounds`` is the result, a long
table (one row per evaluated round and client):

    round  client  test_accuracy  [personal_accuracy]       (regression: test_rmse)

NaN where a client has no test rows (or, for ``local``, no global model). To bound memory with
many clients, at most ``MAX_CLIENTS`` clients are kept (evenly spaced over the evaluated ones),
as float32: 1000 clients x 1000 evaluated rounds is about 10 MB. It lives in memory only (the
run directory's history.csv is unchanged).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

MAX_CLIENTS = 1000


class ClientCurves:
    """Collects ``add(round, values, personal)`` (vectors over the evaluated clients) into
    ``frame()``. metric: the name of the global model's column (test_accuracy or test_rmse)."""

    def __init__(self, names, metric: str, max_clients: int = MAX_CLIENTS):
        K = len(names)
        self.ids = np.arange(K) if K <= max_clients else np.unique(np.linspace(0, K - 1, max_clients).round()
                                                                    .astype(np.int64))
        self.names = [str(names[i]) for i in self.ids]
        self.metric = metric
        self.rounds: list[int] = []
        self.values: list[np.ndarray] = []
        self.personal: list[np.ndarray | None] = []

    def add(self, round: int, values: np.ndarray, personal: np.ndarray | None = None) -> None:
        self.rounds.append(int(round))
        self.values.append(np.asarray(values, np.float32)[self.ids])
        self.personal.append(None if personal is None else np.asarray(personal, np.float32)[self.ids])

    def frame(self) -> pd.DataFrame:
        n, R = len(self.ids), len(self.rounds)
        table = pd.DataFrame({
            "round": np.repeat(np.asarray(self.rounds, np.int32), n),
            "client": pd.Categorical(np.tile(np.asarray(self.names, object), R), categories=self.names),
            self.metric: np.concatenate(self.values) if R else np.zeros(0, np.float32)})
        if any(p is not None for p in self.personal):
            nan = np.full(n, np.nan, np.float32)
            table["personal_accuracy"] = np.concatenate([nan if p is None else p for p in self.personal])
        return table


def join(before: pd.DataFrame | None, after: pd.DataFrame | None, last_round: int) -> pd.DataFrame | None:
    """A continued run's curves: the rounds up to ``last_round`` of ``before``, then ``after``."""
    if before is None or after is None:
        return after
    kept = before[before["round"] <= last_round]
    table = pd.concat([kept.astype({"client": object}), after.astype({"client": object})], ignore_index=True)
    table["client"] = pd.Categorical(table["client"], categories=list(after["client"].cat.categories))
    return table
