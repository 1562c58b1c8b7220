"""q-FFL, solved by q-FedAvg (Li et al. 2020, "Fair Resource Allocation in Federated Learning").
The objective sum_k p_k F_k(w)^(q+1) / (q+1) weighs clients with a high loss more (q = 0 is
FedAvg's objective; larger q is fairer). Client k runs local SGD from w to w_k, and with
L = 1 / client_lr sends Delta_k = F_k^q L (w - w_k) and h_k = q F_k^(q-1) ||L (w - w_k)||^2 + L F_k^q,
where F_k = F_k(w) is its loss at the received model, estimated on the mini-batches it drew
this round. The server steps w -= sum_k p_k Delta_k / sum_k p_k h_k with p_k = n_k / n (the
paper samples clients with probability p_k and averages uniformly). Fairness shows in the
History as client_acc_std (its square is the variance of per-client accuracy)."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedlab.algorithms import common
from fedlab.core.checks import check_number
from fedlab.core.registry import register_algorithm
from fedlab.core.types import ClientOutput, Params, Strategy

tree = optax.tree_utils


class QfflLocal(NamedTuple):
    params: Params
    opt_state: Any
    start: Params
    start_loss_sum: jax.Array    # sum over steps of F_k(w) on that step's batch
    steps: jax.Array


@register_algorithm("qffl")
def qffl(*, q: float = 1.0, client_lr: float = 0.01) -> Strategy:
    """q-FFL (q-FedAvg): clients with a higher loss get more weight; q = 0 is FedAvg."""
    q = check_number("q", q, 0)
    opt = common.client_optimizer(client_lr, None)
    lipschitz = 1.0 / client_lr

    def client_init(w_global, client_state, info):
        return QfflLocal(w_global, opt.init(w_global), w_global, jnp.zeros(()), jnp.zeros(()))

    def client_step(local, batch, loss_fn):
        stepped, loss = common.sgd_step(opt, local, lambda p: jax.value_and_grad(loss_fn)(p, batch))
        return stepped._replace(start_loss_sum=local.start_loss_sum + loss_fn(local.start, batch),
                                steps=local.steps + 1), loss

    def client_final(local, client_state, info):
        f_k = jnp.maximum(local.start_loss_sum / jnp.maximum(local.steps, 1), 1e-10)
        grad_k = tree.tree_scale(lipschitz, tree.tree_sub(local.start, local.params))   # L (w - w_k)
        delta = tree.tree_scale(f_k ** q, grad_k)
        h = q * f_k ** (q - 1) * tree.tree_norm(grad_k, squared=True) + lipschitz * f_k ** q
        return ClientOutput((delta, h), info.num_examples * 1.0, {"start_loss": f_k}), client_state

    def server_update(state, aggregate):
        delta, h = aggregate
        return state._replace(params=tree.tree_add_scale(state.params, -1.0 / h, delta))

    return Strategy("qffl", common.server_init, client_init, client_step, client_final, server_update,
                    model_update=False)      # the update is (Delta_k, h_k)
