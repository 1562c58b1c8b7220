"""Per-client curves (History.client_rounds): each evaluated round's test accuracy (RMSE for
regression) per client, and the personal model's accuracy when the strategy personalizes, checked
against NumPy predictions of the final models and against the History's quantile columns."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fedlab
from fedlab.core.curves import ClientCurves
from conftest import toy_data


def numpy_accuracy(params, data) -> np.ndarray:
    """Each client's test accuracy of a logreg model, computed with NumPy."""
    W, b = np.asarray(params["W"], np.float64), np.asarray(params["b"], np.float64)
    pred = np.argmax(data.x_test.reshape(len(data.x_test), -1) @ W + b, 1)
    off = data.test_offsets
    return np.array([np.mean(pred[a:b] == data.y_test[a:b]) for a, b in zip(off[:-1], off[1:])])


def check_quantiles(history, value: str, prefix: str):
    """Each evaluated round's prefix_p10/p50/p90 equal the percentiles of the stored vector."""
    for r, group in history.client_rounds.groupby("round", observed=True):
        row = history[history["round"] == r].iloc[0]
        v = group[value].dropna().to_numpy(np.float64)
        for q in (10, 50, 90):
            assert row[f"{prefix}_p{q}"] == pytest.approx(np.percentile(v, q), rel=1e-5, abs=1e-6)


def test_fedavg_keeps_each_clients_accuracy_every_evaluated_round():
    data = toy_data(num_clients=7)
    history = fedlab.simulate("fedavg", "logreg", data, rounds=5, eval_every=2, local_steps=3, batch_size=4,
                              client_lr=0.3, progress=False)
    curves = history.client_rounds
    assert list(curves.columns) == ["round", "client", "test_accuracy"]       # no personal model
    assert sorted(curves["round"].unique()) == [2, 4, 5]                      # the evaluated rounds
    assert (curves.groupby("round", observed=True).size() == 7).all()
    last = curves[curves["round"] == 5]
    np.testing.assert_allclose(last["test_accuracy"], numpy_accuracy(history.params, data), atol=1e-6)
    assert list(last["client"]) == list(data.names())
    check_quantiles(history, "test_accuracy", "client_acc")
    # the last row's values are the per_client table's
    np.testing.assert_allclose(last["test_accuracy"], history.per_client["test_accuracy"], atol=1e-6)


def test_a_personalizing_strategy_keeps_the_personal_accuracy_per_client():
    data = toy_data(num_clients=6, seed=1)
    history = fedlab.simulate("ditto", "logreg", data, rounds=3, local_steps=4, batch_size=4, client_lr=0.3,
                              lam=0.1, progress=False)
    curves = history.client_rounds
    assert {"test_accuracy", "personal_accuracy"} <= set(curves.columns)
    last = curves[curves["round"] == 3]
    np.testing.assert_allclose(last["test_accuracy"], numpy_accuracy(history.params, data), atol=1e-6)
    states = history.state.client_states                                     # Ditto's v_k: the client state
    personal = [numpy_accuracy({n: states[n][k] for n in ("W", "b")}, data)[k] for k in range(data.num_clients)]
    np.testing.assert_allclose(last["personal_accuracy"], personal, atol=1e-6)
    check_quantiles(history, "personal_accuracy", "personal_acc")
    check_quantiles(history, "test_accuracy", "client_acc")


def test_islands_have_no_global_curve_and_continuing_joins_the_curves():
    experiment = fedlab.Experiment(algorithm="local", rounds=4, local_steps=2, batch_size=4,
                                   algorithm_options={"client_lr": 0.3})
    data = toy_data(num_clients=5, seed=2)
    whole = experiment.run(data=data, progress=False)
    assert whole.client_rounds["test_accuracy"].isna().all()
    assert whole.client_rounds["personal_accuracy"].notna().all()
    check_quantiles(whole, "personal_accuracy", "personal_acc")

    stopped = experiment.run(data=data, progress=False, callbacks=[_stop_after(2)])
    assert sorted(stopped.client_rounds["round"].unique()) == [1, 2]
    continued = experiment.run(data=data, progress=False, after=stopped)
    pd.testing.assert_frame_equal(continued.client_rounds, whole.client_rounds)


def _stop_after(r):
    def callback(event):
        if event.round >= r:
            raise fedlab.StopTraining
    return callback


def test_regression_keeps_each_clients_rmse():
    from test_regression import sales_table

    from fedlab.data import from_dataframe
    from fedlab.data.partition import federate

    central = from_dataframe(sales_table(), "sales", client_column="shop")
    data = federate(central, "natural", None, fedlab.data._random.as_key(0), 0.3)
    history = fedlab.simulate("fedavg", "logreg", data, rounds=2, batch_size=8, client_lr=0.05, progress=False)
    mean, std = central.target_scale
    w = history.params
    pred = data.x_test @ np.asarray(w["W"])[:, 0] + np.asarray(w["b"])[0]
    off = data.test_offsets
    rmse = [np.sqrt(np.mean((pred[a:b] - data.y_test[a:b]) ** 2)) * std for a, b in zip(off[:-1], off[1:])]
    last = history.client_rounds[history.client_rounds["round"] == 2]
    np.testing.assert_allclose(last["test_rmse"], rmse, rtol=1e-4)
    check_quantiles(history, "test_rmse", "client_rmse")


def test_many_clients_keep_an_evenly_spaced_bounded_sample():
    names = [f"c{i}" for i in range(5000)]
    curves = ClientCurves(names, "test_accuracy", max_clients=100)
    values = np.arange(5000) / 5000
    curves.add(1, values)
    curves.add(3, values * 0.5, values)
    table = curves.frame()
    assert len(table) == 200 and table["test_accuracy"].dtype == np.float32
    ids = np.linspace(0, 4999, 100).round().astype(int)
    np.testing.assert_array_equal(table["client"].iloc[:100].astype(str), [names[i] for i in ids])
    np.testing.assert_allclose(table["test_accuracy"].iloc[100:], values[ids] * 0.5, rtol=1e-6)
    assert table["personal_accuracy"].iloc[:100].isna().all()
