"""Islands (no collaboration): every client trains its own model on its own data and keeps it as
its persistent client state; nothing is aggregated, the server model never moves. The baseline
that measures the value of collaboration: compare each party's island model with the federated
one (``fedlab.collaboration.compare_parties``). The History's evaluation columns describe the
untouched server model; the islands are in ``history.state.client_states``."""
from __future__ import annotations

import jax
import optax

from fedlab.algorithms import common
from fedlab.core.registry import register_algorithm
from fedlab.core.types import ClientOutput, Strategy


@register_algorithm("local")
def local(*, client_lr: float = 0.01, client_optimizer: optax.GradientTransformation | None = None) -> Strategy:
    """Islands: each client trains only its own model (no aggregation), the no-collaboration baseline."""
    opt = common.client_optimizer(client_lr, client_optimizer)

    def client_state_init(params):
        return params

    def client_init(w_global, own_params, info):
        return common.local_init(opt, own_params)

    def client_step(local_state, batch, loss_fn):
        return common.sgd_step(opt, local_state, lambda p: jax.value_and_grad(loss_fn)(p, batch))

    def client_final(local_state, own_params, info):
        zero = optax.tree_utils.tree_zeros_like(local_state.params)
        return ClientOutput(zero, 0.0 * info.num_examples, {}), local_state.params

    return Strategy("local", common.server_init, client_init, client_step, client_final, common.add_aggregate,
                    client_state_init=client_state_init)
