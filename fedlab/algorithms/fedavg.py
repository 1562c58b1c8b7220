"""FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"): local SGD, then w_{t+1} = sum_k (n_k / n) w_k over the clients that
finished. Stragglers (clients that did fewer steps than asked) are dropped, as in the FedProx
paper's FedAvg baseline."""
from __future__ import annotations

import jax
import optax

from fedlab.algorithms import common
from fedlab.core.registry import register_algorithm
from fedlab.core.types import ClientOutput, Strategy


@register_algorithm("fedavg")
def fedavg(*, client_lr: float = 0.01, client_optimizer: optax.GradientTransformation | None = None) -> Strategy:
    """FedAvg: sample-weighted average of client models; stragglers dropped."""
    opt = common.client_optimizer(client_lr, client_optimizer)

    def client_init(w_global, client_state, info):
        return common.local_init(opt, w_global)

    def client_step(local, batch, loss_fn):
        return common.sgd_step(opt, local, lambda p: jax.value_and_grad(loss_fn)(p, batch))

    def client_final(local, client_state, info):
        finished = info.num_steps >= info.full_steps
        weight = info.num_examples * finished
        return ClientOutput(common.model_delta(local), weight, {}), client_state

    return Strategy("fedavg", common.server_init, client_init, client_step, client_final,
                    common.add_aggregate)
