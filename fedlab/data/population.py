"""Populations too large for memory: a synthetic client's rows are generated from its key when
it is sampled, inside the compiled round, so only the sampled clients' rows ever exist.

At the FedProx generator's sizes (about 450 rows a client on average, a heavy tail) 100,000
clients hold about 11 GB of float32 rows. ``generated_population`` keeps only each client's
row count; client k's model (W_k, b_k), feature mean v_k and row i are pure functions of
``fold_in(key, k)`` and i, so the engine draws a mini-batch's rows directly (``GeneratedSource``
is an engine data source, like ``engine.DeviceData``). Evaluation uses a fixed sample of
clients, generated once with the same functions (``GeneratedPopulation.evaluation_data``).

The distribution is the FedProx Synthetic(alpha, beta) / Synthetic-IID of
``fedlab.data.synthetic`` (same sizes 50 + floor(LogNormal(4, 2)), same models and features),
drawn from a different random stream: a population generated here is not the same draw as
``synthetic:A,B`` loaded in memory with the same seed.
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedlab.core.types import Batch
from fedlab.data.federated import FederatedDataset
from fedlab.data.synthetic import NUM_CLASSES, NUM_FEATURES, feature_variances

#: the datasets whose clients can be generated on demand
GENERATED_DATASETS = ("synthetic", "synthetic_iid")


class GeneratedClient(NamedTuple):
    """One client's generator. W: [60, 10]; b: [10]; v: [60]; rows_key: the key of its rows."""

    W: jax.Array
    b: jax.Array
    v: jax.Array
    scale: jax.Array      # [60] sqrt of Sigma's diagonal
    rows_key: jax.Array

    def row(self, i):
        """Row i of the client: x ~ N(v, Sigma), y = argmax(x W + b)."""
        x = self.v + self.scale * jax.random.normal(jax.random.fold_in(self.rows_key, i), self.v.shape)
        return x, jnp.argmax(x @ self.W + self.b).astype(jnp.int32)

    def batch(self, offset, rows, mask) -> Batch:
        """rows: [B] row numbers (train rows are 0..n_train-1); offset is unused (always 0)."""
        x, y = jax.vmap(self.row)(rows)
        return Batch(x, y, mask)


class GeneratedSource(NamedTuple):
    """The engine's data source for a generated population (a pytree of arrays).
    counts: [K] training rows; offsets: [K] zeros; key: [2] uint32; alpha, beta, iid: scalars."""

    counts: jax.Array
    offsets: jax.Array
    key: jax.Array
    alpha: jax.Array
    beta: jax.Array
    iid: jax.Array         # 1.0: Synthetic-IID (one shared model, features around 0)

    def for_client(self, cid) -> GeneratedClient:
        """Client cid's model and feature mean (u_k ~ N(0, alpha), B_k ~ N(0, beta), W_k, b_k ~ N(u_k, 1),
        v_k ~ N(B_k, 1)); with iid, one W, b ~ N(0, 1) for everyone and v_k = 0."""
        key = jax.random.wrap_key_data(self.key)
        mine = jax.random.fold_in(jax.random.fold_in(key, 0), cid)
        d, c = NUM_FEATURES, NUM_CLASSES
        # one draw per client (u, B, W, b, v noise) and one shared (the IID model): few random calls
        # keep the compiled round small
        z = jax.random.normal(mine, (2 + d * c + c + d,))
        shared = jax.random.normal(jax.random.fold_in(key, 1), (d * c + c,))
        u = (1 - self.iid) * jnp.sqrt(self.alpha) * z[0]
        B = (1 - self.iid) * jnp.sqrt(self.beta) * z[1]
        model = jnp.where(self.iid > 0, shared, u + z[2:2 + d * c + c])
        W, b = model[:d * c].reshape(d, c), model[d * c:]
        v = (1 - self.iid) * (B + z[2 + d * c + c:])
        scale = jnp.sqrt(jnp.asarray(feature_variances(d), jnp.float32))
        rows_key = jax.random.fold_in(mine, 1)
        return GeneratedClient(W, b, v, scale, rows_key)


class GeneratedPopulation:
    """A synthetic population whose rows are generated when needed; what ``simulate`` needs of a
    dataset (num_clients, train_counts, test_counts, num_classes, input_shape, validate, check)
    plus ``device_data()`` (the engine's source) and ``evaluation_data()`` (a FederatedDataset
    of a fixed sample of ``eval_clients`` clients, train and test rows, made once)."""

    def __init__(self, name: str, source: GeneratedSource, test_counts: np.ndarray, eval_clients: int, seed: int):
        self.name, self.source = name, source
        self.train_counts = np.asarray(source.counts, np.int64)
        self.test_counts = test_counts
        self.num_classes, self.input_shape = NUM_CLASSES, (NUM_FEATURES,)
        self.eval_clients, self.seed = min(eval_clients, len(self.train_counts)), seed
        self._evaluation = None

    @property
    def num_clients(self) -> int:
        return len(self.train_counts)

    @property
    def num_rows(self) -> int:
        return int(self.train_counts.sum() + self.test_counts.sum())

    def validate(self) -> None:
        pass

    def check(self) -> list[str]:
        return []

    def device_data(self) -> GeneratedSource:
        return self.source

    def fingerprint(self) -> str:
        """A short hash of what defines the population (the rows follow from it)."""
        h = hashlib.sha256()
        for a in (np.asarray(self.source.key), self.train_counts, self.test_counts,
                  np.asarray([self.source.alpha, self.source.beta, self.source.iid], np.float32)):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def evaluation_ids(self) -> np.ndarray:
        """[eval_clients] the clients evaluated every time (increasing ids, drawn from the seed)."""
        from fedlab.core.simulate import sample_client_ids

        return sample_client_ids(self.num_clients, self.eval_clients, self.seed)

    def evaluation_data(self) -> FederatedDataset:
        """The evaluation sample as a FederatedDataset (its rows are the clients' own rows)."""
        if self._evaluation is None:
            ids = self.evaluation_ids()
            n = self.train_counts[ids] + self.test_counts[ids]
            which = np.repeat(np.arange(len(ids)), n)
            row = np.arange(len(which)) - np.repeat(np.cumsum(n) - n, n)
            x, y = _generate_rows(self.source, ids[which], row)
            start, n_train = np.cumsum(n) - n, self.train_counts[ids]
            train = [(x[a:a + m], y[a:a + m]) for a, m in zip(start, n_train)]
            test = [(x[a + m:a + k], y[a + m:a + k]) for a, m, k in zip(start, n_train, n)]
            self._evaluation = FederatedDataset.from_clients(
                f"{self.name}, evaluated on {len(ids)} sampled clients", train, test,
                NUM_CLASSES, client_names=tuple(str(i) for i in ids))
        return self._evaluation

    def __repr__(self) -> str:
        return (f"GeneratedPopulation({self.name!r}, {self.num_clients} clients, {self.num_rows} rows generated "
                f"on demand, evaluated on {self.eval_clients} clients)")


def _generate_rows(source: GeneratedSource, cids: np.ndarray, rows: np.ndarray, block: int = 1 << 16):
    """x [N, 60] float32, y [N] int32: row rows[j] of client cids[j] (cids grouped, increasing), in
    blocks of one shape; each client's model is drawn once."""
    ids, which = np.unique(cids, return_inverse=True)
    clients = jax.jit(jax.vmap(source.for_client))(jnp.asarray(ids, jnp.int32))

    @jax.jit
    def gen(clients, which, row):
        return jax.vmap(lambda j, i: jax.tree.map(lambda t: t[j], clients).row(i))(which, row)

    xs, ys = [], []
    for start in range(0, len(cids), block):
        w, r = which[start:start + block], rows[start:start + block]
        pad = block - len(w)
        x, y = gen(clients, jnp.asarray(np.pad(w, (0, pad)), jnp.int32), jnp.asarray(np.pad(r, (0, pad)), jnp.int32))
        xs.append(np.asarray(x)[:len(w)])
        ys.append(np.asarray(y)[:len(w)])
    if not xs:
        return np.zeros((0, NUM_FEATURES), np.float32), np.zeros(0, np.int32)
    return np.concatenate(xs), np.concatenate(ys)


def generated_population(dataset: str, num_clients: int, *, alpha: float = 1.0, beta: float = 1.0,
                         seed: int = 0, test_fraction: float = 0.2, eval_clients: int = 1000) -> GeneratedPopulation:
    """Synthetic(alpha, beta) (dataset "synthetic") or Synthetic-IID ("synthetic_iid") for
    ``num_clients`` clients, generated on demand. Client k has 50 + floor(LogNormal(4, 2)) rows,
    the last round(test_fraction * n_k) of them for testing (at least one row for training)."""
    if dataset not in GENERATED_DATASETS:
        raise ValueError(f"client_data: only {list(GENERATED_DATASETS)} can be generated on demand, got {dataset!r}")
    key = jax.random.fold_in(jax.random.key(seed), 15)
    z = np.asarray(jax.random.normal(jax.random.fold_in(key, 2), (num_clients,)), np.float64)
    sizes = 50 + np.floor(np.exp(4.0 + 2.0 * np.minimum(z, 7.0))).astype(np.int64)   # z <= 7: n < 2^31
    test = np.minimum(np.floor(test_fraction * sizes + 0.5).astype(np.int64), sizes - 1)
    iid = dataset == "synthetic_iid"
    source = GeneratedSource(jnp.asarray(sizes - test, jnp.int32), jnp.zeros(num_clients, jnp.int32),
                             jax.random.key_data(key), jnp.float32(0 if iid else alpha),
                             jnp.float32(0 if iid else beta), jnp.float32(iid))
    name = "synthetic_iid" if iid else f"synthetic({alpha:g},{beta:g})"
    return GeneratedPopulation(name, source, test, eval_clients, seed)
