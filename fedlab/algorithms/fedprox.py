"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"): each client
minimises F_k(w) + mu/2 ||w - w_t||^2, and partial work from stragglers is aggregated instead
of dropped."""
from __future__ import annotations

import jax
import optax

from fedlab.algorithms import common
from fedlab.core.checks import check_number
from fedlab.core.registry import register_algorithm
from fedlab.core.types import ClientOutput, Strategy


@register_algorithm("fedprox")
def fedprox(*, mu: float = 0.01, client_lr: float = 0.01,
            client_optimizer: optax.GradientTransformation | None = None) -> Strategy:
    """FedProx: proximal term mu/2 ||w - w_t||^2; stragglers' partial work kept."""
    mu = check_number("mu", mu, 0)
    opt = common.client_optimizer(client_lr, client_optimizer)

    def client_init(w_global, client_state, info):
        return common.local_init(opt, w_global)

    def client_step(local, batch, loss_fn):
        def loss_and_grad(params):
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            prox = optax.tree_utils.tree_sub(params, local.start)   # gradient of mu/2 ||w - w_t||^2
            return loss, optax.tree_utils.tree_add_scale(grads, mu, prox)

        return common.sgd_step(opt, local, loss_and_grad)

    def client_final(local, client_state, info):
        return ClientOutput(common.model_delta(local), info.num_examples * 1.0, {}), client_state

    return Strategy("fedprox", common.server_init, client_init, client_step, client_final,
                    common.add_aggregate)
