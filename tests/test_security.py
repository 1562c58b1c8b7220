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
from fedlab.algorithms.fedavg import fedavg
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


# ---- in the compiled round: one full-batch round of FedAvg by hand ------------------------------
def one_round(strategy, data, **kw):
    """One round, every client, one full-batch GD step each (lr 0.5) from zero weights."""
    kw = {"rounds": 1, "local_epochs": 1, "batch_size": 64, "progress": False, **kw}
    return fedlab.simulate(strategy, "logreg", data, **kw)


def client_deltas(data, lr=0.5, labels=None, xs=None):
    """[clients, d] deltas -lr * grad of each client at zero weights (W then b, as the engine flattens)."""
    from test_algorithms import softmax_grads

    if labels is not None or xs is not None:
        train = [(xs[k] if xs is not None else data.client(k)[0], labels[k] if labels is not None else data.client(k)[1])
                 for k in range(data.num_clients)]
        data = fedlab.FederatedDataset.from_clients("edited", train, train, data.num_classes)
    W = np.zeros((data.num_features, data.num_classes))
    b = np.zeros(data.num_classes)
    return np.stack([np.concatenate([-lr * gW.ravel(), -lr * gb]) for gW, gb, _ in softmax_grads(data, W, b)])


def flat_params(params):
    return np.concatenate([np.asarray(params["W"]).ravel(), np.asarray(params["b"])])


def test_robust_median_in_the_round_with_padding_slots():
    data = toy_data(num_clients=6)
    strategy = robust(fedavg(client_lr=0.5), "median")
    h = one_round(strategy, data, chunk_size=4)          # 8 slots for 6 clients: 2 padding slots
    np.testing.assert_allclose(flat_params(h.params), np.median(client_deltas(data), axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["sign_flip", "scale:3", "gaussian:0", "alie"])
def test_model_poisoning_in_the_round(spec):
    data = toy_data(num_clients=8)
    ids = [1, 4, 6]
    h = one_round(attack(fedavg(client_lr=0.5), spec, attackers=ids, num_clients=8), data)
    deltas = client_deltas(data)
    n = data.train_counts.astype(np.float64)
    sent = deltas.copy()
    att = np.isin(np.arange(8), ids)
    if spec == "sign_flip":
        sent[att] *= -1
    elif spec == "scale:3":
        sent[att] *= 3
    elif spec == "gaussian:0":               # N(0, 0): the same code path as free_rider, and exact
        sent[att] = 0
    else:
        s = np.floor(8 / 2 + 1) - 3
        z = norm.ppf((8 - s) / 8)
        sent[att] = deltas[~att].mean(0) + z * deltas[~att].std(0)
        assert h["alie_z"].iloc[0] == pytest.approx(z, rel=1e-5)
    np.testing.assert_allclose(flat_params(h.params), (n[:, None] * sent).sum(0) / n.sum(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", ["label_flip", "backdoor:2,1,3"])
def test_data_poisoning_in_the_round(spec):
    data = toy_data(num_clients=6)
    ids = [0, 3]
    trigger = np.array([5.0, -5.0], np.float32)
    h = one_round(attack(fedavg(client_lr=0.5), spec, attackers=ids, num_clients=6,
                         num_classes=3, trigger_value=trigger), data)
    xs = [data.client(k)[0].copy() for k in range(6)]
    ys = [data.client(k)[1].copy() for k in range(6)]
    for k in ids:
        if spec == "label_flip":
            ys[k] = 2 - ys[k]
        else:
            xs[k][:, -2:] = trigger
            ys[k][:] = 2
    n = data.train_counts.astype(np.float64)
    sent = client_deltas(data, xs=xs, labels=ys)
    if spec.endswith(",3"):                  # boosted: model replacement
        sent[ids] *= 3
    expected = (n[:, None] * sent).sum(0) / n.sum()
    np.testing.assert_allclose(flat_params(h.params), expected, rtol=1e-4, atol=1e-6)


def test_backdoor_accuracy_counts_triggered_non_target_test_rows():
    data = toy_data(num_clients=4)
    model = fedlab.MODELS["logreg"].factory(data.input_shape, 3)
    params = {"W": np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
    trigger = np.array([3.0], np.float32)
    got = fedlab.security.backdoor_evaluator(model, data, "backdoor:1", trigger)(params)["backdoor_accuracy"]
    keep = data.y_test != 1
    x = data.x_test[keep].copy()
    x[:, -1] = 3.0
    assert got == pytest.approx(np.mean(np.argmax(x @ params["W"], 1) == 1))


def test_experiment_attack_defense_history_and_run_dir(tmp_path):
    e = fedlab.Experiment(dataset="digits", num_clients=10, clients_per_round=10, rounds=2, attack="backdoor:7",
                          attackers=0.3, defense="norm_clip:0.5", local_steps=2, batch_size=16)
    h = e.run(out=tmp_path / "run", progress=False)
    assert h.attackers == attacker_ids(10, 0.3, 0).tolist() and len(h.attackers) == 3
    assert h.attackers == sorted(set(h.attackers))
    assert "backdoor_accuracy" in h and h["backdoor_accuracy"].between(0, 1).all()
    assert "defense_clipped" in h
    assert import_json(tmp_path / "run" / "run.json")["attackers"] == h.attackers
    assert "backdoor_accuracy" in open(tmp_path / "run" / "history.csv").readline()
    # a different seed draws other attackers; the draw is fixed by the seed
    assert attacker_ids(10, 0.3, 1).tolist() != h.attackers and attacker_ids(10, 0.3, 0).tolist() == h.attackers


def import_json(path):
    import json

    return json.loads(open(path).read())


@pytest.mark.parametrize("changes, message", [
    ({"attack": "sign_flip", "attackers": 1.0}, "attackers must be in [0, 1)"),
    ({"attack": "sign_flip", "attackers": -0.1}, "attackers must be in [0, 1)"),
    ({"attack": "sign_flip", "attackers": float("nan")}, "attackers must be a finite number"),
    ({"attackers": 0.2}, "attackers: give an attack"),
    ({"attack": "sign_flop", "attackers": 0.2}, "attack: unknown kind 'sign_flop'"),
    ({"attack": "scale:inf", "attackers": 0.2}, "FACTOR of scale must be a finite number"),
    ({"attack": "backdoor:0,1.5", "attackers": 0.2}, "FRACTION must be in (0, 1]"),
    ({"attack": "backdoor:0,0.5,0", "attackers": 0.2}, "BOOST must be > 0"),
    ({"defense": "krum:x"}, "F of krum must be an integer"),
    ({"defense": "trimmed_mean:0.7"}, "beta (defense trimmed_mean) must be in [0, 0.5)"),
    ({"compress": "topk:0"}, "compress: topk FRACTION must be in (0, 1]"),
    ({"compress": "topk:1.5"}, "compress: topk FRACTION must be in (0, 1]"),
    ({"compress_down": "zip"}, "compress_down: unknown kind 'zip'"),
    ({"compress": "qsgd:0"}, "qsgd LEVELS must be an integer in [1, 32767]"),
    ({"error_feedback": True}, "error_feedback: needs an uplink compression"),
    ({"defense": "median", "privacy": fedlab.Privacy(noise_multiplier=1.0)}, "defense: robust aggregation does not compose"),
    ({"attack": "scale", "attackers": 0.1, "privacy": fedlab.Privacy(noise_multiplier=1.0)}, "model poisoning with privacy"),
])
def test_bad_security_and_compression_settings(changes, message):
    with pytest.raises(ValueError) as err:
        fedlab.Experiment(**changes)
    assert message in str(err.value)


def test_krum_f_too_large_for_the_clients_per_round_fails_at_build():
    e = fedlab.Experiment(dataset="digits", num_clients=10, clients_per_round=6, defense="krum:2")
    with pytest.raises(ValueError, match=r"krum:2 needs at least 7 clients per round .* got clients_per_round=6"):
        e.build()


def test_fltrust_trust_scores_and_rescaling_by_hand():
    """Sign-flipping attackers get trust 0; the others are rescaled to ||g0|| and trust-weighted."""
    data = toy_data(num_clients=6)
    x0, y0 = data.client(2)
    root_x, root_y = x0[:5], y0[:5]
    strategy = attack(fedlab.security.fltrust(fedavg(client_lr=0.5), fedlab.MODELS["logreg"].factory((5,), 3),
                                              root_x, root_y, batch_size=8),
                      "sign_flip", attackers=[0, 4], num_clients=6)
    h = one_round(strategy, data)
    g = client_deltas(data)
    g[[0, 4]] *= -1
    root = fedlab.FederatedDataset.from_clients("root", [(root_x, root_y)], [(root_x, root_y)], 3)
    g0 = client_deltas(root)[0]
    cos = g @ g0 / (np.linalg.norm(g, axis=1) * np.linalg.norm(g0))
    trust = np.maximum(cos, 0)
    assert trust[0] == 0 and trust[4] == 0 and (trust > 0).sum() >= 3
    expected = (trust[:, None] * g * (np.linalg.norm(g0) / np.linalg.norm(g, axis=1))[:, None]).sum(0) / trust.sum()
    np.testing.assert_allclose(flat_params(h.params), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="fltrust needs the server's root data"):
        robust(fedavg(), "fltrust")
    with pytest.raises(ValueError, match="fltrust:5000 needs 5000 clean root rows"):
        fedlab.Experiment(dataset="digits", num_clients=10, defense="fltrust:5000").build()
