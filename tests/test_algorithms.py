"""The algorithm family against independent computations: FedAvg (the engine's reference),
optax server optimizers applied by hand to a NumPy FedAvg aggregate, the closed-form optimum of
heterogeneous quadratics, and q-FedAvg's formulas by hand."""
import itertools

import jax
import numpy as np
import optax
import pytest

import fedlab
from conftest import toy_data


def run(strategy, data, **kw):
    kw = {"rounds": 3, "batch_size": 4, "progress": False, **kw}
    return fedlab.simulate(strategy, "logreg", data, **kw)


def assert_same_params(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def softmax_grads(data, W, b):
    """Per-client full-batch gradient of the mean cross-entropy of x @ W + b, and its loss."""
    out = []
    for k in range(data.num_clients):
        x, y = data.client(k)
        z = x @ W + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        loss = -np.mean(np.log(p[np.arange(len(y)), y]))
        err = (p - np.eye(data.num_classes)[y]) / len(y)
        out.append((x.T @ err, err.sum(0), loss))
    return out


@pytest.fixture(scope="module")
def fedavg_reference():
    data = toy_data()
    kw = dict(clients_per_round=4, local_steps=3, client_lr=0.1, seed=2)
    return data, kw, run("fedavg", data, **kw)


@pytest.mark.parametrize("name, knobs", [("fedopt", dict(server_opt="sgd", server_lr=1.0)),
                                         ("fednova", {}), ("qffl", dict(q=0.0))])
def test_reduces_to_fedavg(fedavg_reference, name, knobs):
    """FedOpt with server SGD lr=1, FedNova with equal local work, q-FFL with q=0: all FedAvg."""
    data, kw, ref = fedavg_reference
    h = run(name, data, **knobs, **kw)
    assert_same_params(h.params, ref.params)
    np.testing.assert_allclose(h["local_loss"], ref["local_loss"], rtol=1e-6)


@pytest.mark.parametrize("name, knobs, opt", [
    ("fedadam", dict(server_lr=0.05, beta1=0.8, beta2=0.95, tau=1e-2), optax.adam(0.05, 0.8, 0.95, eps=1e-2)),
    ("fedyogi", dict(server_lr=0.05, tau=1e-2), optax.yogi(0.05, 0.9, 0.99, eps=1e-2)),
    ("fedavgm", dict(server_lr=0.7, momentum=0.5), optax.sgd(0.7, momentum=0.5)),
])
def test_server_optimizer_is_optax_applied_to_the_fedavg_aggregate(name, knobs, opt):
    """Full-batch clients (one GD step each) let NumPy compute the aggregate; optax steps by hand."""
    data = toy_data()
    lr, rounds = 0.5, 3
    h = fedlab.simulate(name, "logreg", data, rounds=rounds, local_epochs=1, batch_size=64, client_lr=lr,
                        progress=False, **knobs)
    n = data.train_counts / data.train_counts.sum()
    params = {"W": np.zeros((data.num_features, data.num_classes), np.float32),
              "b": np.zeros(data.num_classes, np.float32)}
    state = opt.init(params)
    for _ in range(rounds):
        grads = softmax_grads(data, params["W"], params["b"])
        delta = {"W": -lr * sum(p * g[0] for p, g in zip(n, grads)), "b": -lr * sum(p * g[1] for p, g in zip(n, grads))}
        updates, state = opt.update(jax.tree.map(lambda d: -d, delta), state, params)
        params = optax.apply_updates(params, updates)
    assert_same_params(h.params, params, rtol=1e-4, atol=1e-6)


def quadratic_clients(num_clients=4, n=20, features=3, seed=0):
    """Linear regression clients with different feature scales (Hessians) and different optima."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in range(num_clients):
        x = (rng.normal(size=(n, features)) * rng.uniform(0.3, 1.5, features) + k * 0.5).astype(np.float32)
        y = x @ rng.normal(k, 1.0, features) + rng.normal(size=n)
        train.append((x, y))
        test.append((x[:2], y[:2]))
    data = fedlab.FederatedDataset.from_clients("quadratics", train, test, num_classes=0)
    X = np.concatenate([np.hstack([x, np.ones((n, 1))]) for x, _ in train]).astype(np.float64)
    Y = np.concatenate([y for _, y in train]).astype(np.float64)
    optimum = np.linalg.solve(X.T @ X, X.T @ Y)     # equal n_k: mean of client objectives
    return data, optimum


def test_scaffold_reaches_the_global_optimum_where_fedavg_drifts():
    """Half the clients per round, so the control variates of unsampled clients must persist."""
    data, optimum = quadratic_clients()
    kw = dict(rounds=200, local_epochs=10, batch_size=20, client_lr=0.1, progress=False, eval_every=200,
              clients_per_round=2)
    dist = {}
    for name in ("scaffold", "fedavg"):
        h = fedlab.simulate(name, "logreg", data, **kw)
        w = np.append(np.asarray(h.params["W"])[:, 0], h.params["b"])
        dist[name] = np.abs(w - optimum).max()
    # float32 resolves |w| ~ 2 to ~2e-7; SCAFFOLD gets within a few ulps, FedAvg stays O(1) off.
    assert dist["scaffold"] < 1e-5
    assert dist["fedavg"] > 0.1


def test_qffl_round_by_hand():
    """q = 2, full-batch clients: F_k, Delta_k, h_k and the server step by hand, two rounds."""
    data = toy_data()
    lr, q, rounds = 0.5, 2.0, 2
    h = fedlab.simulate("qffl", "logreg", data, rounds=rounds, local_epochs=1, batch_size=64, client_lr=lr,
                        q=q, progress=False)
    n = data.train_counts / data.train_counts.sum()
    W = np.zeros((data.num_features, data.num_classes))
    b = np.zeros(data.num_classes)
    for _ in range(rounds):
        sum_dw, sum_db, sum_h = 0.0, 0.0, 0.0
        for p, (gW, gb, loss) in zip(n, softmax_grads(data, W, b)):
            # one local GD step: L (w - w_k) = L lr g = g
            sum_dw = sum_dw + p * loss ** q * gW
            sum_db = sum_db + p * loss ** q * gb
            sum_h += p * (q * loss ** (q - 1) * (np.sum(gW ** 2) + np.sum(gb ** 2)) + loss ** q / lr)
        W, b = W - sum_dw / sum_h, b - sum_db / sum_h
    assert_same_params(h.params, {"W": W, "b": b}, rtol=1e-4, atol=1e-6)


def test_fednova_keeps_stragglers_and_normalizes_their_steps():
    """Full-batch GD, 3 epochs asked; stragglers do fewer. Server step by hand from the steps done."""
    data = toy_data(num_clients=8)
    lr = 0.3
    h = fedlab.simulate("fednova", "logreg", data, rounds=1, local_epochs=3, batch_size=64, client_lr=lr,
                        stragglers=0.5, progress=False, seed=4)
    assert (h["participants"] == 8).all()
    # Each client's model after 1, 2 and 3 full-batch GD steps, by hand.
    n = data.train_counts / data.train_counts.sum()
    paths = []
    for k in range(data.num_clients):
        x, y = data.client(k)
        sub = fedlab.FederatedDataset.from_clients("one", [(x, y)], [(x[:1], y[:1])], data.num_classes)
        W, b, path = np.zeros((data.num_features, data.num_classes)), np.zeros(data.num_classes), []
        for _ in range(3):
            gW, gb, _ = softmax_grads(sub, W, b)[0]
            W, b = W - lr * gW, b - lr * gb
            path.append((W.copy(), b.copy()))
        paths.append(path)
    # The engine picks 4 stragglers doing 1 or 2 of the 3 steps. From x = 0 FedNova gives
    # w = (sum_k p_k t_k) * sum_k p_k y_k(t_k) / t_k; exactly one assignment of steps must match.
    errors = []
    for taus in itertools.product((1, 2, 3), repeat=data.num_clients):
        if sum(t < 3 for t in taus) != 4:
            continue
        tau_eff = sum(p * t for p, t in zip(n, taus))
        W = tau_eff * sum(p * paths[k][t - 1][0] / t for k, (p, t) in enumerate(zip(n, taus)))
        errors.append(np.abs(W - np.asarray(h.params["W"])).max())
    errors = np.sort(errors)
    assert errors[0] < 1e-5 < errors[1]
