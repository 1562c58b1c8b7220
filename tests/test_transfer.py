"""Personalization and federated meta-learning against independent computations: per-client
accuracy by NumPy, the limits of Ditto (lam = 0 is local training, lam -> inf the global model),
FedPer with the whole model as head = local training, MAML / FOMAML / Meta-SGD / Per-FedAvg
meta-gradients in closed form for linear regression, Reptile as FedAvg with a server step,
fine-tuning as NumPy gradient steps, held-out clients, and the one-line errors."""
import jax
import numpy as np
import pytest

import fedlab
from conftest import ProgramCount, toy_data
from fedlab.algorithms.common import ServerState
from fedlab.cli import main
from fedlab.core.personal import PersonalEvaluator, hold_out

KW = dict(rounds=3, local_steps=3, batch_size=4, progress=False, client_lr=0.2, seed=1)


def logreg_accuracy(W, b, x, y):
    return float(np.mean(np.argmax(x @ W + b, 1) == y)) if len(y) else np.nan


def per_client_accuracy(data, params_of):
    """[K] test accuracy of client k with params_of(k) = (W, b), by NumPy."""
    return np.array([logreg_accuracy(*params_of(k), *data.client(k, "test")) for k in range(data.num_clients)])


def assert_summary(row, acc, prefix="personal_acc"):
    np.testing.assert_allclose([row[f"{prefix}_{s}"] for s in ("mean", "p10", "p50", "p90")],
                               [acc.mean(), *np.percentile(acc, [10, 50, 90])], rtol=1e-6)


def assert_same(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **{"rtol": 1e-5, "atol": 1e-6, **kw})


@pytest.fixture(scope="module")
def islands():
    data = toy_data()
    return data, fedlab.simulate("local", "logreg", data, **KW)


def test_local_islands_send_nothing_and_report_each_clients_own_model(islands):
    data, h = islands
    states = h.state.client_states
    acc = per_client_accuracy(data, lambda k: (np.asarray(states["W"][k]), np.asarray(states["b"][k])))
    last = h.iloc[-1]
    assert_summary(last, acc)
    assert (h["bytes_up"] == 0).all() and (h["bytes_down"] == 0).all()
    assert h["test_accuracy"].isna().all() and h["train_loss"].isna().all()     # no global model
    assert h.status == "completed" and (h["participants"] == data.num_clients).all()


def test_fedavg_personal_columns_are_the_global_models_per_client_accuracy():
    data = toy_data()
    h = fedlab.simulate("fedavg", "logreg", data, **KW)
    acc = per_client_accuracy(data, lambda k: (np.asarray(h.params["W"]), np.asarray(h.params["b"])))
    assert_summary(h.iloc[-1], acc)
    assert_summary(h.iloc[-1], acc, "client_acc")


def test_the_personal_evaluator_builds_nothing_before_its_first_table():
    data = toy_data()
    model = fedlab.MODELS["logreg"].factory(data.input_shape, data.num_classes)
    with ProgramCount() as programs:        # a run whose evaluator is trivial never calls it
        evaluate = PersonalEvaluator(fedlab.ALGORITHMS["fedavg"].factory(), model, data, seed=3)
    assert programs.count == 0
    rng = np.random.default_rng(2)
    W, b = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    table = evaluate.per_client(ServerState({"W": W, "b": b}), (), round=1)
    np.testing.assert_allclose(table["personal_accuracy"], per_client_accuracy(data, lambda k: (W, b)))


def test_fedper_with_the_whole_model_as_head_is_local_training(islands):
    data, local = islands
    h = fedlab.simulate("fedper", "logreg", data, **KW)     # logreg has one layer: all of it is head
    assert_same(h.state.client_states, (local.state.client_states["W"], local.state.client_states["b"]))
    np.testing.assert_allclose(h["personal_acc_mean"], local["personal_acc_mean"])
    assert (h["bytes_up"] == 0).all()                           # an empty body: nothing goes up


def test_ditto_limits_local_training_and_the_global_model(islands):
    data, local = islands
    kw = {**KW, "clients_per_round": data.num_clients}
    zero = fedlab.simulate("ditto", "logreg", data, lam=0.0, **kw)
    assert_same(zero.state.client_states, local.state.client_states)
    np.testing.assert_allclose(zero["personal_acc_mean"], local["personal_acc_mean"])

    broadcasts = []
    fedavg = fedlab.simulate("fedavg", "logreg", data, callbacks=[lambda e: broadcasts.append(e.params)], **kw)
    huge = fedlab.simulate("ditto", "logreg", data, lam=1e9, **kw)
    assert_same(huge.params, fedavg.params)                     # Ditto's global model is FedAvg's
    for k in range(data.num_clients):                           # v_k -> w_{T-1}, the model received last
        assert_same(jax.tree.map(lambda s, k=k: s[k], huge.state.client_states), broadcasts[-2], atol=1e-5)


def test_finetuning_is_sgd_on_the_clients_own_rows():
    """Clients whose training rows are copies of one row: every fine-tuning batch is that row, so
    K steps are K NumPy gradient steps on it."""
    rng = np.random.default_rng(0)
    train, test = [], []
    for k in range(5):
        x = rng.normal(size=(1, 4)).astype(np.float32)
        y = np.array([k % 3])
        train.append((np.repeat(x, 3, 0), np.repeat(y, 3)))
        test.append((rng.normal(size=(20, 4)), rng.integers(0, 3, 20)))
    data = fedlab.FederatedDataset.from_clients("copies", train, test, 3)
    model = fedlab.MODELS["logreg"].factory(data.input_shape, 3)
    W0, b0 = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    strategy = fedlab.ALGORITHMS["fedavg"].factory()
    steps, lr = 4, 0.5
    evaluate = PersonalEvaluator(strategy, model, data, steps=steps, lr=lr, batch_size=2)
    table = evaluate.per_client(ServerState({"W": W0, "b": b0}), (), round=3)

    def finetuned(k):
        W, b = W0.astype(np.float64), b0.astype(np.float64)
        x, y = train[k][0][:1], train[k][1][:1]
        for _ in range(steps):
            z = x @ W + b
            p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            err = p - np.eye(3)[y]
            W, b = W - lr * x.T @ err, b - lr * err.sum(0)
        return W, b

    np.testing.assert_allclose(table["personal_accuracy"], per_client_accuracy(data, finetuned))
    assert not np.allclose(table["personal_accuracy"], per_client_accuracy(data, lambda k: (W0, b0)))


def regression_copies(num_clients=3, features=3, seed=0):
    """Linear-regression clients whose rows are copies of one (x, y): every batch is that row."""
    rng = np.random.default_rng(seed)
    train, test, rows = [], [], []
    for k in range(num_clients):
        x, y = rng.normal(size=features), rng.normal()
        n = 2 + k
        train.append((np.tile(x, (n, 1)), np.full(n, y)))
        test.append((x[None], np.array([y])))
        rows.append((np.append(x, 1.0), y, n))
    return fedlab.FederatedDataset.from_clients("copies", train, test, 0), rows


def meta_step(theta, alpha, xt, y, inner_lr_or_alpha, second_order, learn_alpha):
    """One MAML / FOMAML / Meta-SGD step's gradients on loss 0.5 (xt.theta - y)^2 (support =
    query = this row): returns (grad_theta, grad_alpha)."""
    a = inner_lr_or_alpha
    g = xt * (xt @ theta - y)
    adapted = theta - a * g
    q = xt * (xt @ adapted - y)
    H = np.outer(xt, xt)
    grad_theta = q - H @ (a * q) if second_order else q
    return grad_theta, (-g * q if learn_alpha else None)


@pytest.mark.parametrize("name, second_order, learn_alpha", [
    ("maml", True, False), ("fomaml", False, False), ("metasgd", True, True), ("perfedavg", True, False)])
def test_meta_gradients_in_closed_form(name, second_order, learn_alpha):
    data, rows = regression_copies()
    alpha, beta, steps = 0.3, 0.1, 2
    knobs = dict(inner_lr=alpha, client_lr=beta)
    h = fedlab.simulate(name, "logreg", data, rounds=1, local_steps=steps, batch_size=6, progress=False, **knobs)
    deltas, alphas, weights = [], [], []
    for xt, y, n in rows:
        theta, a = np.zeros(len(xt)), np.full(len(xt), alpha)
        for _ in range(steps):
            g_theta, g_alpha = meta_step(theta, a, xt, y, a, second_order, learn_alpha)
            theta = theta - beta * g_theta
            if learn_alpha:
                a = a - beta * g_alpha
        deltas.append(theta)
        alphas.append(a)
        weights.append(n)
    expected = np.average(deltas, axis=0, weights=weights)
    got = np.concatenate([np.asarray(h.params["W"])[:, 0], np.asarray(h.params["b"])])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    if learn_alpha:                     # Meta-SGD's learned step sizes, averaged like the params
        alpha = h.state.server_state.alpha
        got = np.concatenate([np.asarray(alpha["W"])[:, 0], np.asarray(alpha["b"])])
        np.testing.assert_allclose(got, np.average(alphas, axis=0, weights=weights), rtol=1e-5, atol=1e-6)


def test_reptile_is_fedavg_with_a_server_step():
    """One round from w_0 = 0: w_1 = server_lr * (FedAvg's w_1 - 0)."""
    data = toy_data()
    kw = {**KW, "rounds": 1}
    fedavg = fedlab.simulate("fedavg", "logreg", data, **kw)
    half = fedlab.simulate("reptile", "logreg", data, server_lr=0.5, **kw)       # from w_0 = 0
    assert_same(half.params, jax.tree.map(lambda w: 0.5 * w, fedavg.params))


def test_fedrep_trains_the_head_first_then_only_the_body():
    data = toy_data()
    kw = {**KW, "rounds": 1, "model_options": {"hidden": (4,)}}
    init = fedlab.MODELS["mlp"].factory(data.input_shape, data.num_classes, hidden=(4,)).init(
        jax.random.split(jax.random.key(KW["seed"]))[0])
    head_only = fedlab.simulate("fedrep", "mlp", data, head_fraction=1.0, **kw)
    assert_same(head_only.params, init)                      # the body never trained, the head stays home
    heads = head_only.state.client_states
    assert not np.allclose(heads[0][0], init[-1]["W"])      # ... but each client's head trained
    body_only = fedlab.simulate("fedrep", "mlp", data, head_fraction=0.0, **kw)
    for k in range(data.num_clients):                        # no step on the head: heads stay at init
        assert_same((body_only.state.client_states[0][k], body_only.state.client_states[1][k]),
                    (init[-1]["W"], init[-1]["b"]))
    assert not np.allclose(body_only.params[0]["W"], init[0]["W"])
    assert body_only["bytes_up"].iloc[0] == data.num_clients * 4 * (5 * 4 + 4)      # the body alone


def test_held_out_clients_never_train_and_are_measured_after_adaptation():
    e = fedlab.Experiment(dataset="synthetic:0.5,0.5", num_clients=10, rounds=2, local_steps=2,
                          holdout_clients=0.3, adapt_steps=0, seed=4)
    full = e.replace(holdout_clients=0.0).load_data()
    train, new = hold_out(full, 0.3, 4)
    assert (train.num_clients, new.num_clients) == (7, 3)
    assert len(train.y_train) + len(new.y_train) == len(full.y_train)
    built = e.build()
    assert built.data.num_clients == 7 and built.new_clients.num_clients == 3
    np.testing.assert_array_equal(built.new_clients.y_test, new.y_test)
    h = e.run(progress=False)
    W, b = np.asarray(h.params["W"]), np.asarray(h.params["b"])       # adapt_steps 0: the global model
    acc = np.argmax(new.x_test @ W + b, 1) == new.y_test
    assert h["new_client_accuracy"].iloc[-1] == pytest.approx(acc.mean())
    table = fedlab.transfer.per_client(e, h)                  # the numbers behind the last row
    has = table["test_rows"] > 0
    assert table["global_accuracy"][has].mean() == pytest.approx(h["client_acc_mean"].iloc[-1])
    assert table["personal_accuracy"][has].mean() == pytest.approx(h["personal_acc_mean"].iloc[-1])


@pytest.mark.parametrize("argv, message", [
    (["--holdout-clients", "1"], "--holdout-clients must be in [0, 1), got 1.0"),
    (["--adapt-steps", "-1"], "--adapt-steps must be an integer >= 0, got -1"),
    (["--finetune-steps", "-2"], "--finetune-steps must be an integer >= 0, got -2"),
    (["--algorithm", "ditto", "--lam", "nan"], "lam (algorithm ditto) must be a finite number"),
    (["--algorithm", "fedrep", "--head-fraction", "2"], "--head-fraction must be in [0, 1]"),
    (["--algorithm", "maml", "--inner-steps", "0"], "inner-steps must be an integer >= 1"),
])
def test_bad_input_is_one_line_before_training(argv, message, tmp_path, capsys):
    assert main(["run", *argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run" / "history.csv").exists()
