"""Tests for fedlab.privacy: accounting against dp_accounting, the DP wrappers' clipping and
noise, secure aggregation, Paillier aggregation and the membership-inference attack."""
from __future__ import annotations

import itertools
import math
import re

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dp_accounting import pld, rdp

from fedlab.algorithms import fedavg, fedprox
from fedlab.core.types import Batch, ClientInfo
from fedlab.models import logreg
from fedlab.privacy import accounting
from fedlab.privacy.dp import DPUpdate, dp, local_dp

REL = dp_accounting.privacy_accountant.NeighboringRelation


# ---------------------------------------------------------------- accounting

def _rdp_poisson(z, q, rounds, delta):
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("z,q,rounds", [(1.1, 0.01, 200), (0.8, 0.1, 30), (3.0, 1.0, 5)])
def test_epsilon_poisson_rdp_equals_dp_accounting(z, q, rounds):
    assert accounting.epsilon(z, q, rounds, 1e-5) == pytest.approx(_rdp_poisson(z, q, rounds, 1e-5), rel=1e-12)


def test_epsilon_pld_equals_dp_accounting():
    acc = pld.PLDAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.2)), 20)
    expected = acc.get_epsilon(1e-6)
    assert accounting.epsilon(1.2, 0.05, 20, 1e-6, accountant="pld") == pytest.approx(expected, rel=1e-9)
    # PLD is the tighter accountant
    assert expected < _rdp_poisson(1.2, 0.05, 20, 1e-6)


def test_epsilon_fixed_sampling_is_replace_one_with_double_sensitivity():
    # 10 of 100 clients without replacement; replacing one client moves the sum by up to 2C
    acc = rdp.RdpAccountant(neighboring_relation=REL.REPLACE_ONE)
    acc.compose(dp_accounting.SampledWithoutReplacementDpEvent(100, 10, dp_accounting.GaussianDpEvent(1.5 / 2)), 25)
    got = accounting.epsilon(1.5, 0.1, 25, 1e-5, sampling="fixed", num_clients=100)
    assert got == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)


def test_epsilon_edge_cases():
    assert accounting.epsilon(1.0, 0.1, 0, 1e-5) == 0.0
    assert accounting.epsilon(0.0, 0.1, 3, 1e-5) == math.inf
    # more rounds, more epsilon; more noise, less
    assert accounting.epsilon(1.0, 0.1, 10, 1e-5) < accounting.epsilon(1.0, 0.1, 20, 1e-5)
    assert accounting.epsilon(2.0, 0.1, 10, 1e-5) < accounting.epsilon(1.0, 0.1, 10, 1e-5)


@pytest.mark.parametrize("acc_name,sampling,target", [("rdp", "poisson", 2.0), ("pld", "poisson", 1.0)])
def test_calibrate_round_trips(acc_name, sampling, target):
    rounds, q, delta, tol = 10, 0.1, 1e-5, 1e-2
    z = accounting.calibrate(target, delta, rounds, q, accountant=acc_name, sampling=sampling,
                             num_clients=50, tol=tol)
    eps = lambda zz: accounting.epsilon(zz, q, rounds, delta, accountant=acc_name, sampling=sampling,
                                        num_clients=50)
    assert eps(z) <= target                  # within budget ...
    assert eps(z - 2 * tol) > target         # ... and not more noise than needed (to the search tolerance)


@pytest.mark.parametrize("call,name", [
    (lambda: accounting.calibrate(0.0, 1e-5, 10, 0.1), "target_epsilon"),
    (lambda: accounting.calibrate(-1.0, 1e-5, 10, 0.1), "target_epsilon"),
    (lambda: accounting.epsilon(1.0, 0.1, 10, 1.0), "delta"),
    (lambda: accounting.epsilon(1.0, 0.1, 10, 0.0), "delta"),
    (lambda: accounting.epsilon(-0.1, 0.1, 10, 1e-5), "noise_multiplier"),
    (lambda: accounting.epsilon(1.0, 0.0, 10, 1e-5), "sampling_rate"),
    (lambda: accounting.epsilon(1.0, 0.1, 10, 1e-5, accountant="moments"), "accountant"),
    (lambda: accounting.epsilon(1.0, 0.1, 10, 1e-5, accountant="pld", sampling="fixed", num_clients=10),
     "accountant"),
    (lambda: dp(fedavg(), clip=0.0, clients_per_round=2, num_clients=10, noise_multiplier=1.0), "clip"),
    (lambda: dp(fedavg(), clip=1.0, clients_per_round=2, num_clients=10, noise_multiplier=-1.0),
     "noise_multiplier"),
    (lambda: dp(fedavg(), clip=1.0, clients_per_round=2, num_clients=10, target_epsilon=0.0, rounds=5),
     "target_epsilon"),
    (lambda: dp(fedavg(), clip=1.0, clients_per_round=2, num_clients=10, target_epsilon=1.0), "rounds"),
    (lambda: dp(fedavg(), clip=1.0, clients_per_round=2, num_clients=10, noise_multiplier=1.0, delta=1.5),
     "delta"),
    (lambda: dp(fedavg(), clip=1.0, clients_per_round=20, num_clients=10, noise_multiplier=1.0),
     "clients_per_round"),
    (lambda: dp(fedavg(), clip=1.0, clients_per_round=2, num_clients=10), "noise_multiplier"),
    (lambda: local_dp(fedavg(), clip=-1.0, noise_multiplier=1.0), "clip"),
])
def test_bad_privacy_parameters_are_clear_errors(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# ---------------------------------------------------------------- DP wrappers

def _round(strategy, server_state, data, loss_fn, key, num_steps=None):
    """A reference round: a Python loop over clients, then the strategy's aggregate (or the plain
    weighted mean). data: list of (x, y) per client. Returns (server_state, updates, weights, agg)."""
    broadcast = strategy.broadcast(server_state)
    outs = []
    for k, (x, y) in enumerate(data):
        steps = 1 if num_steps is None else num_steps[k]
        info = ClientInfo(jnp.float32(len(x)), jnp.int32(steps), jnp.int32(1), jax.random.fold_in(key, k))
        local = strategy.client_init(broadcast, strategy.client_state_init(server_state.params), info)
        for _ in range(steps):
            local, _ = strategy.client_step(local, Batch(x, y, jnp.ones(len(x))), loss_fn)
        out, _ = strategy.client_final(local, (), info)
        outs.append(out)
    updates = jax.tree.map(lambda *u: jnp.stack(u), *[o.update for o in outs])
    weights = jnp.stack([jnp.asarray(o.weight, jnp.float32) for o in outs])
    if strategy.aggregate is None:
        agg = jax.tree.map(lambda u: jnp.tensordot(weights, u, 1) / weights.sum(), updates)
    else:
        agg, _ = strategy.aggregate(updates, weights, jax.random.fold_in(key, 1_000_003))
    return strategy.server_update(server_state, agg), updates, weights, agg


def _clients(num, n=12, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return [(jnp.asarray(rng.normal(size=(n, d)) * (k + 1), jnp.float32), jnp.asarray(rng.integers(0, classes, n)))
            for k in range(num)]


MODEL = logreg((6,), 3)


@pytest.mark.parametrize("inner", [fedavg(client_lr=2.0), fedprox(mu=0.1, client_lr=2.0)])
def test_dp_clips_each_update_to_norm_c(inner):
    clip, data, key = 0.05, _clients(4), jax.random.key(0)
    params = MODEL.init(key)
    _, raw, _, _ = _round(inner, inner.server_init(params), data, MODEL.loss, key)
    s = dp(inner, clip=clip, clients_per_round=4, num_clients=40, noise_multiplier=0.0)
    _, updates, weights, _ = _round(s, s.server_init(params), data, MODEL.loss, key)
    for k in range(4):
        raw_k = jax.tree.map(lambda u, k=k: u[k], raw)
        sent_k = jax.tree.map(lambda u, k=k: u[k] * clip, updates.scaled)   # clients send update / C
        norm = float(optax.tree_utils.tree_norm(raw_k))
        assert norm > clip                                               # the test does clip
        assert float(optax.tree_utils.tree_norm(sent_k)) <= clip * (1 + 1e-6)
        expected = jax.tree.map(lambda u, norm=norm: u * clip / norm, raw_k)        # same direction, norm C
        for a, b in zip(jax.tree.leaves(sent_k), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(weights, np.ones(4))
    np.testing.assert_array_equal(updates.unclipped, np.zeros(4))


def test_dp_without_noise_is_mean_of_clipped_updates_over_expected_clients():
    clip, data, key = 0.05, _clients(3), jax.random.key(1)
    s = dp(fedavg(client_lr=2.0), clip=clip, clients_per_round=5, num_clients=50, noise_multiplier=0.0)
    state = s.server_init(MODEL.init(key))
    new, updates, _, _ = _round(s, state, data, MODEL.loss, key)
    for p_new, p_old, u in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params),
                               jax.tree.leaves(updates.scaled)):
        np.testing.assert_allclose(p_new - p_old, clip * u.sum(0) / 5, rtol=1e-5, atol=1e-8)


def test_dp_noise_std_is_z_c_over_m():
    z, clip, m, d = 1.3, 0.7, 8, 40_000
    s = dp(fedavg(), clip=clip, clients_per_round=m, num_clients=80, noise_multiplier=z)
    state = s.server_init({"w": jnp.zeros(d)})
    zeros = DPUpdate({"w": jnp.zeros((m, d))}, jnp.zeros(m), jnp.ones(m))
    agg, _ = s.aggregate(zeros, jnp.ones(m), jax.random.key(3))
    delta = np.asarray(s.server_update(state, agg).params["w"])
    # the sample std of d normals has relative standard error 1/sqrt(2d); allow 5 of them
    assert abs(delta.std() / (z * clip / m) - 1) < 5 / math.sqrt(2 * d)
    assert abs(delta.mean()) < 5 * z * clip / m / math.sqrt(d)


def test_dp_aggregate_ignores_zero_weight_slots():
    s = dp(fedavg(), clip=1.0, clients_per_round=4, num_clients=40, noise_multiplier=0.0)
    scaled = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0], [jnp.nan, 1e9], [1.0, 1.0]])}
    agg, _ = s.aggregate(DPUpdate(scaled, jnp.ones(4), jnp.ones(4)), jnp.array([1.0, 2.0, 0.0, 1.0]), jax.random.key(0))
    np.testing.assert_allclose(agg.scaled["w"], [2 / 4, 2 / 4])


def test_adaptive_clipping_moves_clip_geometrically():
    # all norms below C: b = 1, so C <- C exp(-lr (1 - gamma)); count noise negligible
    clip, lr, gamma = 10.0, 0.3, 0.4
    s = dp(fedavg(client_lr=0.01), clip=clip, clients_per_round=3, num_clients=30, noise_multiplier=0.0,
           adaptive_clipping=True, clip_lr=lr, target_quantile=gamma, count_noise_stddev=1e-7)
    state = s.server_init(MODEL.init(jax.random.key(0)))
    new, updates, _, agg = _round(s, state, _clients(3), MODEL.loss, jax.random.key(1))
    np.testing.assert_array_equal(updates.unclipped, np.ones(3))
    assert float(new.clip) == pytest.approx(clip * math.exp(-lr * (1 - gamma)), rel=1e-5)
    # and with all norms above C, C grows by exp(lr * gamma)
    s = dp(fedavg(client_lr=5.0), clip=1e-4, clients_per_round=3, num_clients=30, noise_multiplier=0.0,
           adaptive_clipping=True, clip_lr=lr, target_quantile=gamma, count_noise_stddev=1e-7)
    new, _, _, _ = _round(s, s.server_init(MODEL.init(jax.random.key(0))), _clients(3), MODEL.loss,
                          jax.random.key(1))
    assert float(new.clip) == pytest.approx(1e-4 * math.exp(lr * gamma), rel=1e-5)


def test_adaptive_clipping_update_noise_accounts_for_count_noise():
    # Andrew et al.: z_update = (z^-2 - (2 sigma_b)^-2)^-1/2, measured on the aggregate's noise
    z, sigma_b, m, d = 1.0, 1.0, 20, 40_000
    s = dp(fedavg(), clip=1.0, clients_per_round=m, num_clients=200, noise_multiplier=z,
           adaptive_clipping=True, count_noise_stddev=sigma_b)
    agg, metrics = s.aggregate(DPUpdate({"w": jnp.zeros((m, d))}, jnp.zeros(m), jnp.ones(m)), jnp.ones(m), jax.random.key(5))
    z_update = (z ** -2 - (2 * sigma_b) ** -2) ** -0.5
    got = float(np.asarray(agg.scaled["w"]).std()) * m
    assert abs(got / z_update - 1) < 5 / math.sqrt(2 * d)
    assert "unclipped_fraction" in metrics


def test_dp_report_equals_dp_accounting_and_calibrated_budget():
    s = dp(fedavg(), clip=1.0, clients_per_round=5, num_clients=100, noise_multiplier=1.1)
    assert s.report(7)["epsilon"] == pytest.approx(_rdp_poisson(1.1, 0.05, 7, 1e-5), rel=1e-12)
    s = dp(fedavg(), clip=1.0, clients_per_round=5, num_clients=100, target_epsilon=3.0, rounds=40)
    assert s.report(40)["epsilon"] <= 3.0
    assert s.report(40)["epsilon"] == pytest.approx(3.0, rel=0.02)
    assert s.report(40)["noise_multiplier"] == pytest.approx(accounting.calibrate(3.0, 1e-5, 40, 0.05))


def test_local_dp_clips_and_noises_each_client():
    z, clip, d = 0.5, 0.2, 20_000
    s = local_dp(fedavg(client_lr=1.0), clip=clip, noise_multiplier=z)
    # a client whose update is huge: after local DP it is (clipped update) + N(0, (z clip)^2)
    model_d = logreg((d,), 0)
    x = jnp.ones((4, d)); y = jnp.full((4,), 100.0)
    params = model_d.init(jax.random.key(0))
    _, raw, _, _ = _round(fedavg(client_lr=1.0), fedavg().server_init(params), [(x, y)], model_d.loss,
                          jax.random.key(1))
    _, noisy, _, _ = _round(s, s.server_init(params), [(x, y)], model_d.loss, jax.random.key(1))
    raw_w, noisy_w = np.asarray(raw["W"][0, :, 0]), np.asarray(noisy["W"][0, :, 0])
    norm = float(optax.tree_utils.tree_norm(jax.tree.map(lambda u: u[0], raw)))
    noise = noisy_w - raw_w * clip / norm
    assert abs(noise.std() / (z * clip) - 1) < 5 / math.sqrt(2 * d)
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(z / 2), 3)
    assert s.report(3)["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)


def test_dp_refuses_strategy_with_custom_aggregate():
    s = dp(fedavg(), clip=1.0, clients_per_round=2, num_clients=10, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="aggregate"):
        dp(s, clip=1.0, clients_per_round=2, num_clients=10, noise_multiplier=1.0)


# ---------------------------------------------------------------- secure aggregation

from scipy import stats  # noqa: E402

from fedlab.core.types import is_host_aggregator  # noqa: E402
from fedlab.privacy import secagg  # noqa: E402


def _entropy(seed):
    return np.random.default_rng(seed).bytes       # deterministic key material for the tests


@pytest.mark.parametrize("drop_fraction", [0.0, 1 / 3])
def test_secagg_sum_is_exact_to_fixed_point_with_dropouts(drop_fraction):
    n, d, f = 12, 3000, 20
    x = np.random.default_rng(0).normal(size=(n, d)) * 3
    dropped = np.arange(n) < int(drop_fraction * n)
    res = secagg.secure_sum(x, dropped=dropped, threshold=8, fraction_bits=f, entropy=_entropy(1))
    alive = ~dropped
    np.testing.assert_array_equal(res.survivors, np.flatnonzero(alive))
    # each survivor's encoding rounds by at most 2^-(f+1); the masks cancel exactly
    np.testing.assert_allclose(res.total, x[alive].sum(0), rtol=0, atol=alive.sum() * 2.0 ** -(f + 1))
    assert res.bytes_up > alive.sum() * d * 8 and res.seconds > 0


def test_secagg_beyond_threshold_is_a_clear_error():
    x = np.ones((9, 10))
    with pytest.raises(secagg.TooManyDropouts, match="threshold t=6"):
        secagg.secure_sum(x, dropped=np.arange(9) < 4, threshold=6)
    secagg.secure_sum(x, dropped=np.arange(9) < 3, threshold=6)       # exactly t survivors is fine
    with pytest.raises(ValueError, match="threshold"):
        secagg.secure_sum(x, threshold=10)
    with pytest.raises(ValueError, match="fraction_bits"):
        secagg.secure_sum(x * 1e12, fraction_bits=30)


def test_secagg_server_view_of_a_client_is_uniform():
    n, d = 5, 40_000
    x = np.zeros((n, d))
    x[0] = np.linspace(-1, 1, d)                        # a very non-uniform input
    res = secagg.secure_sum(x, entropy=_entropy(2))
    bins = 256
    critical = stats.chi2.ppf(1 - 1e-6, bins - 1)       # false alarm 1e-6 if uniform

    def chi2_top_byte(v):
        counts = np.bincount((v >> np.uint64(56)).astype(np.int64), minlength=bins)
        return ((counts - d / bins) ** 2 / (d / bins)).sum()

    assert chi2_top_byte(res.masked[0]) < critical
    assert stats.kstest(res.masked[0] / 2.0 ** 64, "uniform").pvalue > 1e-6
    # the same test flags the unmasked encoding, so it can tell
    assert chi2_top_byte(secagg.encode(x[0], 20)) > critical


def test_shamir_any_t_shares_reconstruct():
    secret = 123456789 ** 7 % secagg.PRIME
    shares = secagg.shamir_share(secret, 7, 4, _entropy(3))
    for subset in ([0, 1, 2, 3], [6, 4, 2, 0], [1, 3, 5, 6, 0]):
        assert secagg.shamir_reconstruct({i + 1: shares[i] for i in subset}) == secret
    assert secagg.shamir_reconstruct({i + 1: shares[i] for i in [0, 1, 2]}) != secret


def test_secure_aggregator_is_the_weighted_mean():
    rng = np.random.default_rng(4)
    updates = {"W": rng.normal(size=(6, 4, 3)).astype(np.float32), "b": rng.normal(size=(6, 3)).astype(np.float32)}
    weights = np.array([10.0, 0.0, 5.0, 30.0, 7.0, 0.0])       # slots 1 and 5: padding
    agg_fn = secagg.secure_aggregator(entropy=_entropy(5))
    assert is_host_aggregator(agg_fn)
    mean, metrics = agg_fn(updates, weights, jax.random.key(0))
    for name in updates:
        expected = np.tensordot(weights, updates[name].astype(np.float64), 1) / weights.sum()
        np.testing.assert_allclose(mean[name], expected, atol=4 * 50 * 2.0 ** -21 / weights.sum() + 1e-6)
        assert mean[name].dtype == np.float32
    assert metrics["secagg_bytes"] > 0 and metrics["secagg_dropped"] == 0
    # with dropouts the mean is over the survivors: some subset of the 4 real clients
    mean, metrics = secagg.secure_aggregator(dropout=0.4, threshold=0.3, entropy=_entropy(5))(
        updates, weights, jax.random.key(2))
    real = np.flatnonzero(weights > 0)
    matches = []
    for size in range(2, 5):
        for subset in itertools.combinations(real, size):
            w = weights[list(subset)]
            expected = np.tensordot(w, updates["b"][list(subset)].astype(np.float64), 1) / w.sum()
            if np.allclose(mean["b"], expected, atol=1e-5):
                matches.append(len(real) - size)
    assert metrics["secagg_dropped"] == 2 and matches == [2]


# ---------------------------------------------------------------- Paillier

from phe import paillier as phe_paillier  # noqa: E402

from fedlab.privacy import paillier  # noqa: E402

KEYPAIR = phe_paillier.generate_paillier_keypair(n_length=512)   # small key: fast tests, not secure


@pytest.mark.parametrize("packed", [True, False])
def test_paillier_sum_equals_plaintext_within_quantization(packed):
    n, d, f = 5, 40 if not packed else 300, 16
    x = np.random.default_rng(6).normal(size=(n, d)) * 50
    res = paillier.encrypted_sum(x, *KEYPAIR, fraction_bits=f, packed=packed)
    np.testing.assert_allclose(res.total, x.sum(0), rtol=0, atol=n * 2.0 ** -(f + 1))
    slots = (KEYPAIR[0].n.bit_length() - 1) // 64 if packed else 1
    assert res.ciphertexts_per_client == math.ceil(d / slots)
    assert res.bytes_up == n * res.ciphertexts_per_client * 2 * 512 // 8


def test_paillier_packing_round_trips_and_rejects_overflow():
    codec = paillier.make_codec(KEYPAIR[0], fraction_bits=8, headroom_bits=4)
    x = np.array([-3.5, 0.0, 1.25, 1000.0, -0.00390625])
    q = codec.quantize(x)
    np.testing.assert_allclose(codec.unpack(codec.pack(q), len(x), 1), x)
    with pytest.raises(ValueError, match="fraction_bits"):
        codec.quantize(np.array([2.0 ** 60]))
    with pytest.raises(ValueError, match="headroom_bits"):
        paillier.encrypted_sum(np.ones((20, 3)), *KEYPAIR, headroom_bits=4)


def test_paillier_aggregator_is_the_weighted_mean():
    rng = np.random.default_rng(7)
    updates = {"W": rng.normal(size=(4, 10, 3)).astype(np.float32), "b": rng.normal(size=(4, 3)).astype(np.float32)}
    weights = np.array([3.0, 0.0, 12.0, 5.0])
    agg_fn = paillier.paillier_aggregator(keypair=KEYPAIR)
    assert is_host_aggregator(agg_fn)
    mean, metrics = agg_fn(updates, weights, jax.random.key(0))
    for name in updates:
        expected = np.tensordot(weights, updates[name].astype(np.float64), 1) / weights.sum()
        np.testing.assert_allclose(mean[name], expected, atol=3 * 2.0 ** -17 / weights.sum() + 1e-6)
    assert metrics["paillier_ciphertexts"] == math.ceil((30 + 3 + 1) / 7)


# ---------------------------------------------------------------- membership inference

from fedlab.privacy import attacks  # noqa: E402


def test_attack_auc_counts_pairs():
    members, nonmembers = np.array([0.1, 0.2, 0.5]), np.array([0.3, 0.15, 0.05, 0.6])
    # AUC = P(member loss < nonmember loss), counted by hand over the 12 pairs
    wins = sum(m < n for m in members for n in nonmembers)
    scores = attacks.attack_from_losses(members, nonmembers)
    assert scores["auc"] == pytest.approx(wins / 12)
    assert attacks.attack_from_losses([0.0, 0.1], [1.0, 2.0]) == {"auc": 1.0, "advantage": 1.0}


def test_example_losses_are_per_example_cross_entropy():
    rng = np.random.default_rng(8)
    params = {"W": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32), "b": jnp.zeros(3)}
    x, y = rng.normal(size=(10, 6)).astype(np.float32), rng.integers(0, 3, 10)
    logits = x @ np.asarray(params["W"], np.float64)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(attacks.example_losses(MODEL, params, x, y), -log_softmax[np.arange(10), y],
                               rtol=1e-5)


# ---------------------------------------------------------------- end to end with the engine

import pandas as pd  # noqa: E402

import fedlab  # noqa: E402
from fedlab.cli import main as cli_main  # noqa: E402
from fedlab.privacy.paillier import encrypted  # noqa: E402
from fedlab.privacy.secagg import secure  # noqa: E402


@pytest.fixture(scope="module")
def fed_data():
    return fedlab.data.load_federated("synthetic:1,1", num_clients=12, seed=0)


@pytest.mark.parametrize("sampling", ["poisson"])   # fixed sampling: test_cli_dp_flags
def test_dp_run_history_epsilon_equals_dp_accounting(fed_data, sampling):
    z, m, rounds = 1.2, 4, 3
    s = dp(fedavg(client_lr=0.05), clip=0.5, clients_per_round=m, num_clients=12, sampling=sampling,
           noise_multiplier=z)
    h = fedlab.simulate(s, "logreg", fed_data, rounds=rounds, clients_per_round=m, sampling=sampling,
                        local_steps=2, progress=False)
    for r, eps in zip(h["round"], h["epsilon"]):
        if sampling == "poisson":
            acc = rdp.RdpAccountant()
            event = dp_accounting.PoissonSampledDpEvent(m / 12, dp_accounting.GaussianDpEvent(z))
        else:
            acc = rdp.RdpAccountant(neighboring_relation=REL.REPLACE_ONE)
            event = dp_accounting.SampledWithoutReplacementDpEvent(12, m, dp_accounting.GaussianDpEvent(z / 2))
        acc.compose(event, int(r))
        assert eps == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
    assert (h["clip"] == 0.5).all() and np.isfinite(h["train_loss"]).all()


RUN = dict(rounds=2, clients_per_round=4, local_steps=2, progress=False, seed=3)


@pytest.fixture(scope="module")
def plain_run(fed_data):
    return fedlab.simulate(fedavg(client_lr=0.05), "logreg", fed_data, **RUN)


@pytest.mark.parametrize("wrap", [lambda s: secure(s), lambda s: encrypted(s, keypair=KEYPAIR)])
def test_secure_and_paillier_runs_match_plain_fedavg(fed_data, plain_run, wrap):
    plain = plain_run
    private = fedlab.simulate(wrap(fedavg(client_lr=0.05)), "logreg", fed_data, **RUN)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(private.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)    # fixed point 2^-16..2^-20 plus float32 sums
    cost = "secagg_bytes" if "secagg_bytes" in private else "paillier_bytes"
    assert (private[cost] > 0).all()


def test_cli_dp_flags(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--dataset", "synthetic:1,1", "--clients", "12", "--rounds", "3", "--clients-per-round", "4",
            "--local-steps", "1", "--eval-every", "3", "--no-progress", "--out", str(out)]
    # a budget for the whole run: the calibrated noise spends it (to calibrate's tolerance) by the end
    assert cli_main(args + ["--sampling", "poisson", "--dp-epsilon", "5", "--dp-delta", "1e-5",
                            "--dp-clip", "1.0"]) == 0
    h = pd.read_csv(out / "history.csv")
    assert h["epsilon"].iloc[-1] == pytest.approx(
        _rdp_poisson(h["noise_multiplier"].iloc[0], 4 / 12, 3, 1e-5), rel=1e-9)
    assert 4.9 < h["epsilon"].iloc[-1] <= 5.0 and h["epsilon"].is_monotonic_increasing
    # a given noise multiplier with fixed sampling: epsilon reported
    assert cli_main(args + ["--sampling", "fixed", "--dp-noise-multiplier", "1.1", "--dp-clip", "1.0"]) == 0
    h = pd.read_csv(out / "history.csv")
    assert h["epsilon"].iloc[-1] == pytest.approx(
        accounting.epsilon(1.1, 4 / 12, 3, 1e-5, sampling="fixed", num_clients=12), rel=1e-9)
    capsys.readouterr()
    assert cli_main(args + ["--dp-epsilon", "0", "--dp-clip", "1.0"]) == 2
    assert "--dp-epsilon must be > 0" in capsys.readouterr().err
    assert cli_main(args + ["--dp-noise-multiplier", "1", "--dp-clip", "-1"]) == 2
    assert "--dp-clip must be > 0" in capsys.readouterr().err


@pytest.mark.slow
def test_privacy_notebook_runs():
    from conftest import execute_notebook

    nb = execute_notebook("04_privacy.ipynb")
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))


def test_epsilon_tracker_equals_composing_each_time():
    for sampling in ("poisson", "fixed"):
        spent = accounting.epsilon_tracker(0.9, 0.2, 1e-5, sampling=sampling, num_clients=20)
        for r in (0, 1, 7, 40):
            assert spent(r) == pytest.approx(
                accounting.epsilon(0.9, 0.2, r, 1e-5, sampling=sampling, num_clients=20), rel=1e-12)


def test_attack_handles_a_diverged_model():
    scores = attacks.attack_from_losses([np.nan, np.inf, 0.1], [1.0, 2.0, 3.0])
    assert scores["auc"] == pytest.approx(3 / 9)       # nan and inf rank as the largest losses


@pytest.mark.parametrize("run_kw, wrong", [(dict(clients_per_round=3), "clients_per_round=3"),
                                           (dict(sampling="fixed"), "sampling='fixed'")])
def test_simulate_refuses_a_dp_strategy_built_for_other_sampling(run_kw, wrong):
    """The accountant's amplification assumes dp()'s sampling; a run with other settings would
    report a wrong epsilon, so it is refused before any work."""
    from conftest import toy_data
    data = toy_data()
    s = dp(fedavg(), clip=1.0, clients_per_round=2, num_clients=data.num_clients, sampling="poisson",
           noise_multiplier=1.0)
    kw = {"clients_per_round": 2, "sampling": "poisson", **run_kw}
    with pytest.raises(ValueError, match=re.escape(wrong)):
        fedlab.simulate(s, "logreg", data, rounds=1, local_steps=1, progress=False, **kw)
    h = fedlab.simulate(s, "logreg", data, rounds=1, local_steps=1, progress=False, clients_per_round=2,
                        sampling="poisson")
    assert h["epsilon"].iloc[0] == pytest.approx(accounting.epsilon(1.0, 2 / data.num_clients, 1, 1e-5))
