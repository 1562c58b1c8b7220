"""Per-client evaluation: each client's accuracy with the model it would actually use.

For a FedAvg-like strategy that model is the global one; a personalizing strategy says which
with ``Strategy.personal_params(server_state, client_state)`` (Ditto's v_k, FedPer's body plus
the client's own head). Before the evaluation the model may take ``steps`` fine-tuning steps on
the client's own training rows (``Strategy.adapt``, default SGD): the strategy's own
``adapt_steps`` (MAML-style learners) plus the run's ``finetune_steps``. New clients (held out,
never trained) start from ``client_state_init(global params)`` and take ``adapt_steps`` steps
(the FedMeta protocol: support = their training rows, query = their test rows).

    evaluate = PersonalEvaluator(strategy, model, data, finetune_steps=5, lr=0.01, batch_size=10)
    evaluate(server_state, client_states, round)   # {"personal_acc_mean": ..., "personal_acc_p10": ...}

The clients are vmapped in chunks inside one compiled function (a ``lax.scan`` over chunks), like
the training round. Mini-batches of the fine-tuning steps are drawn with replacement from the
client's rows, from a key derived from (seed, round, client id): the same seed gives the same
numbers, and a resumed run the same as an uninterrupted one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from fedlab.core import engine
from fedlab.core.types import Batch, Model, Strategy, tree_nbytes

_TAG = 0x9E5    # folded into the run key: fine-tuning batches are independent of training's


def sgd_adapt(lr: float):
    """The default fine-tuning step: plain SGD at ``lr`` on the client's loss."""
    def adapt(server_state, params, batch, loss_fn):
        grads = jax.grad(loss_fn)(params, batch)
        return jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return adapt


def personal_model(strategy: Strategy, server_state, client_state):
    """The params a client with ``client_state`` uses (before any fine-tuning)."""
    if strategy.personal_params is None:
        return server_state.params
    return strategy.personal_params(server_state, client_state)


def _padded_test(data):
    """Each client's test rows gathered to [K, M] indices (M = most test rows) and a mask."""
    counts = data.test_counts
    M = max(int(counts.max(initial=0)), 1)
    idx = data.test_offsets[:-1, None] + np.arange(M)[None, :]
    mask = np.arange(M)[None, :] < counts[:, None]
    idx = np.where(mask, idx, 0)
    return jax.device_put((idx.astype(np.int32), mask.astype(np.float32)))    # new arrays: sharing is safe


class PersonalEvaluator:
    """Accuracy of every client's own model on its own test rows (see the module docstring).

    steps: fine-tuning steps before the evaluation (the strategy's adapt_steps + finetune_steps);
    lr: the SGD rate of those steps when the strategy has no ``adapt``; batch_size: their batch.
    """

    def __init__(self, strategy: Strategy, model: Model, data, *, steps: int = 0, lr: float = 0.01,
                 batch_size: int = 10, seed: int = 0, chunk: int | None = None):
        self.strategy, self.model, self.data, self.steps = strategy, model, data, int(steps)
        self.trivial = strategy.personal_params is None and self.steps == 0
        self.has_test = data.test_counts > 0
        self._chunk, self._fn, self._lr, self._batch, self._seed = chunk, None, lr, int(batch_size), seed
        self.client_values = None           # the last call's per-client accuracies (personalizing only)

    def _client_fn(self):
        """One client's evaluation. Built at the first per_client call, not in __init__: a run whose
        evaluator is trivial (its rows reuse the global model's per-client accuracies) never
        copies the test rows to the device or compiles their small setup programs."""
        strategy, model, data, steps, B = self.strategy, self.model, self.data, self.steps, self._batch
        adapt = strategy.adapt or sgd_adapt(self._lr)
        dev = engine.device_data(data)
        test_idx, test_mask = _padded_test(data)
        x_test, y_test = engine.to_device(data.x_test, data.y_test)

        def one_client(server_state, client_state, cid, key):
            """(correct, loss, all finite) of client cid's model on its test rows."""
            params = personal_model(strategy, server_state, client_state)
            if steps:
                n, offset = dev.counts[cid], dev.offsets[cid]
                rows = offset + jax.random.randint(jax.random.fold_in(key, cid), (steps, B), 0, n)

                def step(p, r):
                    w = jnp.ones((B,), jnp.float32) if dev.weight is None else dev.weight[r]
                    return adapt(server_state, p, Batch(dev.x[r], dev.y[r], w), model.loss), None

                params = jax.lax.scan(step, params, rows)[0]
            idx, mask = test_idx[cid], test_mask[cid]
            x, y = x_test[idx], y_test[idx]
            correct = (jnp.argmax(model.apply(params, x), -1) == y).astype(jnp.float32)
            loss = model.example_losses(params, x, y)
            return (jnp.sum(correct * mask), jnp.sum(jnp.where(mask > 0, loss, 0.0)),
                    engine.params_finite(params))

        return one_client

    def _compiled(self, server_state, client_states, shared_state: bool):
        """All clients' (correct, loss, finite), vmapped in chunks; client_states is one state
        for every client when ``shared_state`` (new clients), else stacked [K, ...]."""
        K = self.data.num_clients
        if self._chunk is None:
            params = personal_model(self.strategy, server_state,
                                    client_states if shared_state else jax.tree.map(lambda s: s[0], client_states))
            self._chunk = engine.auto_chunk(K, tree_nbytes(params) // 4, jax.default_backend())
        C = self._chunk
        padded = -K % C
        one = self._client_fn()
        self.key = jax.random.fold_in(jax.random.key(self._seed), _TAG)

        def run(server_state, client_states, key):
            ids = jnp.arange(K + padded, dtype=jnp.int32)
            safe = jnp.minimum(ids, K - 1)
            if shared_state:
                def chunk(_, cids):
                    return None, jax.vmap(one, (None, None, 0, None))(server_state, client_states, cids, key)
                xs = safe.reshape(-1, C)
            else:
                states = jax.tree.map(lambda s: s[safe].reshape(((K + padded) // C, C) + s.shape[1:]),
                                      client_states)           # explicit: a state leaf may be empty

                def chunk(_, xs):
                    cstates, cids = xs
                    return None, jax.vmap(one, (None, 0, 0, None))(server_state, cstates, cids, key)
                xs = (states, safe.reshape(-1, C))
            out = jax.lax.scan(chunk, None, xs)[1]
            return jax.tree.map(lambda t: t.reshape(-1)[:K], out)

        return engine.jit(run)

    def per_client(self, server_state, client_states, round: int = 0, *, shared_state: bool = False):
        """One row per client: test rows, personal accuracy and loss, whether its model is finite."""
        if self._fn is None:
            self._fn = self._compiled(server_state, client_states, shared_state)
        correct, loss, finite = jax.device_get(self._fn(server_state, client_states,
                                                        jax.random.fold_in(self.key, round)))
        n = self.data.test_counts
        with np.errstate(invalid="ignore", divide="ignore"):
            return pd.DataFrame({"client": self.data.names(), "test_rows": n,
                                 "personal_accuracy": np.where(n > 0, correct / np.maximum(n, 1), np.nan),
                                 "personal_loss": np.where(n > 0, loss / np.maximum(n, 1), np.nan),
                                 "finite": finite > 0})

    def __call__(self, server_state, client_states, round: int, global_metrics: dict | None = None) -> dict:
        """personal_acc_{mean,p10,p50,p90} (over clients with test rows), and personal_finite
        (1.0, or 0.0 when a client's model is not finite: the run diverged)."""
        if self.model.num_classes == 0:
            return {}
        if self.trivial and global_metrics is not None and "client_acc_mean" in global_metrics:
            return {f"personal_acc_{s}": global_metrics[f"client_acc_{s}"] for s in ("mean", "p10", "p50", "p90")}
        table = self.per_client(server_state, client_states, round)
        self.client_values = table["personal_accuracy"].to_numpy()
        if not table["finite"].all():
            return {"personal_finite": 0.0}
        return summarize(table["personal_accuracy"].to_numpy()[self.has_test], "personal_acc")


def summarize(acc: np.ndarray, prefix: str) -> dict:
    """{prefix_mean, prefix_p10, prefix_p50, prefix_p90} of per-client accuracies."""
    if len(acc) == 0:
        return {}
    return {f"{prefix}_mean": float(acc.mean()), f"{prefix}_p10": float(np.percentile(acc, 10)),
            f"{prefix}_p50": float(np.percentile(acc, 50)), f"{prefix}_p90": float(np.percentile(acc, 90))}


class NewClientEvaluator:
    """Accuracy of held-out clients (``new``: a FederatedDataset of clients that never trained)
    after ``steps`` adaptation steps from ``client_state_init(global params)``: the row-weighted
    test accuracy of all of them (``new_client_accuracy``) and the mean over them."""

    def __init__(self, strategy: Strategy, model: Model, new, *, steps: int, lr: float, batch_size: int,
                 seed: int = 0):
        self.strategy = strategy
        self.inner = PersonalEvaluator(strategy._replace(adapt_steps=0), model, new, steps=steps, lr=lr,
                                       batch_size=batch_size, seed=seed + 1)

    def per_client(self, server_state, round: int = 0) -> pd.DataFrame:
        state = self.strategy.client_state_init(server_state.params)
        return self.inner.per_client(server_state, state, round, shared_state=True)

    def __call__(self, server_state, round: int) -> dict:
        if self.inner.model.num_classes == 0:
            return {}
        table = self.per_client(server_state, round)
        if not table["finite"].all():
            return {"personal_finite": 0.0}
        has = table["test_rows"].to_numpy() > 0
        acc = table["personal_accuracy"].to_numpy()[has]
        rows = table["test_rows"].to_numpy()[has]
        return {"new_client_accuracy": float(np.sum(acc * rows) / max(rows.sum(), 1)),
                "new_client_acc_mean": float(acc.mean()) if len(acc) else float("nan")}


def select_clients(data, ids) -> "FederatedDataset":  # noqa: F821 (fedlab.data's type)
    """The FederatedDataset of clients ``ids`` (in that order) of ``data``: their rows, names
    and example weights."""
    ids = np.asarray(ids, np.int64)

    def rows(offsets):
        return np.concatenate([np.arange(offsets[k], offsets[k + 1]) for k in ids]).astype(np.int64)

    tr, te = rows(data.train_offsets), rows(data.test_offsets)
    counts = lambda c: np.concatenate([[0], np.cumsum(c[ids])]).astype(np.int64)   # noqa: E731
    names = None if data.client_names is None else tuple(data.client_names[k] for k in ids)
    return type(data)(data.name, data.x_train[tr], data.y_train[tr], counts(data.train_counts),
                      data.x_test[te], data.y_test[te], counts(data.test_counts), data.num_classes,
                      client_names=names, feature_names=data.feature_names,
                      train_weights=None if data.train_weights is None else data.train_weights[tr])


def hold_out(data, fraction: float, seed: int):
    """(training clients, held-out clients): round(fraction * K) clients (at least 1) drawn at
    random from the seed hold out and never train; ValueError if none would be left to train."""
    from fedlab.data import _random

    K = data.num_clients
    n_new = max(1, int(round(fraction * K)))
    if n_new >= K:
        raise ValueError(f"holdout_clients: {fraction} of {K} clients holds out {n_new}, leaving none to "
                         f"train; use a fraction below {(K - 1) / K:.3g}")
    order = _random.permutation(_random.subkey(_random.as_key(seed), 0x401D), K)
    new, kept = np.sort(order[:n_new]), np.sort(order[n_new:])
    return select_clients(data, kept), select_clients(data, new)
