"""Vertical FL: PSI alignment, SplitNN, SecureBoost (fedlab.vertical)."""
from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

from fedlab.models import mlp
from fedlab.vertical import (SecureBoostConfig, align_frames, batch_indices, fit_secureboost, hash_id,
                             predict_margin, predict_secureboost, psi_align, softmax_cross_entropy, splitnn,
                             splitnn_step, train_splitnn)

# ------------------------------------------------------------------ PSI


def _frames():
    rng = np.random.default_rng(0)
    a = pd.DataFrame({"id": rng.permutation(np.arange(0, 300)), "spend": rng.normal(size=300)})
    b = pd.DataFrame({"customer": [f"{i}" for i in rng.permutation(np.arange(150, 500))]})
    c = pd.DataFrame({"id": rng.permutation(np.arange(100, 260)), "late": rng.integers(0, 5, 160)})
    return {"platform": a, "bank": b, "logistics": c}, {"platform": "id", "bank": "customer", "logistics": "id"}


def test_psi_intersection_is_exact_and_rows_align():
    frames, cols = _frames()
    al = psi_align(frames, cols, key=jax.random.key(0))
    expected = set(range(150, 260))   # 0..299 & 150..499 & 100..259
    assert al.num_shared == len(expected)
    ids = {p: frames[p][cols[p]].iloc[al.rows[p]].astype(str).to_numpy() for p in frames}
    assert set(ids["platform"].astype(int)) == expected
    np.testing.assert_array_equal(ids["platform"], ids["bank"])
    np.testing.assert_array_equal(ids["platform"], ids["logistics"])
    assert np.all(np.diff(al.rows["platform"]) > 0)          # leader's row order
    aligned = align_frames(frames, al)
    assert {len(f) for f in aligned.values()} == {len(expected)}
    # same key -> same transcript; the OS-random default finds the same intersection
    again = psi_align(frames, cols, key=jax.random.key(0))
    assert again.transcript[0].payload == al.transcript[0].payload
    secure = psi_align(frames, cols)
    assert all(np.array_equal(secure.rows[p], al.rows[p]) for p in frames)


def test_psi_messages_reveal_no_raw_or_hashed_non_shared_id():
    frames, cols = _frames()
    al = psi_align(frames, cols, key=jax.random.key(1))
    shared = set(frames["platform"]["id"].iloc[al.rows["platform"]].astype(str))
    non_shared = {str(v) for p in frames for v in frames[p][cols[p]]} - shared
    forbidden = set()
    for v in non_shared:
        raw = v.encode()
        forbidden |= {raw, hash_id(v), hashlib.sha256(raw).digest(), hashlib.sha512(raw).digest()[:32],
                      hashlib.md5(raw).digest(), hashlib.sha256(raw).hexdigest().encode()}
    sent = []
    for msg in al.transcript:
        if msg.name == "aligned_positions":
            assert len(msg.payload) == al.num_shared     # only shared rows, as positions
            continue
        assert all(isinstance(m, bytes) and len(m) == 32 for m in msg.payload)
        sent += msg.payload
    assert not forbidden & set(sent)
    blob = b"".join(sent)
    assert not any(f in blob for f in forbidden if len(f) >= 16)
    # a blinded value is not the hash of any ID at all, shared or not
    all_hashes = {hash_id(v) for v in non_shared | shared}
    assert not all_hashes & set(sent)


def test_psi_bad_inputs():
    a = pd.DataFrame({"id": [1, 2, 3]})
    with pytest.raises(ValueError, match="share no IDs"):
        psi_align({"a": a, "b": pd.DataFrame({"id": [7, 8]})}, "id", key=jax.random.key(0))
    with pytest.raises(ValueError, match="duplicate IDs"):
        psi_align({"a": a, "b": pd.DataFrame({"id": [1, 1]})}, "id", key=jax.random.key(0))
    with pytest.raises(ValueError, match="no ID column"):
        psi_align({"a": a, "b": pd.DataFrame({"x": [1]})}, "id")
    with pytest.raises(ValueError, match="at least two"):
        psi_align({"a": a}, "id")


# ------------------------------------------------------------------ SplitNN


def _split_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 7)).astype(np.float32)
    y = (x[:, 0] - x[:, 4] + 0.5 * x[:, 6] > 0).astype(np.int32)
    return [x[:, :3], x[:, 3:5], x[:, 5:]], y


def test_splitnn_equals_centralized_training_of_composed_model():
    parts, y = _split_data()
    bottoms = [mlp((p.shape[1],), 4, hidden=(8,)) for p in parts]
    top = mlp((12,), 2, hidden=(6,))
    opt = optax.adam(0.02)
    model = splitnn(bottoms, top, softmax_cross_entropy, opt, cut_activation=jax.nn.relu)
    state = model.init(jax.random.key(3))

    # independent centralized reference: one model, one optimizer, on the joined features
    def composed(params, xs):
        hs = [jax.nn.relu(b.apply(p, x)) for b, p, x in zip(bottoms, params[0], xs)]
        return top.apply(params[1], jnp.concatenate(hs, -1))

    @jax.jit
    def central_step(params, opt_state, xs, yb):
        grads = jax.grad(lambda p: jnp.mean(softmax_cross_entropy(composed(p, xs), yb)))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params = (state.bottom_params, state.top_params)
    opt_state = opt.init(params)
    for step, idx in enumerate(batch_indices(jax.random.key(4), len(y), 40, 5)):
        xs = [p[idx] for p in parts]
        state, loss, exchange = splitnn_step(model, state, xs, y[idx], jax.random.key(step))
        params, opt_state = central_step(params, opt_state, xs, y[idx])
        assert [h.shape for h in exchange["activations"]] == [(len(idx), 4)] * 3
        assert [g.shape for g in exchange["gradients"]] == [(len(idx), 4)] * 3
    # both sides run the same float32 ops (only XLA fusion may differ): 15 Adam steps of size
    # <= lr = 0.02 bound any drift far below 1e-5 (observed: 0)
    for a, b in zip(jax.tree.leaves((state.bottom_params, state.top_params)), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    start = model.init(jax.random.key(3))
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params),
                                                            jax.tree.leaves((start.bottom_params, start.top_params))))
    assert moved > 0.05   # training did change the weights


def test_splitnn_noise_is_added_to_sent_activations_only():
    parts, y = _split_data()
    bottoms = [mlp((p.shape[1],), 4, hidden=(8,)) for p in parts]
    model = splitnn(bottoms, mlp((12,), 2, hidden=(6,)), softmax_cross_entropy, optax.sgd(0.1), noise_std=0.5)
    state = model.init(jax.random.key(0))
    _, _, exchange = splitnn_step(model, state, parts, y, jax.random.key(1))
    clean = [b.apply(p, x) for b, p, x in zip(bottoms, state.bottom_params, parts)]
    noise = np.concatenate([np.asarray(h - c).ravel() for h, c in zip(exchange["activations"], clean)])
    # 1440 N(0, 0.25) draws: the sample std is within 0.5 * (1 +- 4/sqrt(2 * 1440)) w.h.p.
    assert abs(noise.std() - 0.5) < 0.5 * 4 / np.sqrt(2 * noise.size)
    state, hist = train_splitnn(model, parts, y, epochs=30, batch_size=40, key=jax.random.key(2),
                                eval_data=(parts, y), metric=lambda o, t: float((o.argmax(1) == t).mean()))
    assert list(hist.columns) == ["epoch", "train_loss", "metric"] and len(hist) == 30
    assert hist.train_loss.iloc[-1] < hist.train_loss.iloc[0]


def test_splitnn_bad_inputs():
    parts, y = _split_data()
    model = splitnn([mlp((3,), 2), mlp((2,), 2), mlp((2,), 2)], mlp((6,), 2), softmax_cross_entropy, optax.sgd(0.1))
    with pytest.raises(ValueError, match="align the parties"):
        train_splitnn(model, [parts[0][:-1], parts[1], parts[2]], y, epochs=1, batch_size=8, key=jax.random.key(0))
    with pytest.raises(ValueError, match=">= 1 feature"):
        train_splitnn(model, [parts[0], parts[1][:, :0], parts[2]], y, epochs=1, batch_size=8, key=jax.random.key(0))
    with pytest.raises(ValueError, match="noise_std"):
        splitnn([mlp((3,), 2)], mlp((2,), 2), softmax_cross_entropy, optax.sgd(0.1), noise_std=-1.0)
    with pytest.raises(ValueError, match="bottoms"):
        splitnn([], mlp((2,), 2), softmax_cross_entropy, optax.sgd(0.1))


# ------------------------------------------------------------------ SecureBoost


def _cancer(rows=None):
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    # XGBoost stores features as float32; give both learners the same values
    x = x.astype(np.float32).astype(np.float64)
    return (x, y.astype(np.float64)) if rows is None else (x[:rows], y[:rows].astype(np.float64))


def _vertical(x):
    """Guest: 10 'mean' features; host 0: 10 'error' features; host 1: 10 'worst' features."""
    return x[:, :10], [x[:, 10:20], x[:, 20:]]


@pytest.fixture(scope="module")
def encrypted_runs():
    x, y = _cancer(120)
    guest, hosts = _vertical(x)
    guest, hosts = guest[:, :4], [hosts[0][:, :3], hosts[1][:, :3]]
    runs = {}
    for encrypt, packing, compress in [(False, True, True), (True, True, True), (True, False, True), (True, True, False)]:
        cfg = SecureBoostConfig(num_trees=2, max_depth=3, max_bin=8, learning_rate=0.3, encrypt=encrypt,
                                packing=packing, compress=compress, key_size=1024, insecure_test_key=True)
        model = fit_secureboost(guest, y, hosts, cfg, key=jax.random.key(0))
        runs[(encrypt, packing, compress)] = model, predict_secureboost(model, guest, hosts)
    return runs, (guest, y, hosts)


def test_secureboost_encryption_is_lossless(encrypted_runs):
    runs, _ = encrypted_runs
    plain_model, plain_pred = runs[(False, True, True)]
    assert any((t.party >= 1).any() for t in plain_model.trees)   # hosts do win splits
    for (encrypt, packing, compress), (model, pred) in runs.items():
        for t1, t2 in zip(plain_model.trees, model.trees):
            for a, b in zip(t1, t2):
                np.testing.assert_array_equal(a, b)
        assert [h.records for h in model.hosts] == [h.records for h in plain_model.hosts]
        np.testing.assert_array_equal(pred, plain_pred)
        if encrypt:   # ciphertexts per candidate message: one per candidate, or one per
            slots = (1022 // 128 if packing else 1022 // 64) if compress else 1   # `slots` (1024-bit n)
            for msg in model.transcript:
                if msg.name.endswith("split_candidates"):
                    assert len(msg.payload["sums"]) == (1 if packing else 2)
                    assert len(msg.payload["sums"][0]) == -(-len(msg.payload["opaque_id"]) // slots)


def test_secureboost_guest_never_receives_host_features(encrypted_runs):
    import phe

    runs, (guest, y, hosts) = encrypted_runs
    model, _ = runs[(True, True, True)]
    host_values = set(np.concatenate([h.ravel() for h in hosts]).tolist())
    host_values |= {t for h in model.hosts for _, t in h.records}
    received = [m for m in model.transcript if m.receiver == "guest"]
    assert {m.name.split("/")[-1] for m in received} == {"split_candidates", "split_rows"}
    for msg in received:
        if msg.name.endswith("split_candidates"):
            assert set(msg.payload) == {"slot", "opaque_id", "sums"}
            assert msg.payload["slot"].dtype.kind == "i" and msg.payload["opaque_id"].dtype.kind == "i"
            assert all(isinstance(c, phe.EncryptedNumber) for s in msg.payload["sums"] for c in s)
        else:
            assert isinstance(msg.payload["record_id"], int) and msg.payload["goes_left"].dtype == bool
    # the guest's trees name host splits only by (party, record id), with no threshold
    for tree in model.trees:
        host_nodes = tree.party >= 1
        assert np.isnan(tree.threshold[host_nodes]).all()
        assert not set(tree.threshold[~np.isnan(tree.threshold)].tolist()) & (host_values - set(guest.ravel().tolist()))
    # what the hosts answer at prediction time: booleans
    assert all(h.decisions(x).dtype == bool for h, x in zip(model.hosts, hosts))


def _xgb(objective, trees, depth, lr, max_bin, base_score):
    xgb = pytest.importorskip("xgboost")
    cls = xgb.XGBClassifier if objective == "binary" else xgb.XGBRegressor
    return cls(n_estimators=trees, max_depth=depth, learning_rate=lr, max_bin=max_bin, tree_method="hist",
               reg_lambda=1.0, min_child_weight=1.0, gamma=0.0, base_score=base_score, n_jobs=1)


@pytest.mark.parametrize("objective", ["binary", "regression"])
def test_secureboost_matches_xgboost_with_exact_bins(objective):
    """With max_bin above every feature's distinct count both learners split on every value,
    and with the hosts' candidates in feature order, ties between equally good splits break
    as in XGBoost (the guest's columns first, then host 0's, host 1's), so the trees are the
    same: margins agree up to XGBoost's float32 gradient sums (relative 1e-7 per leaf,
    10 trees -> < 1e-5)."""
    x, y = _cancer()
    if objective == "regression":
        y = x[:, 0] * 0.1 + x[:, 12]       # a smooth target made of guest and host columns
    guest, hosts = _vertical(x)
    cfg = SecureBoostConfig(objective=objective, num_trees=10, max_depth=3, learning_rate=0.3, max_bin=1024,
                            encrypt=False, shuffle_candidates=False)
    model = fit_secureboost(guest, y, hosts, cfg, key=jax.random.key(0))
    ref = _xgb(objective, 10, 3, 0.3, 1024, float(y.mean())).fit(x, y)
    np.testing.assert_allclose(predict_margin(model, guest, hosts), ref.predict(x, output_margin=True),
                               atol=1e-5 * max(1.0, float(np.abs(y).max())))


def test_secureboost_accuracy_and_auc_within_one_percent_of_xgboost():
    """Binned regime (max_bin = 32 < distinct values): the two quantile sketches pick slightly
    different cuts, so trees differ. Scored on 5-fold out-of-fold predictions of all 569 rows
    (accuracy resolution 1/569 = 0.18%), both stay within 1 point of each other."""
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    x, y = _cancer()
    ours, ref = np.zeros(len(y)), np.zeros(len(y))
    cfg = SecureBoostConfig(num_trees=20, max_depth=3, learning_rate=0.3, max_bin=32, encrypt=False)
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        guest, hosts = _vertical(x[train])
        model = fit_secureboost(guest, y[train], hosts, cfg, key=jax.random.key(0))
        guest, hosts = _vertical(x[test])
        ours[test] = predict_secureboost(model, guest, hosts)
        ref[test] = _xgb("binary", 20, 3, 0.3, 32, float(y[train].mean())).fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    assert abs(accuracy_score(y, ours > 0.5) - accuracy_score(y, ref > 0.5)) <= 0.01
    assert abs(roc_auc_score(y, ours) - roc_auc_score(y, ref)) <= 0.01
    assert roc_auc_score(y, ours) > 0.97


def test_secureboost_bad_inputs():
    x, y = _cancer(60)
    guest, hosts = _vertical(x)
    with pytest.raises(ValueError, match="key_size must be >= 2048"):
        SecureBoostConfig(key_size=1024)
    with pytest.raises(ValueError, match="max_depth"):
        SecureBoostConfig(max_depth=0)
    with pytest.raises(ValueError, match="learning_rate"):
        SecureBoostConfig(learning_rate=0.0)
    cfg = SecureBoostConfig(encrypt=False)
    with pytest.raises(ValueError, match="align the parties"):
        fit_secureboost(guest, y, [hosts[0][:-1], hosts[1]], cfg, key=jax.random.key(0))
    with pytest.raises(ValueError, match=">= 1 feature"):
        fit_secureboost(guest, y, [hosts[0][:, :0]], cfg, key=jax.random.key(0))
    with pytest.raises(ValueError, match="at least one host"):
        fit_secureboost(guest, y, [], cfg, key=jax.random.key(0))
    with pytest.raises(ValueError, match="only 0 and 1"):
        fit_secureboost(guest, y * 2, hosts, cfg, key=jax.random.key(0))
