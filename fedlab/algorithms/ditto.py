"""Ditto (Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through Personalization").
The global model w is trained as in FedAvg; alongside, each client keeps a personal model v_k
(its persistent state) and, on the same mini-batches, steps it on
    F_k(v_k) + lam/2 ||v_k - w_t||^2,
with w_t the global model it received this round. The regularizer's step is taken implicitly
(a proximal step), v <- (v - lr grad F_k(v) + lr lam w_t) / (1 + lr lam), which is the paper's
step to first order in lr*lam and stable for any lam: lam = 0 is local training, lam -> inf
makes v_k the global model. Clients use v_k (personal columns); the global columns show w."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from fedlab.algorithms import common
from fedlab.core.checks import check_number
from fedlab.core.registry import register_algorithm
from fedlab.core.types import ClientOutput, Params, Strategy


class DittoLocal(NamedTuple):
    params: Params        # the client's copy of the global model, trained as in FedAvg
    opt_state: Any
    start: Params         # w_t, the global model received
    personal: Params      # v_k


@register_algorithm("ditto")
def ditto(*, lam: float = 0.1, client_lr: float = 0.01,
          client_optimizer: optax.GradientTransformation | None = None) -> Strategy:
    """Ditto: FedAvg's global model plus a personal model per client pulled towards it by lam."""
    lam = check_number("lam", lam, 0)
    opt = common.client_optimizer(client_lr, client_optimizer)
    lr = client_lr
    shrink = 1.0 / (1.0 + lr * lam)

    def client_init(w_global, personal, info):
        return DittoLocal(w_global, opt.init(w_global), w_global, personal)

    def client_step(local, batch, loss_fn):
        grads_v = jax.grad(loss_fn)(local.personal, batch)
        personal = jax.tree.map(lambda v, g, w: shrink * (v - lr * g + lr * lam * w),
                                local.personal, grads_v, local.start)
        stepped, loss = common.sgd_step(opt, local, lambda p: jax.value_and_grad(loss_fn)(p, batch))
        return stepped._replace(personal=personal), loss

    def client_final(local, personal, info):
        finished = info.num_steps >= info.full_steps       # as FedAvg: stragglers' global work dropped
        return ClientOutput(common.model_delta(local), info.num_examples * finished, {}), local.personal

    return Strategy("ditto", common.server_init, client_init, client_step, client_final, common.add_aggregate,
                    client_state_init=lambda params: params,
                    personal_params=lambda server_state, personal: personal)
