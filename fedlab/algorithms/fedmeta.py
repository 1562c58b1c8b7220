"""FedMeta (Chen et al. 2018, "Federated Meta-Learning with Fast Convergence and Efficient
Communication"): the federation learns an initialisation that adapts to a client in a few steps.

Every local step of a client is one meta-step on one mini-batch, split into a support half and a
query half: the inner loop adapts theta on the support rows,
    theta' = theta - alpha * grad L_support(theta)        (``inner_steps`` times),
and the outer step moves theta along the gradient of L_query(theta') with the client optimizer
(``client_lr`` is the meta learning rate beta). The server averages the clients' deltas as in
FedAvg; with one local step this is FedMeta's server step theta -= beta * mean meta-gradient.

- ``maml``: the exact meta-gradient, second order through the inner loop (JAX differentiates the
  inner gradient steps).
- ``fomaml``: first-order MAML, the inner gradients treated as constants: grad L_query(theta').
- ``metasgd`` (Li et al. 2017): alpha is a learned per-parameter step size, meta-trained with
  theta (it lives in the server state and is sent both ways; bytes count it).
- ``reptile`` (Nichol et al. 2018): local SGD, then theta += server_lr * mean(theta_k - theta);
  with server_lr = 1 it is FedAvg (Jiang et al. 2019, "Improving Federated Learning
  Personalization via Model Agnostic Meta Learning").

A client uses the global model after ``inner_steps`` steps of its adaptation (alpha, or
Meta-SGD's learned alpha) on its own training rows, which the personal columns report; new
clients (``holdout_clients``) adapt the same way for ``adapt_steps`` steps.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import optax

from fedlab.algorithms import common
from fedlab.algorithms.fedavg import fedavg
from fedlab.core.checks import check_int, check_number
from fedlab.core.registry import register_algorithm
from fedlab.core.types import ClientOutput, Params, Strategy

tree = optax.tree_utils


def support_query(batch):
    """The batch's first half (support) and second half (query); a batch of one row is both."""
    B = batch.y.shape[0]
    half = max(B // 2, 1)
    return jax.tree.map(lambda t: t[:half], batch), jax.tree.map(lambda t: t[half:] if B > 1 else t, batch)


def inner_step(params, batch, loss_fn, alpha, first_order: bool):
    """theta - alpha * grad L(theta) (alpha a scalar or a pytree like params); first_order: the
    gradient is a constant for the outer derivative."""
    grads = jax.grad(loss_fn)(params, batch)
    if first_order:
        grads = jax.lax.stop_gradient(grads)
    if isinstance(alpha, float):
        return tree.tree_add_scale(params, -alpha, grads)
    return jax.tree.map(lambda p, a, g: p - a * g, params, alpha, grads)


def meta_loss(params, alpha, support, query, loss_fn, inner_steps: int, first_order: bool):
    """L_query(theta') with theta' the result of ``inner_steps`` inner steps on the support rows."""
    adapted = params
    for _ in range(inner_steps):
        adapted = inner_step(adapted, support, loss_fn, alpha, first_order)
    return loss_fn(adapted, query)


def _maml(name: str, first_order: bool, inner_lr: float, inner_steps: int, client_lr: float,
          client_optimizer) -> Strategy:
    alpha = check_number("inner_lr", inner_lr, 0, low_open=True)
    check_int("inner_steps", inner_steps, 1)
    opt = common.client_optimizer(client_lr, client_optimizer)

    def client_init(w_global, client_state, info):
        return common.local_init(opt, w_global)

    def client_step(local, batch, loss_fn):
        support, query = support_query(batch)
        objective = lambda p: meta_loss(p, alpha, support, query, loss_fn, inner_steps, first_order)  # noqa: E731
        return common.sgd_step(opt, local, jax.value_and_grad(objective))

    def client_final(local, client_state, info):
        return ClientOutput(common.model_delta(local), info.num_examples * 1.0, {}), client_state

    def adapt(server_state, params, batch, loss_fn):
        return inner_step(params, batch, loss_fn, alpha, True)

    return Strategy(name, common.server_init, client_init, client_step, client_final, common.add_aggregate,
                    adapt=adapt, adapt_steps=inner_steps)


@register_algorithm("maml")
def maml(*, inner_lr: float = 0.1, inner_steps: int = 1, client_lr: float = 0.01,
         client_optimizer: optax.GradientTransformation | None = None) -> Strategy:
    """FedMeta-MAML: meta-gradient second order through the inner loop (inner_lr alpha, client_lr beta)."""
    return _maml("maml", False, inner_lr, inner_steps, client_lr, client_optimizer)


@register_algorithm("fomaml")
def fomaml(*, inner_lr: float = 0.1, inner_steps: int = 1, client_lr: float = 0.01,
           client_optimizer: optax.GradientTransformation | None = None) -> Strategy:
    """FedMeta-FOMAML: first-order MAML (the inner gradients are not differentiated)."""
    return _maml("fomaml", True, inner_lr, inner_steps, client_lr, client_optimizer)


class MetaSGDState(NamedTuple):
    params: Params
    alpha: Params          # per-parameter inner step sizes, shaped like params


@register_algorithm("metasgd")
def metasgd(*, inner_lr: float = 0.1, inner_steps: int = 1, client_lr: float = 0.01) -> Strategy:
    """FedMeta-Meta-SGD: learned per-parameter inner step sizes (initialised at inner_lr)."""
    alpha0 = check_number("inner_lr", inner_lr, 0, low_open=True)
    check_int("inner_steps", inner_steps, 1)
    opt = common.client_optimizer(client_lr, None)

    def server_init(params):
        return MetaSGDState(params, jax.tree.map(lambda p: p * 0 + alpha0, params))

    def client_init(state, client_state, info):
        return common.local_init(opt, (state.params, state.alpha))

    def client_step(local, batch, loss_fn):
        support, query = support_query(batch)

        def objective(both):
            params, alpha = both
            return meta_loss(params, alpha, support, query, loss_fn, inner_steps, False)

        return common.sgd_step(opt, local, jax.value_and_grad(objective))

    def client_final(local, client_state, info):
        return ClientOutput(common.model_delta(local), info.num_examples * 1.0, {}), client_state

    def server_update(state, aggregate):
        d_params, d_alpha = aggregate
        return MetaSGDState(tree.tree_add(state.params, d_params), tree.tree_add(state.alpha, d_alpha))

    def adapt(server_state, params, batch, loss_fn):
        return inner_step(params, batch, loss_fn, server_state.alpha, True)

    return Strategy("metasgd", server_init, client_init, client_step, client_final, server_update,
                    broadcast=lambda state: state, model_update=False,     # the update carries alpha too
                    adapt=adapt, adapt_steps=inner_steps)


@register_algorithm("reptile")
def reptile(*, server_lr: float = 0.5, client_lr: float = 0.01,
            client_optimizer: optax.GradientTransformation | None = None) -> Strategy:
    """FedMeta-Reptile: local SGD, theta += server_lr * mean(theta_k - theta) (server_lr 1: FedAvg)."""
    epsilon = check_number("server_lr", server_lr, 0, low_open=True)

    def server_update(state, aggregate):
        return state._replace(params=tree.tree_add_scale(state.params, epsilon, aggregate))

    return fedavg(client_lr=client_lr, client_optimizer=client_optimizer)._replace(
        name="reptile", server_update=server_update)
