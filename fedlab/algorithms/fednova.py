"""FedNova (Wang et al. 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization"), with local SGD. Client i did tau_i steps and sends its normalized
update d_i = (y_i - x) / tau_i; the server steps x += tau_eff sum_i p_i d_i with
tau_eff = sum_i p_i tau_i and p_i = n_i / n. Partial work from stragglers is kept; when every
client does the same number of steps this is FedAvg."""
from __future__ import annotations

import jax.numpy as jnp
import optax

from fedlab.algorithms import common
from fedlab.algorithms.fedavg import fedavg
from fedlab.core.registry import register_algorithm
from fedlab.core.types import ClientOutput, Strategy

tree = optax.tree_utils


@register_algorithm("fednova")
def fednova(*, client_lr: float = 0.01) -> Strategy:
    """FedNova: updates normalized by each client's local steps, then rescaled by the mean steps."""
    local_sgd = fedavg(client_lr=client_lr)      # same local training as FedAvg

    def client_final(local, client_state, info):
        steps = info.num_steps.astype(jnp.float32)
        normalized = tree.tree_scale(1.0 / steps, common.model_delta(local))
        return ClientOutput((normalized, steps), info.num_examples * 1.0, {}), client_state

    def server_update(state, aggregate):
        normalized, tau_eff = aggregate                 # sum_i p_i d_i and sum_i p_i tau_i
        return state._replace(params=tree.tree_add_scale(state.params, tau_eff, normalized))

    return local_sgd._replace(name="fednova", client_final=client_final, server_update=server_update,
                              model_update=False)      # the update is (d_i, tau_i)
