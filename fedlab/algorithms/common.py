"""Pieces most strategies share: local SGD with an optax optimizer and a server that adds the
aggregated model delta. Strategy files combine them; none of them knows jit or vmap."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from fedlab.core.checks import check_number
from fedlab.core.types import Params


class ServerState(NamedTuple):
    params: Params


class LocalState(NamedTuple):
    """A client's local training state. start: the model it received (w_t)."""

    params: Params
    opt_state: Any
    start: Params


def client_optimizer(client_lr: float, client_optimizer: optax.GradientTransformation | None):
    """The client's optax optimizer: ``client_optimizer`` if given, else plain SGD at client_lr."""
    client_lr = check_number("client_lr", client_lr, 0, low_open=True)
    return client_optimizer if client_optimizer is not None else optax.sgd(client_lr)


def local_init(opt: optax.GradientTransformation, w_global: Params) -> LocalState:
    return LocalState(w_global, opt.init(w_global), w_global)


def sgd_step(opt, local: LocalState, loss_and_grad) -> tuple[LocalState, jax.Array]:
    """One optimizer step; loss_and_grad(params) -> (loss, grads)."""
    loss, grads = loss_and_grad(local.params)
    updates, opt_state = opt.update(grads, local.opt_state, local.params)
    return local._replace(params=optax.apply_updates(local.params, updates), opt_state=opt_state), loss


def model_delta(local: LocalState) -> Params:
    """The update a client sends: w_k - w_t."""
    return optax.tree_utils.tree_sub(local.params, local.start)


def server_init(params: Params) -> ServerState:
    return ServerState(params)


def add_aggregate(state: ServerState, aggregate: Params) -> ServerState:
    """w_{t+1} = w_t + sum_k (n_k / n) (w_k - w_t) = sum_k (n_k / n) w_k."""
    return state._replace(params=optax.apply_updates(state.params, aggregate))
