"""The values every part of fedlab speaks: strategies, client outputs, batches, models.

A strategy is a NamedTuple of pure functions over pytrees, in the spirit of optax's
``GradientTransformation``. The engine (``fedlab.core.engine``) alone decides how they run:
``lax.scan`` over local steps, ``jax.vmap`` across clients, chunking, ``jax.jit``.

One round, for the sampled clients k (all in one compiled program)::

    broadcast = strategy.broadcast(server_state)                       # server -> clients
    local     = strategy.client_init(broadcast, client_state_k, info_k)
    local, loss = strategy.client_step(local, batch, loss_fn)          # x info_k.num_steps
    output_k, client_state_k = strategy.client_final(local, client_state_k, info_k)
    aggregate = sum_k w_k * output_k.update / sum_k w_k                # w_k = output_k.weight
    server_state = strategy.server_update(server_state, aggregate)

Clients with w_k = 0 (dropped) and padding slots are masked out, never multiplied by 0, so a
NaN they produce cannot reach the aggregate. A round with no participant (sum_k w_k = 0) leaves
the server state as it was, unless the strategy sets ``update_when_empty``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any
Params = PyTree


class Batch(NamedTuple):
    """A padded mini-batch. x: [batch, *input_shape]; y: [batch]; mask: [batch] (1 = real row,
    0 = padding, or the example's weight when the dataset weighs examples)."""

    x: jax.Array
    y: jax.Array
    mask: jax.Array


LossFn = Callable[[Params, Batch], jax.Array]


class ClientInfo(NamedTuple):
    """What the engine tells one client about this round (all scalars, per client).

    num_examples: n_k, the client's training examples; num_steps: local steps it will do this
    round (fewer than full_steps for a straggler); full_steps: the steps asked of everyone;
    key: the client's own PRNG key for this round; sampled_fraction: clients sampled this
    round / clients in the federation (|S| / N, e.g. SCAFFOLD's control-variate step);
    client_id: the client's index in the federation (e.g. per-client aggregation weights).
    """

    num_examples: jax.Array
    num_steps: jax.Array
    full_steps: jax.Array
    key: jax.Array
    sampled_fraction: jax.Array | float = 1.0
    client_id: jax.Array | int = 0


class ClientOutput(NamedTuple):
    """What one client sends back. update: a pytree (usually the model delta w_k - w);
    weight: its aggregation weight (n_k for FedAvg; 0 drops the client);
    metrics: a dict of per-client scalars, reported in the round's metrics as weighted means."""

    update: PyTree
    weight: jax.Array
    metrics: dict


def _identity_broadcast(server_state):
    return server_state.params


def _no_client_state(params):
    return ()


class Strategy(NamedTuple):
    """A federated algorithm as six pure functions (see the module docstring).

    server_init(params) -> server_state          (a NamedTuple with a ``params`` field)
    client_init(broadcast, client_state, info) -> local_state
    client_step(local_state, batch, loss_fn) -> (local_state, loss)
    client_final(local_state, client_state, info) -> (ClientOutput, client_state)
    server_update(server_state, aggregate) -> server_state
    broadcast(server_state) -> what the server sends each sampled client
    client_state_init(params) -> one client's persistent state (``()`` when it keeps none);
      the engine stores it for every client, sampled or not, between rounds.
    aggregate(updates, weights, key) -> (aggregate, metrics) replaces the engine's weighted
      mean (updates: the clients' update pytrees stacked on a leading [clients] axis; weights:
      [clients], 0 for padding and dropped clients). None keeps the streamed weighted mean.
      A function marked with ``host_aggregator`` runs outside jit on NumPy arrays (secure
      aggregation, Paillier); its metrics (floats) land in the History.
    report(rounds_done) -> dict of host-side metrics for the History (e.g. privacy spent).
    requires: ``simulate`` settings the strategy was built for (``dp`` accounts for a given
      clients_per_round, num_clients and sampling); ``simulate`` refuses to run with others.
    model_update: the update is a model delta shaped like params; wrappers that clip or noise it
      (dp, local_dp) rely on this. False when the update carries more (FedNova's tau, q-FFL's h,
      SCAFFOLD's control-variate delta).
    update_when_empty: run server_update even on a round with no participant (sum of weights 0);
      False keeps the server state unchanged on such a round.
    """

    name: str
    server_init: Callable
    client_init: Callable
    client_step: Callable
    client_final: Callable
    server_update: Callable
    broadcast: Callable = _identity_broadcast
    client_state_init: Callable = _no_client_state
    aggregate: Callable | None = None
    report: Callable | None = None
    requires: dict | None = None
    model_update: bool = True
    update_when_empty: bool = False


def host_aggregator(fn: Callable) -> Callable:
    """Mark an aggregate function to run on the host, outside the compiled round."""
    fn.host = True
    return fn


def is_host_aggregator(fn) -> bool:
    return bool(getattr(fn, "host", False))


class Model(NamedTuple):
    """A model as pure functions. init(key) -> params; apply(params, x) -> outputs, with
    x: [batch, *input_shape] and outputs [batch, num_classes] logits (or [batch] for
    regression, num_classes == 0)."""

    name: str
    init: Callable
    apply: Callable
    num_classes: int

    def example_losses(self, params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
        """[batch] per-example loss: softmax cross-entropy, or 0.5 * squared error (regression)."""
        out = self.apply(params, x)
        if self.num_classes > 0:
            return optax.softmax_cross_entropy_with_integer_labels(out, y.astype(jnp.int32))
        return 0.5 * (out - y) ** 2

    def loss(self, params: Params, batch: Batch) -> jax.Array:
        """Mean loss over the batch, weighted by ``batch.mask``."""
        per_example = self.example_losses(params, batch.x, batch.y)
        return jnp.sum(per_example * batch.mask) / jnp.maximum(jnp.sum(batch.mask), 1e-12)


def tree_nbytes(tree) -> int:
    """Bytes needed to send ``tree`` (shapes and dtypes only; works on abstract values)."""
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))
