"""The engine against independent computations: the FedAvg formula by hand, a plain per-client
loop, its own chunked/unchunked paths, and its contract (seeds, stragglers, errors, stop)."""
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import fedlab
from conftest import ProgramCount, toy_data
from fedlab.algorithms import common
from fedlab.core import engine
from fedlab.core.types import ClientOutput, Strategy, tree_nbytes


def run(strategy, data, model="logreg", **kw):
    kw = {"rounds": 2, "batch_size": 4, "progress": False, **kw}
    return fedlab.simulate(strategy, model, data, **kw)


def test_fedavg_one_round_equals_the_formula_by_hand():
    data = toy_data()
    lr, K, c = 0.5, data.num_clients, data.num_classes
    # batch_size >= every n_k and 1 epoch: each client does exactly one full-batch gradient step.
    h = fedlab.simulate("fedavg", "logreg", data, rounds=1, local_epochs=1, batch_size=64,
                        client_lr=lr, progress=False)
    client_models, n = [], []
    for k in range(K):
        x, y = data.client(k)
        p = np.full((len(y), c), 1.0 / c)                 # softmax of zero logits
        err = (p - np.eye(c)[y]) / len(y)
        client_models.append((-lr * x.T @ err, -lr * err.sum(0)))   # w_k = 0 - lr * grad
        n.append(len(y))
    n = np.array(n, float)
    W = sum(nk / n.sum() * Wk for nk, (Wk, _) in zip(n, client_models))
    b = sum(nk / n.sum() * bk for nk, (_, bk) in zip(n, client_models))
    np.testing.assert_allclose(h.params["W"], W, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(h.params["b"], b, rtol=1e-5, atol=1e-7)


def test_vmapped_round_equals_a_python_loop_over_clients():
    """FedProx, MLP, 3 full-batch epochs per client, 2 rounds: the engine vs. plain JAX per client."""
    data = toy_data()
    mu, lr, rounds = 0.3, 0.2, 2
    h = run("fedprox", data, model="mlp", model_options={"hidden": (8,)}, rounds=rounds,
            local_epochs=3, batch_size=64, mu=mu, client_lr=lr, seed=3)
    model = fedlab.MODELS["mlp"].factory(data.input_shape, data.num_classes, hidden=(8,))
    w = model.init(jax.random.split(jax.random.key(3))[0])
    grad = jax.jit(jax.grad(model.loss))
    for _ in range(rounds):
        total = jax.tree.map(jnp.zeros_like, w)
        for k in range(data.num_clients):
            x, y = data.client(k)
            batch = fedlab.Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(len(y)))
            wk = w
            for _ in range(3):
                g = grad(wk, batch)
                wk = jax.tree.map(lambda p, gp, p0: p - lr * (gp + mu * (p - p0)), wk, g, w)
            total = optax.tree_utils.tree_add_scale(total, len(y), wk)
        w = jax.tree.map(lambda t: t / data.train_counts.sum(), total)
    for a, b in zip(jax.tree.leaves(h.params), jax.tree.leaves(w)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("kw", [dict(local_steps=3),
                                dict(local_epochs=2, stragglers=0.5),
                                dict(local_steps=4, sampling="poisson", stragglers=0.3)])
def test_chunked_round_equals_unchunked(kw):
    data = toy_data(num_clients=12)
    common_kw = dict(clients_per_round=6, rounds=3, seed=1, client_lr=0.1, mu=0.1, **kw)
    whole = run("fedprox", data, chunk_size=6, **common_kw)
    for chunk in (1, 4):    # 4 does not divide 6: two padding slots that must not count
        part = run("fedprox", data, chunk_size=chunk, **common_kw)
        np.testing.assert_allclose(part["local_loss"], whole["local_loss"], rtol=1e-5)
        np.testing.assert_array_equal(part["clients"], whole["clients"])
        for a, b in zip(jax.tree.leaves(part.params), jax.tree.leaves(whole.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fedprox_with_mu_zero_equals_fedavg():
    data = toy_data()
    kw = dict(clients_per_round=4, local_steps=5, rounds=3, client_lr=0.1, seed=7)
    a, b = run("fedavg", data, **kw), run("fedprox", data, mu=0.0, **kw)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a["test_accuracy"], b["test_accuracy"])


def test_same_seed_same_history_different_seed_differs():
    data = toy_data(num_clients=10)
    kw = dict(clients_per_round=3, local_epochs=2, stragglers=0.4, rounds=4, client_lr=0.1, mu=0.1)
    timing = ["seconds", "elapsed"]
    a = run("fedprox", data, seed=5, **kw).drop(columns=timing)
    b = run("fedprox", data, seed=5, **kw).drop(columns=timing)
    c = run("fedprox", data, seed=6, **kw).drop(columns=timing)
    assert a.equals(b)                                    # bit for bit
    assert not np.allclose(a["local_loss"], c["local_loss"])


def test_stragglers_are_dropped_by_fedavg_and_kept_by_fedprox():
    data = toy_data(num_clients=10)
    kw = dict(clients_per_round=10, local_epochs=3, stragglers=0.3, rounds=3)
    avg, prox = run("fedavg", data, **kw), run("fedprox", data, **kw)
    assert (avg["participants"] == 7).all() and (avg["clients"] == 10).all()
    assert (prox["participants"] == 10).all()
    nbytes = tree_nbytes(avg.params)
    assert (avg["bytes_up"] == 7 * nbytes).all() and (avg["bytes_down"] == 10 * nbytes).all()


def visit_counter(num_rows):
    """A strategy whose 'update' counts how often each training row (feature 0 = row id) was
    used; server params = the summed counts. Tests the engine's batching, not learning."""

    def client_init(broadcast, client_state, info):
        return jnp.zeros(num_rows)

    def client_step(counts, batch, loss_fn):
        return counts.at[batch.x[:, 0].astype(jnp.int32)].add(batch.mask), jnp.zeros(())

    def client_final(counts, client_state, info):
        return ClientOutput(counts, jnp.ones(()), {}), client_state

    return Strategy("visits", common.server_init, client_init, client_step, client_final,
                    lambda state, aggregate: state._replace(params=aggregate))


@pytest.mark.parametrize("batch_size", [3, 4, 64])
def test_local_epochs_visit_every_example_once_per_epoch(batch_size):
    sizes = [5, 8, 1, 13]
    ids = np.arange(sum(sizes), dtype=np.float32)
    parts = np.split(ids, np.cumsum(sizes)[:-1])
    data = fedlab.FederatedDataset.from_clients(
        "ids", [(p[:, None], np.zeros(len(p), int)) for p in parts],
        [(p[:1, None], np.zeros(1, int)) for p in parts], 2)
    blind = fedlab.Model("blind", lambda key: jnp.zeros(len(ids)),
                         lambda params, x: jnp.zeros((len(x), 2)), num_classes=2)
    h = fedlab.simulate(visit_counter(len(ids)), blind, data, rounds=1, local_epochs=3,
                        batch_size=batch_size, progress=False, init_params=jnp.zeros(len(ids)))
    # aggregate = mean over the 4 clients of each client's counts; each row belongs to one client.
    np.testing.assert_array_equal(np.asarray(h.params) * len(sizes), np.full(len(ids), 3.0))


def test_callback_gets_every_round_and_can_stop_the_run():
    data = toy_data()
    seen = []

    def stop_after_three(event):
        seen.append((event.round, event.rounds, event.metrics["round"]))
        if event.round == 3:
            raise fedlab.StopTraining

    h = run("fedavg", data, rounds=10, local_steps=2, callbacks=[stop_after_three])
    assert seen == [(1, 10, 1), (2, 10, 2), (3, 10, 3)]
    assert len(h) == 3 and h.stopped and list(h["round"]) == [1, 2, 3]


def test_eval_every_leaves_rows_empty_but_always_evaluates_the_last_round():
    h = run("fedavg", toy_data(), rounds=5, local_steps=2, eval_every=2)
    assert h["test_accuracy"].notna().tolist() == [False, True, False, True, True]
    assert {"round", "train_loss", "test_accuracy", "seconds", "bytes_up"} <= set(h.columns)


def test_training_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(10, 4))
    parts = []
    for _ in range(8):
        x = rng.normal(size=(60, 10)).astype(np.float32)
        parts.append((x, np.argmax(x @ W, 1)))
    data = fedlab.FederatedDataset.from_clients("sep", [(x[:50], y[:50]) for x, y in parts],
                                                [(x[50:], y[50:]) for x, y in parts], 4)
    h = run("fedavg", data, rounds=30, clients_per_round=4, local_steps=10, batch_size=10, client_lr=0.5)
    assert h["test_accuracy"].iloc[-1] > 0.85
    assert h["train_loss"].iloc[-1] < 0.5 * np.log(4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(clients_per_round=7), "clients_per_round must be an integer in [1, 6]"),
    (dict(rounds=0), "rounds must be an integer >= 1"),
    (dict(client_lr=0.0), "client_lr must be > 0"),
    (dict(client_lr=-1.0), "client_lr must be > 0"),
    (dict(stragglers=1.0), "stragglers must be in [0, 1), got 1.0"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(local_steps=2, local_epochs=2), "not both"),
    (dict(sampling="random"), "sampling must be"),
    (dict(momentum=0.9), "has no option"),
])
def test_bad_settings_raise_before_any_work(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        run("fedavg", toy_data(), **kwargs)


def test_unknown_names_and_nan_data_are_clear_errors():
    with pytest.raises(ValueError, match="unknown algorithm 'fedavgg' \\(did you mean 'fedavg'"):
        run("fedavgg", toy_data())
    with pytest.raises(ValueError, match="unknown model"):
        run("fedavg", toy_data(), model="resnet")
    with pytest.raises(ValueError, match="NaN"):
        toy_data(nan=True)
    with pytest.raises(ValueError, match="mu must be >= 0"):
        run("fedprox", toy_data(), mu=-1.0)


def test_custom_optax_client_optimizer():
    data = toy_data()
    adam = run(fedlab.algorithms.fedavg(client_optimizer=optax.adam(0.05)), data, local_steps=3)
    sgd = run(fedlab.algorithms.fedavg(client_lr=0.05), data, local_steps=3)
    assert not np.allclose(adam.params["W"], sgd.params["W"])


def test_client_metrics_are_weighted_means_with_and_without_a_custom_aggregate():
    data = toy_data()
    base = fedlab.algorithms.fedavg(client_lr=0.1)

    def client_final(local, client_state, info):
        out, state = base.client_final(local, client_state, info)
        return out._replace(metrics={"n": info.num_examples * 1.0}), state

    def mean_aggregate(updates, weights, key):
        return jax.tree.map(lambda u: jnp.tensordot(weights, u, 1) / weights.sum(), updates), {}

    n = data.train_counts.astype(float)
    expected = (n * n).sum() / n.sum()           # sum_k n_k * n_k / sum_k n_k
    streamed = base._replace(client_final=client_final)
    for strategy in (streamed, streamed._replace(aggregate=mean_aggregate)):
        h = run(strategy, data, rounds=1, local_steps=2)
        np.testing.assert_allclose(h["n"], expected, rtol=1e-6)


def test_fixed_sampling_draws_every_subset_equally_often():
    """6 clients, 2 a round: the 15 possible pairs, each 1/15 of 6000 draws (chi-square)."""
    plan = engine.Plan(6, 2, 2, 2, 1, 1, None, 1, "fixed", 0.0)
    draw = jax.jit(jax.vmap(lambda k: engine.sample_fixed(plan, k)))
    ids = np.asarray(draw(jax.random.split(jax.random.key(0), 6000)))
    assert (ids[:, 0] < ids[:, 1]).all()                      # distinct and in increasing order
    pairs = {p: i for i, p in enumerate(itertools.combinations(range(6), 2))}
    counts = np.bincount([pairs[tuple(p)] for p in ids], minlength=15)
    assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_auto_chunk_keeps_cpu_chunks_in_cache_and_fills_a_gpu():
    mlp_params = 60 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10        # the benchmark's MLP
    assert engine.auto_chunk(100, mlp_params, "cpu") == 2                 # 2 fit in 512 KiB
    assert engine.auto_chunk(10, 610, "cpu") == 10                        # logreg: the whole round
    assert engine.auto_chunk(100, mlp_params, "gpu") == 100
    assert engine.auto_chunk(7, 10**9, "gpu") == 1                        # too big for one: one at a time


def aligned_floats(n):
    """[n] float32 1.5s whose memory starts on a 64-byte boundary."""
    buffer = np.empty(n + 16, np.float32)
    start = (-buffer.ctypes.data % 64) // 4
    out = buffer[start:start + n]
    out[:] = 1.5
    assert out.ctypes.data % 64 == 0
    return out


def test_to_device_copies_with_jnp_asarray_dtypes_and_compiles_nothing():
    host = [np.linspace(0, 1, 3 * 7 * 11).reshape(3, 7, 11), np.arange(13, dtype=np.int64) - 6,
            np.arange(17) % 3 == 0, np.full((5, 19), 2.5, np.float32),      # shapes no other test uses
            aligned_floats(65543)]      # 64-byte aligned: jax.device_put alone would share its memory
    with ProgramCount() as programs:
        on_device = engine.to_device(*host)
    assert programs.count == 0
    kept = [h.copy() for h in host]
    for h in host:
        h.flat[0] = 7               # the device arrays are copies, not views of the numpy memory
    for d, h in zip(on_device, kept, strict=True):
        expected = jnp.asarray(h)
        assert isinstance(d, jax.Array) and d.dtype == expected.dtype and d.shape == h.shape
        np.testing.assert_array_equal(np.asarray(d), np.asarray(expected))


def test_evaluator_reuses_its_last_pass_for_the_same_arrays_only():
    from fedlab.core.simulate import Evaluator

    data = toy_data()
    model = fedlab.MODELS["logreg"].factory(data.input_shape, data.num_classes)
    evaluate, passes = Evaluator(model, data), []
    run = evaluate._run
    evaluate._run = lambda *args: passes.append(1) or run(*args)
    rng = np.random.default_rng(1)
    W, b = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)

    def by_hand(W, b):
        tests = [data.client(k, "test") for k in range(data.num_clients)]
        return [np.mean(np.argmax(x @ W + b, 1) == y) for x, y in tests]

    params = {"W": jnp.asarray(W), "b": jnp.asarray(b)}
    row = evaluate(params)
    table = evaluate.per_client(params, data.names())
    assert len(passes) == 1                      # the table reuses the row's pass
    np.testing.assert_allclose(table["test_accuracy"], by_hand(W, b))
    np.testing.assert_allclose(row["test_accuracy"], np.average(by_hand(W, b), weights=data.test_counts))
    other = {"W": -params["W"], "b": params["b"]}        # new arrays: a new pass
    np.testing.assert_allclose(evaluate.per_client(other, data.names())["test_accuracy"], by_hand(-W, b))
    assert len(passes) == 2
    numpy_params = {"W": W, "b": b}                      # numpy arrays can change in place: never reused
    evaluate.per_client(numpy_params, data.names())
    W[:] = -W
    np.testing.assert_allclose(evaluate.per_client(numpy_params, data.names())["test_accuracy"], by_hand(W, b))
    assert len(passes) == 4
