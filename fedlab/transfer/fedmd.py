"""FedMD (Li & Wang 2019, "FedMD: Heterogenous Federated Learning via Model Distillation"): parties
whose models have different architectures learn from each other through their class scores on a
public dataset; no model parameter ever leaves a party.

    exp = fedlab.Experiment(dataset="digits", algorithm="fedmd", models=("logreg", "mlp", "cnn"),
                            public="holdout:0.8", rounds=10, local_epochs=2)
    history = exp.run()         # test_accuracy: mean of the parties' accuracies; party_0_acc, ...

The protocol (the paper's Algorithm 1), for parties k = 0..K-1 with architecture
``models[k % len(models)]`` (round-robin):

    transfer learning: each party trains on the public set (``public_epochs``), then on its own
                       private rows (``private_epochs``)
    every round r:     a subset of the public rows (``public_rows``; 0 = all, else drawn from the seed)
      communicate      each party sends its class scores f_k(x_pub): [rows, classes] logits
      aggregate        consensus = mean over the parties of the scores
      digest           each party fits the consensus: ``digest_steps`` mini-batch steps of the L1
                       distance between its logits and the consensus (the paper's choice: the
                       Keras models of the authors' code minimise the mean absolute error of the
                       logits); ``digest_loss="kl"``: KL(softmax(consensus) || softmax(f_k))
      revisit          each party trains on its private rows (the Experiment's local_steps or
                       local_epochs; default 1 epoch)

Parties of one architecture are stacked and vmapped; each architecture group's functions are
jitted once. Every phase starts the optimizer afresh (optax; adam or sgd) and draws its
mini-batches with replacement. Keys flow in the open: with root = key(seed), party k's initial
model uses fold_in(fold_in(root, 1), k), its public transfer fold_in(fold_in(root, 2), k), its
private transfer fold_in(fold_in(root, 3), k); round r uses rk = fold_in(fold_in(root, 4), r):
the public subset fold_in(rk, 0), party k's digest fold_in(fold_in(rk, 1), k) and revisit
fold_in(fold_in(rk, 2), k); step s of a phase draws its batch with fold_in(phase_key, s). So the
result does not depend on how parties are grouped, and the same seed gives the same History.

Bytes: each party sends rows x classes float32 scores and receives the consensus of the same
size (bytes_up = bytes_down = K x rows x classes x 4 per round); the public subset's row indices
come from the shared seed and are not sent.

Public set specs: a registered dataset spec (``digits``, ``synthetic_iid``, ...: all its rows with
labels; the private dataset itself is refused, use holdout) or ``holdout:FRAC``: a seeded FRAC of
every party's training rows moves to the public set (the parties keep the rest; test rows stay).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from fedlab.core.checks import check_int, check_number
from fedlab.core.registry import MODELS, register_algorithm
from fedlab.core.types import Batch, Model

DIGEST_LOSSES = ("l1", "kl")
OPTIMIZERS = ("adam", "sgd")
# settings of the Experiment that FedMD does not use (name -> is it set?)
_NOT_FOR_FEDMD = {
    "privacy": lambda e: e.privacy is not None, "attack": lambda e: e.attack is not None,
    "defense": lambda e: e.defense is not None, "compress": lambda e: e.compress is not None,
    "compress_down": lambda e: e.compress_down is not None, "holdout_clients": lambda e: e.holdout_clients > 0,
    "finetune_steps": lambda e: e.finetune_steps > 0, "stragglers": lambda e: e.stragglers > 0,
    "sampling": lambda e: e.sampling is not None, "devices": lambda e: e.devices not in (1, "auto"),
    "client_weighting": lambda e: e.client_weighting != "size", "corrupt": lambda e: bool(e.corrupt),
    "client_data": lambda e: e.resolved_client_data == "generated", "eval_clients": lambda e: e.eval_clients is not None,
}


class Protocol(NamedTuple):
    """FedMD's knobs, as ``fedmd(...)`` returns them (``run`` executes the protocol)."""

    name: str
    optimizer: optax.GradientTransformation
    public_epochs: int
    private_epochs: int
    digest_steps: int
    public_rows: int
    digest_loss: str


@register_algorithm("fedmd")
def fedmd(*, client_lr: float = 0.01, optimizer: str = "adam", public_epochs: int = 5, private_epochs: int = 10,
          digest_steps: int = 50, public_rows: int = 0, digest_loss: str = "l1") -> Protocol:
    """FedMD (Li & Wang 2019): heterogeneous parties distil a consensus of class scores on a public set."""
    client_lr = check_number("client_lr", client_lr, 0, low_open=True)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    if digest_loss not in DIGEST_LOSSES:
        raise ValueError(f"digest_loss must be one of {list(DIGEST_LOSSES)}, got {digest_loss!r}")
    for name, value in (("public_epochs", public_epochs), ("private_epochs", private_epochs),
                        ("digest_steps", digest_steps), ("public_rows", public_rows)):
        check_int(name, value, 0)
    opt = optax.adam(client_lr) if optimizer == "adam" else optax.sgd(client_lr)
    return Protocol("fedmd", opt, public_epochs, private_epochs, digest_steps, public_rows, digest_loss)


# ---- settings (called by Experiment.validate) ---------------------------------------------------
def parse_public(spec) -> str:
    """The canonical public spec: 'holdout:FRAC' (0 < FRAC < 1) or a registered dataset spec."""
    from fedlab.core.experiment import parse_spec, spec_of

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"public must be a dataset spec (e.g. 'digits') or holdout:FRAC (e.g. 'holdout:0.3'), "
                         f"got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    if name == "holdout":
        try:
            fraction = float(rest)
        except ValueError:
            fraction = math.nan
        if not 0 < fraction < 1:                  # NaN fails too
            raise ValueError(f"public: holdout:FRAC needs a fraction in (0, 1) of each party's training rows, "
                             f"got {spec!r}")
        return f"holdout:{fraction:g}"
    try:
        name, options = parse_spec("dataset", spec.strip())
    except ValueError as err:
        raise ValueError(f"public: {str(err).removeprefix('dataset: ')} (or holdout:FRAC)") from None
    return spec_of("dataset", name, options)


def check_settings(experiment) -> None:
    """FedMD's checks that need no data; stores ``models`` as a tuple and ``public`` canonically."""
    set_ = functools.partial(object.__setattr__, experiment)
    if experiment.algorithm != "fedmd":
        for name in ("models", "public"):
            if getattr(experiment, name) is not None:
                raise ValueError(f"{name}: applies to algorithm 'fedmd' only (parties with their own architectures "
                                 f"and a public set), got algorithm {experiment.algorithm!r}")
        return
    models = experiment.models
    if models is not None:
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",")]
        if not isinstance(models, (list, tuple)) or not models or not all(isinstance(m, str) and m for m in models):
            raise ValueError(f"models must be registered model names (e.g. 'logreg,mlp,cnn'), got {experiment.models!r}")
        for name in models:
            if name not in MODELS:
                raise ValueError(f"models: unknown architecture {name!r}; choose from {MODELS.names()}")
        set_("models", tuple(models))
    if experiment.public is None:
        raise ValueError("public: fedmd needs a public dataset: a dataset spec (e.g. 'digits') or holdout:FRAC "
                         "(e.g. 'holdout:0.3')")
    set_("public", parse_public(experiment.public))
    for name, is_set in _NOT_FOR_FEDMD.items():
        if is_set(experiment):
            raise ValueError(f"{name} does not apply to algorithm 'fedmd' (every party takes part in every round "
                             f"and sends only class scores); leave it at its default")


def architectures(experiment) -> tuple[str, ...]:
    """The architecture names the experiment's parties cycle through."""
    return experiment.models or (experiment.model,)


def assign(architectures: tuple[str, ...], num_parties: int) -> tuple[str, ...]:
    """Round-robin: party k gets ``architectures[k % len(architectures)]``."""
    return tuple(architectures[k % len(architectures)] for k in range(num_parties))


# ---- data ---------------------------------------------------------------------------------------
class PublicSet(NamedTuple):
    """The public dataset with its labels (for transfer learning). x: [N, *input_shape]; y: [N]."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int


def split_holdout(data, fraction: float, key) -> tuple[Any, PublicSet]:
    """(the parties' data without their held-out rows, the public set of those rows): a seeded
    ``fraction`` of each party's training rows (rounded, at least one row kept) moves to the
    public set; test rows stay."""
    u = np.asarray(jax.random.uniform(key, (len(data.y_train),)))
    keep = np.ones(len(data.y_train), bool)
    off = data.train_offsets
    for k in range(data.num_clients):
        n = int(off[k + 1] - off[k])
        moved = min(int(round(fraction * n)), n - 1)
        keep[off[k] + np.argsort(u[off[k]:off[k + 1]], kind="stable")[:moved]] = False
    counts = np.add.reduceat(keep, off[:-1]) if len(keep) else np.zeros(data.num_clients, int)
    counts = np.where(np.diff(off) > 0, counts, 0)
    private = dataclasses.replace(
        data, x_train=data.x_train[keep], y_train=data.y_train[keep],
        train_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        train_weights=None if data.train_weights is None else data.train_weights[keep])
    return private, PublicSet(data.x_train[~keep], data.y_train[~keep], data.num_classes)


def load_public(spec: str, seed: int) -> PublicSet:
    """All rows of the registered dataset ``spec`` (its natural clients or partition ignored)."""
    from fedlab.data.federated import FederatedDataset
    from fedlab.data.loaders import load_central

    central = load_central(spec, None, None, seed)[0]
    if isinstance(central, FederatedDataset):
        return PublicSet(np.concatenate([central.x_train, central.x_test]),
                         np.concatenate([central.y_train, central.y_test]), central.num_classes)
    return PublicSet(np.asarray(central.x, np.float32), np.asarray(central.y), central.num_classes)


class Built(NamedTuple):
    """What ``build`` returns: the parties' private data, the protocol, each party's model and
    architecture name, and the public set."""

    data: Any
    protocol: Protocol
    models: tuple[Model, ...]
    architectures: tuple[str, ...]
    public: PublicSet


def build(experiment, data=None) -> Built:
    """The parties' data, the public set and the models, with the checks that need the data: the
    public set has the private data's input shape and classes, every architecture fits the data,
    every party keeps training rows; ValueError before any training."""
    from fedlab.core.simulate import resolve_model

    if data is None:
        data = experiment.load_data()
    else:
        data.validate()
    if data.num_classes < 2:
        raise ValueError("algorithm: fedmd needs a classification dataset (class scores), got a regression target")
    if experiment.clients_per_round not in (None, data.num_clients):
        raise ValueError(f"clients_per_round: every FedMD party takes part in every round; leave it unset or "
                         f"{data.num_clients}, got {experiment.clients_per_round}")
    root = jax.random.key(experiment.seed)
    if experiment.public.startswith("holdout:"):
        data, public = split_holdout(data, float(experiment.public.split(":")[1]), jax.random.fold_in(root, 5))
    else:
        if experiment.public.split(":")[0] == experiment.dataset and experiment.dataset not in ("csv", "parquet", "npz"):
            raise ValueError(f"public: {experiment.public!r} is the private dataset itself (its rows would be both "
                             f"public and private); use holdout:FRAC for a held-out slice of it")
        public = load_public(experiment.public, experiment.seed)
    if tuple(public.x.shape[1:]) != tuple(data.input_shape):
        raise ValueError(f"public: its rows have input shape {tuple(public.x.shape[1:])} but the private data's have "
                         f"{tuple(data.input_shape)}")
    if public.num_classes != data.num_classes:
        raise ValueError(f"public: it has {public.num_classes} classes but the private data has {data.num_classes}")
    if len(public.y) < 1:
        raise ValueError("public: the public set has no rows")
    empty = np.flatnonzero(data.train_counts == 0)
    if len(empty):
        raise ValueError(f"num_clients: party {int(empty[0])} has no training rows")
    protocol = experiment._strategy_without_privacy()
    names = architectures(experiment)
    built_models = {}
    for name in dict.fromkeys(names):
        options = experiment.model_options if name == experiment.model else {}
        try:
            built_models[name] = resolve_model(name, data, options)
        except ValueError as err:
            what = "models" if experiment.models else "model"
            raise ValueError(f"{what}: {name} does not fit the data ({err})") from None
    per_party = assign(names, data.num_clients)
    return Built(data, protocol, tuple(built_models[a] for a in per_party), per_party, public)


# ---- the compiled pieces (one set per architecture group) -------------------------------------
def consensus(scores: jax.Array) -> jax.Array:
    """The server's aggregate: the mean of the parties' class scores. scores: [parties, rows, classes]."""
    return jnp.mean(scores, axis=0)


def digest_loss(logits: jax.Array, target: jax.Array, kind: str = "l1") -> jax.Array:
    """How far a party's logits [rows, classes] are from the consensus [rows, classes]: mean
    absolute difference ("l1", the paper) or mean over rows of KL(softmax(target) || softmax(logits))."""
    if kind == "l1":
        return jnp.mean(jnp.abs(logits - target))
    p = jax.nn.softmax(target)
    return jnp.mean(jnp.sum(p * (jax.nn.log_softmax(target) - jax.nn.log_softmax(logits)), -1))


def _steps(opt, loss_fn, params, key, num_steps, draw):
    """``num_steps`` optimizer steps of loss_fn(params, batch) from a fresh optimizer state; step s
    uses the batch draw(fold_in(key, s)). Returns (params, mean loss of the steps)."""
    def body(s, carry):
        params, opt_state, total = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, draw(jax.random.fold_in(key, s)))
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, total + loss

    params, _, total = jax.lax.fori_loop(0, num_steps, body, (params, opt.init(params), jnp.zeros(())))
    return params, total / jnp.maximum(num_steps, 1)


class GroupFunctions:
    """The jitted, party-vmapped functions of one architecture (parameters stacked on axis 0). The
    number of steps is traced (a loop bound per party), so each function compiles once."""

    def __init__(self, model: Model, protocol: Protocol, batch_size: int):
        opt, B = protocol.optimizer, batch_size

        def train_rows(params, key, offset, count, num_steps, x, y, w):
            def draw(k):
                idx = offset + jax.random.randint(k, (B,), 0, count)
                return Batch(x[idx], y[idx], w[idx])
            return _steps(opt, model.loss, params, key, num_steps, draw)

        def digest(params, key, num_steps, xs, target):
            def draw(k):
                idx = jax.random.randint(k, (B,), 0, xs.shape[0])
                return xs[idx], target[idx]
            loss = lambda p, b: digest_loss(model.apply(p, b[0]), b[1], protocol.digest_loss)   # noqa: E731
            return _steps(opt, loss, params, key, num_steps, draw)

        def evaluate(params, x, y, mask):
            logits = model.apply(params, x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return jnp.sum(jnp.where(mask, loss, 0.0)), jnp.sum(jnp.where(mask, jnp.argmax(logits, -1) == y, 0))

        self.init = jax.vmap(model.init)
        self.train_rows = jax.jit(jax.vmap(train_rows, (0, 0, 0, 0, 0, None, None, None)))
        self.digest = jax.jit(jax.vmap(digest, (0, 0, None, None, None)))
        self.scores = jax.jit(jax.vmap(model.apply, (0, None)))
        self.evaluate = jax.jit(jax.vmap(evaluate))

    @staticmethod
    def finite(params) -> np.ndarray:
        """[parties] whether each party's parameters are all finite."""
        leaves = [jnp.all(jnp.isfinite(a.reshape(a.shape[0], -1)), 1) for a in jax.tree.leaves(params)]
        return np.asarray(jnp.all(jnp.stack(leaves), 0))


def _party_keys(key, parties: np.ndarray):
    return jax.vmap(lambda k: jax.random.fold_in(key, k))(jnp.asarray(parties, jnp.uint32))


def _padded(x, y, offsets, parties, M):
    """Rows of each party padded to M: x [P, M, ...], y [P, M], mask [P, M]."""
    counts = np.diff(offsets)[parties]
    idx = offsets[parties][:, None] + np.minimum(np.arange(M)[None, :], np.maximum(counts[:, None] - 1, 0))
    mask = np.arange(M)[None, :] < counts[:, None]
    return jnp.asarray(x[idx]), jnp.asarray(y[idx].astype(np.int32)), jnp.asarray(mask)


class Parties:
    """The parties grouped by architecture, with their data on the device and their stacked params."""

    def __init__(self, built: Built, batch_size: int, seed: int):
        data = built.data
        self.built, self.batch_size = built, batch_size
        self.root = jax.random.key(seed)
        self.groups: dict[str, np.ndarray] = {}
        for k, a in enumerate(built.architectures):
            self.groups.setdefault(a, []).append(k)
        self.groups = {a: np.asarray(p) for a, p in self.groups.items()}
        self.fns = {a: GroupFunctions(built.models[p[0]], built.protocol, batch_size) for a, p in self.groups.items()}
        # private rows then public rows in one flat array (one compiled training function per group)
        w = data.train_weights if data.train_weights is not None else np.ones(len(data.y_train), np.float32)
        self.rows = (jnp.asarray(np.concatenate([data.x_train, built.public.x.astype(np.float32)])),
                     jnp.asarray(np.concatenate([data.y_train, built.public.y]).astype(np.int32)),
                     jnp.asarray(np.concatenate([w, np.ones(len(built.public.y))]), jnp.float32))
        self.public_offset = len(data.y_train)
        self.x_public = self.rows[0][self.public_offset:]
        self.counts = data.train_counts
        self.test, self.train = {}, {}
        for a, p in self.groups.items():
            M = max(int(data.test_counts[p].max()), int(self.counts[p].max()), 1)    # one shape: one compile
            self.test[a] = _padded(data.x_test, data.y_test, data.test_offsets, p, M)
            self.train[a] = _padded(data.x_train, data.y_train, data.train_offsets, p, M)
        self.params = {a: self.fns[a].init(_party_keys(jax.random.fold_in(self.root, 1), p))
                       for a, p in self.groups.items()}

    def epochs_steps(self, epochs: int, counts: np.ndarray) -> np.ndarray:
        return np.ceil(epochs * counts / self.batch_size).astype(np.int32)

    def train_public(self, epochs: int, key) -> dict:
        n = len(self.built.public.y)
        losses = {}
        for a, p in self.groups.items():
            steps = self.epochs_steps(epochs, np.full(len(p), n))
            if steps.max() == 0:
                continue
            self.params[a], losses[a] = self.fns[a].train_rows(
                self.params[a], _party_keys(key, p), jnp.full(len(p), self.public_offset, jnp.int32),
                jnp.full(len(p), n, jnp.int32), jnp.asarray(steps), *self.rows)
        return losses

    def train_private(self, steps_of, key) -> dict:
        """steps_of(counts) -> steps per party; returns each group's per-party mean losses."""
        losses = {}
        off = self.built.data.train_offsets
        for a, p in self.groups.items():
            steps = np.asarray(steps_of(self.counts[p]), np.int32)
            if steps.max() == 0:
                continue
            self.params[a], losses[a] = self.fns[a].train_rows(
                self.params[a], _party_keys(key, p), jnp.asarray(off[p], jnp.int32),
                jnp.asarray(self.counts[p], jnp.int32), jnp.asarray(steps), *self.rows)
        return losses

    def scores(self, xs) -> jax.Array:
        """Every party's class scores on xs, in party order: [parties, rows, classes]."""
        K = self.built.data.num_clients
        out = [None] * K
        for a, p in self.groups.items():
            s = self.fns[a].scores(self.params[a], xs)
            for i, k in enumerate(p):
                out[k] = s[i]
        return jnp.stack(out)

    def digest(self, xs, target, steps: int, key) -> dict:
        losses = {}
        for a, p in self.groups.items():
            self.params[a], losses[a] = self.fns[a].digest(self.params[a], _party_keys(key, p), steps, xs, target)
        return losses

    def evaluate(self) -> pd.DataFrame:
        """One row per party: test accuracy and loss on its own test rows, training loss on its own rows."""
        rows = []
        data = self.built.data
        for a, p in self.groups.items():
            test = jax.device_get(self.fns[a].evaluate(self.params[a], *self.test[a]))
            train = jax.device_get(self.fns[a].evaluate(self.params[a], *self.train[a]))
            for i, k in enumerate(p):
                n_te, n_tr = int(data.test_counts[k]), int(data.train_counts[k])
                rows.append({"party": int(k), "architecture": a, "train_examples": n_tr, "test_examples": n_te,
                             "train_loss": train[0][i] / max(n_tr, 1),
                             "test_loss": test[0][i] / n_te if n_te else math.nan,
                             "test_accuracy": test[1][i] / n_te if n_te else math.nan})
        return pd.DataFrame(rows).sort_values("party").reset_index(drop=True)

    def non_finite(self, losses: dict) -> str | None:
        """Why the parties' state is not finite (which party), or None."""
        for a, p in self.groups.items():
            finite = GroupFunctions.finite(self.params[a])
            bad_loss = ~np.isfinite(np.asarray(losses[a])) if a in losses else np.zeros(len(p), bool)
            if not finite.all():
                return f"non-finite model parameters of party {int(p[np.argmin(finite)])} ({a})"
            if bad_loss.any():
                return f"non-finite training loss of party {int(p[np.argmax(bad_loss)])} ({a})"
        return None

    def party_params(self) -> list:
        """Each party's own parameters, in party order."""
        out = [None] * self.built.data.num_clients
        for a, p in self.groups.items():
            for i, k in enumerate(p):
                out[k] = jax.tree.map(lambda x, i=i: x[i], self.params[a])
        return out


# ---- the run ---------------------------------------------------------------------------------------
def _revisit_steps(experiment):
    if experiment.local_steps is not None:
        return lambda counts: np.full(len(counts), experiment.local_steps)
    epochs = experiment.local_epochs or 1
    return lambda counts: np.ceil(epochs * counts / experiment.batch_size).astype(np.int32)


def _summary(table: pd.DataFrame) -> dict:
    acc = table["test_accuracy"].to_numpy(float)
    row = {"train_loss": float(np.average(table["train_loss"], weights=table["train_examples"])),
           "test_loss": float(np.nanmean(table["test_loss"])), "test_accuracy": float(np.nanmean(acc)),
           "personal_acc_mean": float(np.nanmean(acc)), "personal_acc_p10": float(np.nanpercentile(acc, 10)),
           "personal_acc_p50": float(np.nanpercentile(acc, 50)), "personal_acc_p90": float(np.nanpercentile(acc, 90))}
    for a, part in table.groupby("architecture", sort=False):
        row[f"{a}_acc_mean"] = float(np.nanmean(part["test_accuracy"]))
    row.update({f"party_{k}_acc": float(v) for k, v in zip(table["party"], acc)})
    return row


def run(experiment, *, callbacks=(), progress: bool = True, out=None, checkpoint_every=None, data=None,
        built: Built | None = None, after=None):
    """Run the FedMD protocol of ``experiment`` (see the module docstring); return the History.

    Rows: round, clients and participants (every party), local_loss (mean revisit loss),
    digest_loss (mean distance to the consensus), train_loss / test_loss (the parties' own models
    on their own rows), test_accuracy (mean of the parties' test accuracies, each on its own test
    rows), personal_acc_{mean,p10,p50,p90} (the same accuracies), <architecture>_acc_mean,
    party_<k>_acc, bytes_up, bytes_down (the scores sent), seconds, elapsed. ``history.params``:
    each party's parameters; ``history.per_client``: one row per party with its architecture,
    accuracy after transfer learning and at the end. FedMD runs write no checkpoint and cannot be
    resumed or continued (``after``, ``checkpoint_every`` refused); a non-finite model or loss ends
    the run as diverged with the last finite round's rows."""
    from fedlab.core import rundir
    from fedlab.core.simulate import _COLUMNS, History, RoundEvent, RunEndedWarning, StopTraining

    if after is not None:
        raise ValueError("after: FedMD runs cannot be continued; run them again with more rounds")
    if checkpoint_every is not None:
        raise ValueError("checkpoint_every: FedMD runs write no checkpoint (they cannot be resumed)")
    writer = rundir.RunWriter(out, experiment) if out is not None else None
    try:
        built = built or build(experiment, data)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    if writer is not None:
        writer.start(built)
    protocol, data = built.protocol, built.data
    K, C = data.num_clients, data.num_classes
    began = time.perf_counter()
    parties = Parties(built, experiment.batch_size, experiment.seed)
    root = parties.root
    rows: list[dict] = []
    status, message = "completed", None
    revisit = _revisit_steps(experiment)
    n_pub = len(built.public.y)
    R = n_pub if protocol.public_rows == 0 or protocol.public_rows >= n_pub else protocol.public_rows
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=experiment.rounds, desc="fedmd", unit="round", leave=False)
    last_good, transfer = parties.party_params(), None      # the initial models, then the last finite ones
    try:
        losses = parties.train_public(protocol.public_epochs, jax.random.fold_in(root, 2))
        bad = parties.non_finite(losses)
        if bad is None:
            losses = parties.train_private(lambda n: parties.epochs_steps(protocol.private_epochs, n),
                                           jax.random.fold_in(root, 3))
            bad = parties.non_finite(losses)
        if bad is not None:
            status, message = "diverged", f"diverged in transfer learning ({bad})"
        else:
            transfer, last_good = parties.evaluate(), parties.party_params()
        x_pub = parties.x_public
        for r in range(1, experiment.rounds + 1) if status == "completed" else ():
            start = time.perf_counter()
            rk = jax.random.fold_in(jax.random.fold_in(root, 4), r)
            if R < n_pub:
                idx = jnp.sort(jax.random.choice(jax.random.fold_in(rk, 0), n_pub, (R,), replace=False))
                xs = x_pub[idx]
            else:
                xs = x_pub
            target = consensus(parties.scores(xs))
            digest = parties.digest(xs, target, protocol.digest_steps, jax.random.fold_in(rk, 1)) \
                if protocol.digest_steps else {}
            local = parties.train_private(revisit, jax.random.fold_in(rk, 2))
            jax.block_until_ready(parties.params)
            seconds = time.perf_counter() - start
            bad = parties.non_finite({a: jnp.stack([digest.get(a, jnp.zeros(len(p))), local.get(a, jnp.zeros(len(p)))])
                                      for a, p in parties.groups.items()})
            if bad is not None:
                status, message = "diverged", f"diverged at round {r} ({bad})"
                break
            row = {"round": r, "clients": K, "participants": K,
                   "local_loss": float(np.mean(np.concatenate([np.asarray(v) for v in local.values()])))
                   if local else math.nan,
                   "digest_loss": float(np.mean(np.concatenate([np.asarray(v) for v in digest.values()])))
                   if digest else math.nan}
            if r % experiment.eval_every == 0 or r == experiment.rounds:
                table = parties.evaluate()
                row.update(_summary(table))
            row.update(bytes_up=K * R * C * 4, bytes_down=K * R * C * 4, seconds=seconds,
                       elapsed=time.perf_counter() - began)
            rows.append(row)
            last_good = parties.party_params()
            if bar is not None:
                if "test_accuracy" in row:
                    bar.set_postfix(acc=f"{row['test_accuracy']:.3f}", refresh=False)
                bar.update(1)
            try:
                event = RoundEvent(r, experiment.rounds, row, row["elapsed"], dict(parties.params))
                for callback in callbacks:
                    callback(event)
            except StopTraining:
                status, message = "stopped", f"stopped after round {r} of {experiment.rounds}"
                break
    except KeyboardInterrupt:
        if writer is not None:
            writer.write_history(pd.DataFrame(rows))
            writer.finish("interrupted", f"interrupted after round {len(rows)} of {experiment.rounds}", len(rows),
                          resumable=False)
        raise
    except Exception as err:     # noqa: BLE001 - reported as the run's status, rows kept
        status, message = "failed", f"round {len(rows) + 1}: {type(err).__name__}: {err}"
    finally:
        if bar is not None:
            bar.close()
    table = pd.DataFrame(rows)
    first = [c for c in _COLUMNS if c in table] + [c for c in ("digest_loss",) if c in table]
    last = ["bytes_up", "bytes_down", "seconds", "elapsed"]
    history = History(table.reindex(columns=first + [c for c in table if c not in first + last] + last))
    history.params, history.settings, history.state = last_good, experiment.to_dict(), None
    history.status, history.message = status, message
    per = transfer
    if per is not None:
        per = per.rename(columns={"test_accuracy": "transfer_accuracy"})[
            ["party", "architecture", "train_examples", "test_examples", "transfer_accuracy"]]
        if len(rows) and "party_0_acc" in history:
            per["test_accuracy"] = [history[f"party_{k}_acc"].dropna().iloc[-1] for k in range(K)]
        per = per.rename(columns={"party": "client"})
    history.per_client = per
    history.attrs.update(public_rows=n_pub, public_rows_per_round=R,
                         transfer_accuracy=float(per["transfer_accuracy"].mean()) if per is not None else math.nan)
    if writer is not None:
        writer.write_history(history)
        writer.finish(status, message, len(rows), resumable=False)
    if status in ("diverged", "failed"):
        import warnings

        warnings.warn(f"fedmd: {message}", RunEndedWarning, stacklevel=3)
    return history


# ---- baselines (the paper's comparison) -----------------------------------------------------------
def baselines(experiment, data=None, built: Built | None = None) -> pd.DataFrame:
    """Per party, the references a FedMD run is compared with, each party's own architecture:
    islands (its private rows only, private_epochs + rounds x revisit epochs: the private work of
    the FedMD run), transfer (public, then its private rows: FedMD before round 1, the paper's lower
    reference) and pooled (public, then every party's private rows pooled, as many epochs: the
    paper's upper reference; one model per architecture). Accuracy on each party's own test rows."""
    from fedlab.transfer import pool

    built = built or build(experiment, data)
    protocol = built.protocol
    B = experiment.batch_size

    def total(counts):        # the private steps of a FedMD run: transfer, then every round's revisit
        first = np.ceil(protocol.private_epochs * counts / B)
        if experiment.local_steps is not None:
            return (first + experiment.rounds * experiment.local_steps).astype(np.int32)
        return (first + experiment.rounds * np.ceil((experiment.local_epochs or 1) * counts / B)).astype(np.int32)

    root = jax.random.key(experiment.seed)
    parties = Parties(built, experiment.batch_size, experiment.seed)
    parties.train_private(total, jax.random.fold_in(root, 3))
    islands = parties.evaluate()
    parties = Parties(built, experiment.batch_size, experiment.seed)
    parties.train_public(protocol.public_epochs, jax.random.fold_in(root, 2))
    parties.train_private(lambda n: parties.epochs_steps(protocol.private_epochs, n), jax.random.fold_in(root, 3))
    transfer = parties.evaluate()
    # pooled: one party per architecture holding every private row, evaluated on each party's test rows
    names = tuple(dict.fromkeys(built.architectures))
    one = pool(built.data)
    A = len(names)
    tile = lambda a: np.tile(a, (A,) + (1,) * (a.ndim - 1))       # noqa: E731
    many = type(one)(one.name, tile(one.x_train), tile(one.y_train), np.arange(A + 1) * len(one.y_train),
                     tile(one.x_test), tile(one.y_test), np.arange(A + 1) * len(one.y_test), one.num_classes,
                     train_weights=None if one.train_weights is None else tile(one.train_weights))
    models = tuple(built.models[built.architectures.index(a)] for a in names)
    pooled_built = built._replace(data=many, models=models, architectures=names)
    pooled = Parties(pooled_built, experiment.batch_size, experiment.seed)
    pooled.train_public(protocol.public_epochs, jax.random.fold_in(root, 2))
    pooled.train_private(total, jax.random.fold_in(root, 3))
    params = dict(zip(names, pooled.party_params()))
    acc = []
    data = built.data
    for k, a in enumerate(built.architectures):
        x, y = data.client(k, "test")
        logits = built.models[k].apply(params[a], jnp.asarray(x))
        acc.append(float(np.mean(np.argmax(np.asarray(logits), -1) == y)) if len(y) else math.nan)
    return pd.DataFrame({"party": np.arange(data.num_clients), "architecture": built.architectures,
                         "islands": islands["test_accuracy"], "transfer": transfer["test_accuracy"], "pooled": acc})
