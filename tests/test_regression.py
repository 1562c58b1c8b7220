"""Regression end to end: a numeric target trains with the squared loss, and the History reports
test_rmse, test_mae, test_r2 and the per-client RMSE spread, checked against scikit-learn."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

import fedlab
from fedlab.data import from_dataframe
from fedlab.data.partition import federate


def sales_table(n=90, seed=0):
    """Three shops; sales in the hundreds, linear in two features plus noise."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    shop = np.repeat(["north", "south", "west"], n // 3)
    return pd.DataFrame({"x1": x1, "x2": x2, "shop": shop,
                         "sales": 300 + 80 * x1 - 40 * x2 + rng.normal(0, 20, n)})


def test_regression_metrics_match_sklearn():
    df = sales_table()
    central = from_dataframe(df, "sales", client_column="shop")
    mean, std = central.target_scale
    assert central.num_classes == 0
    np.testing.assert_allclose((mean, std), (df["sales"].mean(), df["sales"].std(ddof=0)), rtol=1e-9)
    np.testing.assert_allclose(central.y * std + mean, df["sales"], rtol=1e-5)
    data = federate(central, "natural", None, fedlab.data._random.as_key(0), 0.3)
    history = fedlab.simulate("fedavg", "logreg", data, rounds=4, batch_size=8, client_lr=0.05, progress=False)
    last = history.iloc[-1]
    assert "test_accuracy" not in history and "client_rmse_p50" in history

    w = history.params
    pred = (data.x_test @ np.asarray(w["W"])[:, 0] + np.asarray(w["b"])[0]) * std + mean
    truth = data.y_test.astype(np.float64) * std + mean
    assert last["test_rmse"] == pytest.approx(np.sqrt(mean_squared_error(truth, pred)), rel=1e-4)
    assert last["test_mae"] == pytest.approx(mean_absolute_error(truth, pred), rel=1e-4)
    assert last["test_r2"] == pytest.approx(r2_score(truth, pred), rel=1e-4, abs=1e-4)
    off = data.test_offsets
    per_client = [np.sqrt(mean_squared_error(truth[a:b], pred[a:b])) for a, b in zip(off[:-1], off[1:])]
    for name, value in (("mean", np.mean(per_client)), ("std", np.std(per_client)), ("min", min(per_client)),
                        ("p10", np.percentile(per_client, 10)), ("p90", np.percentile(per_client, 90)),
                        ("max", max(per_client))):
        assert last[f"client_rmse_{name}"] == pytest.approx(value, rel=1e-4)


def test_fedavg_full_batch_reaches_least_squares():
    """One full-batch step per client per round, weighted by n_k, is gradient descent on the pooled
    squared loss: it converges to the least-squares fit (scikit-learn's LinearRegression)."""
    df = sales_table(seed=1)
    central = from_dataframe(df, "sales", client_column="shop")
    data = federate(central, "natural", None, fedlab.data._random.as_key(1), 0.3)
    history = fedlab.simulate("fedavg", "logreg", data, rounds=300, local_epochs=1, batch_size=100,
                              client_lr=0.5, eval_every=300, progress=False)
    mean, std = central.target_scale
    fit = LinearRegression().fit(data.x_train, data.y_train)
    pred = fit.predict(data.x_test) * std + mean
    truth = data.y_test * std + mean
    last = history.iloc[-1]
    assert last["test_r2"] == pytest.approx(r2_score(truth, pred), abs=1e-4)
    assert last["test_rmse"] == pytest.approx(np.sqrt(mean_squared_error(truth, pred)), rel=1e-3)
    np.testing.assert_allclose(np.asarray(history.params["W"])[:, 0], fit.coef_, atol=1e-3)


def test_regression_from_the_command_line(tmp_path, capsys):
    from fedlab.cli import main

    path = tmp_path / "sales.csv"
    sales_table().to_csv(path, index=False)
    out = tmp_path / "run"
    code = main(["run", "--dataset", f"csv:{path}", "--target", "sales", "--partition", "column:shop",
                 "--rounds", "3", "--no-progress", "--out", str(out)])
    assert code == 0
    assert "test RMSE" in capsys.readouterr().out
    table = pd.read_csv(out / "history.csv")
    assert {"test_rmse", "test_mae", "test_r2", "client_rmse_p90"} <= set(table.columns)
    assert "test RMSE" in (out / "report.html").read_text()
