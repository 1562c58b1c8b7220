"""Local training, the data-island baseline: each client trains only on its own data, with the
same local budget per round as a federated run (the sampled clients do ``local_steps`` or
``local_epochs`` of SGD on their own rows), and sends nothing: no update goes up (bytes_up 0)
and nothing comes down (bytes_down 0). Each client's model is its persistent client state; the
History's personal columns are the islands' accuracy. There is no global model, so the global
columns (test_accuracy, train_loss, client_acc_*) are NaN."""
from __future__ import annotations

import jax
import optax

from fedlab.algorithms import common
from fedlab.core.registry import register_algorithm
from fedlab.core.types import ClientOutput, Strategy


@register_algorithm("local")
def local(*, client_lr: float = 0.01, client_optimizer: optax.GradientTransformation | None = None) -> Strategy:
    """Local training only (islands): every client keeps its own model, nothing is sent."""
    opt = common.client_optimizer(client_lr, client_optimizer)

    def client_state_init(params):
        return params                          # every island starts from the same initial model

    def client_init(nothing, own_params, info):
        return common.local_init(opt, own_params)

    def client_step(local_state, batch, loss_fn):
        return common.sgd_step(opt, local_state, lambda p: jax.value_and_grad(loss_fn)(p, batch))

    def client_final(local_state, own_params, info):
        # weight n_k: the client counts as a participant (its loss is reported); its update is empty
        return ClientOutput((), info.num_examples * 1.0, {}), local_state.params

    return Strategy("local", common.server_init, client_init, client_step, client_final,
                    lambda state, aggregate: state, broadcast=lambda state: (),
                    client_state_init=client_state_init, model_update=False,
                    personal_params=lambda server_state, own_params: own_params, global_model=False)
