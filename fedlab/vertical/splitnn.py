"""SplitNN for vertically partitioned data (Vepakomma et al. 2018, "Split learning for health").

Feature party k holds columns x_k and a bottom model; the label party holds the labels, the
top model and the loss. One training step, with every exchanged tensor explicit::

    h_k = bottom_k(params_k, x_k) (+ N(0, noise_std^2))     # party k -> label party
    loss, (dL/dtop, dL/dh_1..K) = grad of top(h_1 ++ ... ++ h_K)   # label party
    dL/dh_k                                                   # label party -> party k
    dL/dparams_k = vjp of bottom_k at x_k applied to dL/dh_k  # party k, no labels needed

Each party's step is its own jit-compiled function and each party keeps its own optax
state. With no noise and an element-wise optimizer (sgd, adam, ...) this is exactly
centralized training of the composed model on the joined features.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd


def softmax_cross_entropy(logits, y):
    """Per-example loss for integer class labels. logits: [batch, classes]; y: [batch]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y.astype(jnp.int32))


def squared_error(outputs, y):
    """Per-example 0.5 * (output - y)^2. outputs: [batch] or [batch, 1]; y: [batch]."""
    return 0.5 * (outputs.reshape(y.shape) - y) ** 2


class SplitState(NamedTuple):
    """Parameters and optimizer states, one entry per feature party, plus the label party's."""

    bottom_params: tuple
    bottom_opt: tuple
    top_params: object
    top_opt: object


class SplitNN(NamedTuple):
    """A split network as per-party functions (build with ``splitnn``).

    init(key) -> SplitState
    forward[k](params_k, x_k, key, noise_std) -> h_k         (feature party k, jitted)
    label_update(top_params, top_opt, hs, y) -> (top_params, top_opt, loss, grads_h)   (jitted)
    backward[k](params_k, opt_k, x_k, grad_h_k) -> (params_k, opt_k)   (feature party k, jitted)
    predict(state, xs) -> outputs [batch, ...] (no noise)

    noise_std is an argument of the compiled forward functions, so ``model._replace(noise_std=s)``
    trains with another noise level without recompiling.
    """

    init: Callable
    forward: tuple
    label_update: Callable
    backward: tuple
    predict: Callable
    noise_std: float


def splitnn(bottoms: Sequence, top, loss: Callable, optimizer: optax.GradientTransformation, *,
            noise_std: float = 0.0, cut_activation: Callable | None = None) -> SplitNN:
    """Build a SplitNN from models with ``init(key)`` / ``apply(params, x)`` (e.g. fedlab.models).

    bottoms: one model per feature party, apply(params, x_k: [batch, d_k]) -> [batch, cut_k];
    top: apply(params, h: [batch, sum_k cut_k]) -> outputs; loss(outputs, y) -> [batch]
    per-example losses (averaged over the batch); noise_std: std of the Gaussian noise a party
    adds to its activations before sending them (0 = none); cut_activation: applied by each
    party to its bottom output (e.g. ``jax.nn.relu``), None for the identity.
    """
    bottoms = tuple(bottoms)
    if not bottoms:
        raise ValueError("bottoms must hold at least one feature party's model")
    if not (isinstance(noise_std, (int, float)) and noise_std >= 0):
        raise ValueError(f"noise_std must be a float >= 0, got {noise_std!r}")
    act = cut_activation if cut_activation is not None else (lambda h: h)

    def bottom_out(k):
        return lambda params, x: act(bottoms[k].apply(params, x))

    def init(key):
        keys = jax.random.split(key, len(bottoms) + 1)
        bottom_params = tuple(m.init(k) for m, k in zip(bottoms, keys[:-1]))
        top_params = top.init(keys[-1])
        return SplitState(bottom_params, tuple(optimizer.init(p) for p in bottom_params),
                          top_params, optimizer.init(top_params))

    def make_forward(k):
        out = bottom_out(k)

        def forward(params, x, key, noise_std):
            h = out(params, x)
            return h + noise_std * jax.random.normal(key, h.shape, h.dtype)
        return jax.jit(forward)

    def label_update(top_params, top_opt, hs, y):
        def objective(tp, hs):
            return jnp.mean(loss(top.apply(tp, jnp.concatenate(hs, axis=-1)), y))
        value, (g_top, g_hs) = jax.value_and_grad(objective, argnums=(0, 1))(top_params, hs)
        updates, top_opt = optimizer.update(g_top, top_opt, top_params)
        return optax.apply_updates(top_params, updates), top_opt, value, g_hs

    def make_backward(k):
        out = bottom_out(k)

        def backward(params, opt, x, grad_h):
            _, vjp = jax.vjp(lambda p: out(p, x), params)
            (grads,) = vjp(grad_h)
            updates, opt = optimizer.update(grads, opt, params)
            return optax.apply_updates(params, updates), opt
        return jax.jit(backward)

    @jax.jit
    def predict(state, xs):
        hs = [bottom_out(k)(state.bottom_params[k], x) for k, x in enumerate(xs)]
        return top.apply(state.top_params, jnp.concatenate(hs, axis=-1))

    return SplitNN(jax.jit(init), tuple(make_forward(k) for k in range(len(bottoms))), jax.jit(label_update),
                   tuple(make_backward(k) for k in range(len(bottoms))), predict, float(noise_std))


def splitnn_step(model: SplitNN, state: SplitState, xs: Sequence, y, key):
    """One SplitNN step on one aligned batch. xs: per party [batch, d_k]; y: [batch].

    Returns (state, loss, exchange) where exchange = {"activations": [h_k], "gradients":
    [dL/dh_k]}: exactly what crossed the party boundary.
    """
    keys = jax.random.split(key, len(xs))
    hs = tuple(f(p, x, k, model.noise_std)
               for f, p, x, k in zip(model.forward, state.bottom_params, xs, keys))
    top_params, top_opt, loss, grads = model.label_update(state.top_params, state.top_opt, hs, y)
    new = [b(p, o, x, g)
           for b, p, o, x, g in zip(model.backward, state.bottom_params, state.bottom_opt, xs, grads)]
    state = SplitState(tuple(p for p, _ in new), tuple(o for _, o in new), top_params, top_opt)
    return state, loss, {"activations": list(hs), "gradients": list(grads)}


def batch_indices(key, num_examples: int, batch_size: int, epochs: int, *,
                  drop_remainder: bool = False) -> list:
    """Shuffled mini-batch row indices, epoch after epoch. The last batch of an epoch is
    smaller, or dropped with ``drop_remainder`` (one batch shape = one compilation). Every party
    uses the same indices, since the rows are aligned."""
    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch_size and epochs must be >= 1, got {batch_size}, {epochs}")
    if drop_remainder and batch_size > num_examples:
        raise ValueError(f"batch_size must be <= the number of rows ({num_examples}) with drop_remainder")
    out = []
    stop = num_examples - (num_examples % batch_size if drop_remainder else 0)
    for e in range(epochs):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, e), num_examples))
        out += [perm[i:i + batch_size] for i in range(0, stop, batch_size)]
    return out


def train_splitnn(model: SplitNN, xs: Sequence, y, *, epochs: int, batch_size: int, key,
                  eval_data: tuple | None = None, metric: Callable | None = None):
    """Train on aligned party features. xs: per feature party [N, d_k]; y: [N] (label party).

    key: ``jax.random`` key for init, batches and noise; batches have one size (an epoch's
    remainder rows are dropped; the shuffle changes every epoch). eval_data: optional (xs_test, y_test)
    scored after each epoch with ``metric(outputs, y) -> float``. Returns (state, history) with
    history a DataFrame: epoch, train_loss[, metric].
    """
    xs = [np.asarray(x, np.float32) for x in xs]
    if len(xs) != len(model.forward):
        raise ValueError(f"xs must hold one array per feature party ({len(model.forward)}), got {len(xs)}")
    n = len(y)
    for k, x in enumerate(xs):
        if x.ndim != 2 or x.shape[1] == 0:
            raise ValueError(f"xs[{k}] must be [rows, features] with >= 1 feature, got shape {x.shape}")
        if x.shape[0] != n:
            raise ValueError(f"xs[{k}] has {x.shape[0]} rows but y has {n}; "
                             "align the parties first (psi_align)")
    key_init, key_batch, key_noise = jax.random.split(key, 3)
    state = model.init(key_init)
    y = np.asarray(y)
    batch_size = min(batch_size, n)
    rows, steps_per_epoch = [], n // batch_size
    losses = []
    for step, idx in enumerate(batch_indices(key_batch, n, batch_size, epochs, drop_remainder=True)):
        state, loss, _ = splitnn_step(model, state, [x[idx] for x in xs], y[idx],
                                      jax.random.fold_in(key_noise, step))
        losses.append(float(loss))
        if (step + 1) % steps_per_epoch == 0:
            row = {"epoch": (step + 1) // steps_per_epoch, "train_loss": float(np.mean(losses))}
            if eval_data is not None and metric is not None:
                outputs = model.predict(state, [np.asarray(x, np.float32) for x in eval_data[0]])
                row["metric"] = float(metric(np.asarray(outputs), np.asarray(eval_data[1])))
            rows.append(row)
            losses = []
    return state, pd.DataFrame(rows)
