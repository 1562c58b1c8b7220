"""FedPer (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers") and FedRep
(Collins et al. 2021, "Exploiting Shared Representations for Personalized Federated Learning"):
a shared body (averaged as in FedAvg) and a personal head per client (its persistent state,
never sent). FedPer trains body and head together; FedRep first trains the head with the body
frozen (``head_fraction`` of the local steps), then the body with the head frozen. Only the
body goes up, so bytes_up counts the body alone.

The head is the last ``head_layers`` layers of the model, a layer being a group of parameters
under one parent in ``jax.tree`` order (logreg: one layer, W and b; mlp: each list entry; cnn:
conv[0], conv[1], dense, out). A head of every layer is the whole model: local training.
The server's copy of the head stays at its initial value (no head is aggregated), so the
global columns of the History show the shared body with an untrained head; read the personal
columns."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedlab.algorithms import common
from fedlab.core.checks import check_int, check_number
from fedlab.core.registry import register_algorithm
from fedlab.core.types import ClientOutput, Params, Strategy


def head_positions(params, head_layers: int) -> tuple[bool, ...]:
    """For each leaf of ``params`` (jax.tree order): True if it belongs to the last
    ``head_layers`` layers (a layer: the leaves that share a parent path)."""
    paths = [path[:-1] for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    layers = list(dict.fromkeys(paths))                 # parents in order of first appearance
    head = set(layers[-head_layers:]) if head_layers > 0 else set()
    return tuple(p in head for p in paths)


def split(params, head_layers: int) -> tuple[tuple, tuple]:
    """(body leaves, head leaves) of ``params`` as tuples."""
    leaves = jax.tree.leaves(params)
    mask = head_positions(params, head_layers)
    return (tuple(x for x, h in zip(leaves, mask) if not h), tuple(x for x, h in zip(leaves, mask) if h))


def merge(like, body: tuple, head: tuple, head_layers: int):
    """The params pytree shaped like ``like`` with these body and head leaves."""
    mask = head_positions(like, head_layers)
    body_it, head_it = iter(body), iter(head)
    leaves = [next(head_it) if h else next(body_it) for h in mask]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


class RepLocal(NamedTuple):
    params: Params
    opt_state: Any
    start: Params
    step: jax.Array          # local steps done
    head_steps: jax.Array    # FedRep: steps that train the head only


def _personal_strategy(name: str, head_layers: int, client_lr: float, head_fraction: float | None) -> Strategy:
    check_int("head_layers", head_layers, 1)
    opt = common.client_optimizer(client_lr, None)

    def personal_params(server_state, head):
        return merge(server_state.params, split(server_state.params, head_layers)[0], head, head_layers)

    def client_init(w_global, head, info):
        params = merge(w_global, split(w_global, head_layers)[0], head, head_layers)
        head_steps = (jnp.zeros((), jnp.int32) if head_fraction is None else
                      jnp.round(head_fraction * info.num_steps).astype(jnp.int32))
        return RepLocal(params, opt.init(params), params, jnp.zeros((), jnp.int32), head_steps)

    def client_step(local, batch, loss_fn):
        def loss_and_grad(params):
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            if head_fraction is None:
                return loss, grads
            training_head = local.step < local.head_steps
            mask = head_positions(params, head_layers)
            leaves = [jnp.where(training_head == h, g, 0.0) for g, h in zip(jax.tree.leaves(grads), mask)]
            return loss, jax.tree.unflatten(jax.tree.structure(grads), leaves)

        stepped, loss = common.sgd_step(opt, local, loss_and_grad)
        return stepped._replace(step=local.step + 1), loss

    def client_final(local, head, info):
        body_new, head_new = split(local.params, head_layers)
        body_old = split(local.start, head_layers)[0]
        delta = tuple(a - b for a, b in zip(body_new, body_old))
        return ClientOutput(delta, info.num_examples * 1.0, {}), head_new

    def server_update(state, aggregate):
        body, head = split(state.params, head_layers)
        body = tuple(b + d for b, d in zip(body, aggregate))
        return state._replace(params=merge(state.params, body, head, head_layers))

    return Strategy(name, common.server_init, client_init, client_step, client_final, server_update,
                    client_state_init=lambda params: split(params, head_layers)[1],
                    personal_params=personal_params)


@register_algorithm("fedper")
def fedper(*, head_layers: int = 1, client_lr: float = 0.01) -> Strategy:
    """FedPer: shared body averaged, personal head (last head_layers layers) trained jointly."""
    return _personal_strategy("fedper", head_layers, client_lr, None)


@register_algorithm("fedrep")
def fedrep(*, head_layers: int = 1, head_fraction: float = 0.5, client_lr: float = 0.01) -> Strategy:
    """FedRep: per round, the head trains first (head_fraction of the steps), then the shared body."""
    head_fraction = check_number("head_fraction", head_fraction, 0, 1)
    return _personal_strategy("fedrep", head_layers, client_lr, head_fraction)
