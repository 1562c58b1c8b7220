"""Compression with central DP (issue 13). The sound order: each client compresses its clipped update
(with its error-feedback residual), scales the payload back into DP's unit ball, and the server
decodes, sums and noises the dense sum, so the sensitivity (C) and the accounting do not change.
Checked against NumPy (client deltas, top-k, the clip), dp_accounting, and exact byte counts; the
orders that are not sound (noise after compression, inside the compressed wrapper) are refused."""
from __future__ import annotations

import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting import rdp

import fedlab
from conftest import toy_data
from fedlab.algorithms.fedavg import fedavg
from fedlab.compression import CompressedClientState, compressed, make_compressor
from fedlab.core.types import Batch, ClientInfo, tree_nbytes
from fedlab.privacy.dp import dp, local_dp
from test_security import client_deltas

LR, CLIP = 0.5, 0.05          # one full-batch step of lr 0.5 from zero weights; C below every delta's norm


@pytest.mark.parametrize("spec", ["topk:0.1", "randk:0.2", "qsgd:3", "sign"])
def test_rescale_scales_what_the_server_decodes(spec):
    v = np.random.default_rng(1).normal(size=37).astype(np.float32)
    c = make_compressor(spec, 37)
    p = c.encode(jnp.asarray(v), jax.random.key(2))
    q = c.rescale(p, 0.3)
    assert tree_nbytes(q) == tree_nbytes(p)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), q) == jax.tree.map(lambda a: (a.shape, a.dtype), p)
    np.testing.assert_allclose(np.asarray(c.decode(q)), 0.3 * np.asarray(c.decode(p)), rtol=1e-6, atol=1e-7)


def one_round_by_hand(strategy, data, residual=None):
    """Every client of ``data`` takes one full-batch step from zero weights; returns the server's new
    flat params, the sent updates (stacked), the clients' new states."""
    model = fedlab.MODELS["logreg"].factory((data.num_features,), data.num_classes)
    params = jax.tree.map(jnp.zeros_like, model.init(jax.random.key(0)))
    state = strategy.server_init(params)
    received = strategy.broadcast(state)
    outs, states = [], []
    for k in range(data.num_clients):
        x, y = data.client(k)
        info = ClientInfo(jnp.float32(len(x)), jnp.int32(1), jnp.int32(1), jax.random.key(k), 1.0, k)
        client_state = strategy.client_state_init(params)
        if residual is not None:
            client_state = CompressedClientState(client_state.inner, jnp.asarray(residual[k]))
        local = strategy.client_init(received, client_state, info)
        local, _ = strategy.client_step(local, Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(len(x))), model.loss)
        out, client_state = strategy.client_final(local, client_state, info)
        outs.append(out)
        states.append(client_state)
    updates = jax.tree.map(lambda *u: jnp.stack(u), *[o.update for o in outs])
    weights = jnp.stack([jnp.asarray(o.weight, jnp.float32) for o in outs])
    agg, _ = strategy.aggregate(updates, weights, jax.random.key(99))
    new = strategy.server_update(state, agg)
    flat = np.concatenate([np.asarray(new.params["W"]).ravel(), np.asarray(new.params["b"])])
    return flat, updates, states


def np_topk(v, k):
    out = np.zeros_like(v)
    top = np.argsort(-np.abs(v))[:k]
    out[top] = v[top]
    return out


def test_topk_under_dp_is_clip_then_topk_then_the_mean_times_c():
    data = toy_data(num_clients=6)
    m = 6
    u = client_deltas(data, lr=LR)                                            # NumPy, [6, 18]
    assert (np.linalg.norm(u, axis=1) > CLIP).all()
    s = dp(fedavg(client_lr=LR), clip=CLIP, clients_per_round=m, num_clients=m, noise_multiplier=0.0)
    flat, updates, _ = one_round_by_hand(compressed(s, up="topk:0.25"), data)
    k = math.ceil(0.25 * u.shape[1])
    sent = np.stack([np_topk(row / np.linalg.norm(row), k) for row in u])    # clip to C, then / C: unit ball
    np.testing.assert_allclose(flat, CLIP * sent.sum(0) / m, rtol=1e-5, atol=1e-7)
    # what each client sent: k float32 values and k uint16 indices, DP's flag and clip: 6k + 8 bytes
    assert tree_nbytes(jax.tree.map(lambda a: a[0], updates)) == 6 * k + 8


def test_randk_and_error_feedback_are_put_back_in_the_unit_ball():
    data = toy_data(num_clients=6)
    u = client_deltas(data, lr=LR)
    unit = u / np.linalg.norm(u, axis=1, keepdims=True)
    s = dp(fedavg(client_lr=LR), clip=CLIP, clients_per_round=6, num_clients=6, noise_multiplier=0.0)
    # rand-k scales by d/k = 5: the decoded vector leaves the ball; sent: unit[S] / ||unit[S]||
    c = make_compressor("randk:0.2", u.shape[1])
    _, updates, _ = one_round_by_hand(compressed(s, up="randk:0.2"), data)
    for k in range(6):
        sent = np.asarray(c.decode(jax.tree.map(lambda a, k=k: a[k], updates.scaled)))
        support = np.flatnonzero(sent)
        assert len(support) == math.ceil(0.2 * u.shape[1])
        np.testing.assert_allclose(sent[support], unit[k, support] / np.linalg.norm(unit[k, support]), rtol=1e-5)
    # error feedback: a residual e of norm 3 makes v = unit + e leave the ball; the client sends
    # top-k(v) / ||top-k(v)|| and keeps v - top-k(v) (what compression dropped, not the clip)
    e = np.random.default_rng(0).normal(size=u.shape).astype(np.float32)
    e *= 3 / np.linalg.norm(e, axis=1, keepdims=True)
    flat, _, states = one_round_by_hand(compressed(s, up="topk:0.25", error_feedback=True), data, residual=e)
    v = unit + e
    kept = np.stack([np_topk(row, math.ceil(0.25 * u.shape[1])) for row in v])
    assert (np.linalg.norm(kept, axis=1) > 1).all()
    np.testing.assert_allclose(flat, CLIP * (kept / np.linalg.norm(kept, axis=1, keepdims=True)).sum(0) / 6,
                               rtol=1e-5, atol=1e-7)
    for k in range(6):
        np.testing.assert_allclose(np.asarray(states[k].residual), v[k] - kept[k], rtol=1e-5, atol=1e-6)


def test_unsound_orders_are_refused_with_the_reason():
    inner = compressed(fedavg(), up="topk:0.1")
    with pytest.raises(ValueError, match=r"^local_dp: compress outside DP.*kept coordinates.*top-k support.* leaks"):
        local_dp(inner, clip=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match=r"^dp: compress outside DP, compressed\(dp\(strategy\), up=\.\.\.\)"):
        dp(inner, clip=1.0, clients_per_round=2, num_clients=10, noise_multiplier=1.0)
    private = dp(fedavg(), clip=1.0, clients_per_round=2, num_clients=10, noise_multiplier=1.0)
    with pytest.raises(ValueError, match=r"compress_down: .*compress it inside: compressed\(dp\(compressed\("):
        compressed(private, down="topk:0.1")


def test_experiment_with_dp_and_compression_bytes_exact_and_epsilon_unchanged():
    base = dict(dataset="digits", num_clients=10, clients_per_round=5, rounds=3, seed=0,
                privacy=fedlab.Privacy(clip=0.5, target_epsilon=5.0))
    plain = fedlab.Experiment(**base).run(progress=False)
    e = fedlab.Experiment(**base, compress="topk:0.05", error_feedback=True, compress_down="sign")
    assert fedlab.Experiment.from_dict(e.to_dict()) == e
    h = e.run(progress=False)
    assert h.status == "completed" and np.isfinite(h["test_accuracy"]).all()
    d, k = 650, math.ceil(0.05 * 650)
    np.testing.assert_array_equal(h["bytes_up"], h["participants"] * (6 * k + 8))     # + DP's flag and clip
    sampled = plain["bytes_down"] / (4 * d + 4)                                          # dense model + clip
    np.testing.assert_array_equal(h["bytes_down"], sampled * (4 + math.ceil(d / 8) + 4))
    # the accounting does not see the compression: same z, same epsilon, as dp_accounting computes it
    np.testing.assert_array_equal(h["noise_multiplier"], plain["noise_multiplier"])
    np.testing.assert_array_equal(h["epsilon"], plain["epsilon"])
    z = float(h["noise_multiplier"].iloc[0])
    for r in (1, 3):
        acc = rdp.RdpAccountant()
        acc.compose(dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(z)), r)
        assert h["epsilon"].iloc[r - 1] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
    assert h["epsilon"].iloc[-1] <= 5.0 + 1e-6
