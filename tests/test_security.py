"""Robust aggregation and attacks against independent computations: each defense against a plain
NumPy loop over the participants (Krum scores by the n - f - 2 nearest neighbours, as Blanchard et
al. and Flower define them), with padding and dropped clients holding garbage; attacks by their
effect on what the server receives."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

import fedlab
from conftest import toy_data
from fedlab.security import attack, attacker_ids, make_defense, robust
from fedlab.security.attacks import alie_rows, alie_z


# ---- an independent NumPy reference (loops over the participants, float64) ---------------------
def krum_scores_np(rows, f):
    n = len(rows)
    d = np.array([[np.sum((a - b) ** 2) for b in rows] for a in rows])
    closest = max(1, n - f - 2)
    return np.array([np.sort(np.delete(d[i], i))[:closest].sum() for i in range(n)])


def reference(kind, options, x, weights):
    take = weights > 0
    x, w = x[take].astype(np.float64), weights[take].astype(np.float64)
    m = len(x)
    if kind == "median":
        return np.median(x, axis=0)
    if kind == "trimmed_mean":
        b = int(np.floor(options[0] * m))
        return np.sort(x, axis=0)[b:m - b].mean(axis=0)
    if kind in ("krum", "multikrum"):
        keep = 1 if kind == "krum" else min(options[1], m)
        best = np.argsort(krum_scores_np(x, options[0]), kind="stable")[:keep]
        return (x[best] * w[best, None]).sum(0) / w[best].sum()
    if kind == "bulyan":
        f = options[0]
        left, chosen = list(range(m)), []
        while len(chosen) < m - 2 * f:
            i = left[int(np.argmin(krum_scores_np(x[left], f)))]
            chosen.append(i)
            left.remove(i)
        sel = x[chosen]
        med = np.median(sel, axis=0)
        idx = np.argsort(np.abs(sel - med), axis=0, kind="stable")[:len(chosen) - 2 * f]
        return np.take_along_axis(sel, idx, axis=0).mean(axis=0)
    if kind == "norm_clip":
        norms = np.linalg.norm(x, axis=1)
        clipped = x * np.minimum(1.0, options[0] / norms)[:, None]
        return (clipped * w[:, None]).sum(0) / w.sum()
    raise AssertionError(kind)


def rounds_of_updates(seed, slots=16, d=7):
    """A round's stacked rows: honest clusters, a few outliers, and non-participants with NaN/huge values."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (slots, d)).astype(np.float32)
    x[:3] += rng.normal(0, 20.0, (3, d)).astype(np.float32)          # outliers among participants
    weights = rng.integers(1, 20, slots).astype(np.float32)
    weights[rng.choice(slots, size=int(rng.integers(1, 5)), replace=False)] = 0.0   # dropped / padding
    x[weights == 0] = np.where(rng.random((int((weights == 0).sum()), d)) < 0.5, np.nan, 1e30)
    return x, weights


@pytest.mark.parametrize("spec, kind, options", [
    ("median", "median", []), ("trimmed_mean:0.2", "trimmed_mean", [0.2]), ("krum:2", "krum", [2]),
    ("multikrum:2,4", "multikrum", [2, 4]), ("bulyan:2", "bulyan", [2]), ("norm_clip:1.5", "norm_clip", [1.5]),
])
def test_defense_matches_numpy_on_masked_rounds(spec, kind, options):
    """Several rounds with different numbers of participants, one compiled function."""
    defense = make_defense(spec)
    agg = jax.jit(defense.aggregate)
    for seed in range(4):
        x, w = rounds_of_updates(seed)
        got, metrics = agg(jnp.asarray(x), jnp.asarray(w))
        np.testing.assert_allclose(np.asarray(got), reference(kind, options, x, w), rtol=2e-5, atol=2e-5)
        assert all(np.isfinite(float(v)) for v in metrics.values())


def test_krum_picks_the_honest_cluster_and_bulyan_needs_4f_plus_3():
    x = np.zeros((7, 3), np.float32)
    x[:5] = np.random.default_rng(0).normal(0, 0.1, (5, 3))
    x[5:] = 100.0
    got, _ = make_defense("krum:2").aggregate(jnp.asarray(x), jnp.ones(7))
    assert np.abs(np.asarray(got)).max() < 1
    with pytest.raises(ValueError, match="at least 11 clients per round"):
        fedlab.security.check_clients(make_defense("bulyan:2"), 10)


@pytest.mark.parametrize("spec, message", [
    ("krum:-1", "f (defense krum) must be an integer >= 0"), ("trimmed_mean:0.5", "must be in [0, 0.5)"),
    ("norm_clip:nan", "finite number"), ("mediam", "unknown kind 'mediam'"), ("krum:1,2", "at most 1 option"),
    ("multikrum:1,0", "m (defense multikrum) must be an integer >= 1"),
])
def test_bad_defense_specs(spec, message):
    with pytest.raises(ValueError) as err:
        make_defense(spec)
    assert message in str(err.value)


def test_alie_rows_and_z_from_the_paper():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 5)).astype(np.float32)
    take = np.ones(12, bool)
    take[-2:] = False
    att = np.zeros(12, bool)
    att[[0, 3]] = True
    rows, z = alie_rows(jnp.asarray(x), jnp.asarray(take), jnp.asarray(att))
    n, m = 10, 2
    s = np.floor(n / 2 + 1) - m
    assert float(z) == pytest.approx(norm.ppf((n - s) / n), rel=1e-5)
    honest = x[take & ~att]
    np.testing.assert_allclose(np.asarray(rows)[att], np.tile(honest.mean(0) + float(z) * honest.std(0), (2, 1)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(rows)[~att], x[~att])
    # the paper's example sizes: n = 50 workers, m = 12 corrupted -> s = 14, z = Phi^-1(0.72)
    assert float(alie_z(50.0, 12.0)) == pytest.approx(norm.ppf(36 / 50), rel=1e-5)
