"""Per-FedAvg (Fallah et al. 2020, "Personalized Federated Learning with Theoretical Guarantees:
A Model-Agnostic Meta-Learning Approach"), the Hessian-free variant (Per-FedAvg (HF)). Each local
step splits its mini-batch into three parts D, D', D'' and does
    w_tmp = w - alpha grad f(w; D)
    w    <- w - beta (I - alpha H(w; D'')) grad f(w_tmp; D')
with the Hessian-vector product H(w; D'') v computed exactly (forward-over-reverse), not by the
paper's finite difference. The server averages as in FedAvg. A client personalises the global
model with one step of SGD at alpha on its own rows (the personal columns)."""
from __future__ import annotations

import jax
import optax

from fedlab.algorithms import common
from fedlab.core.checks import check_number
from fedlab.core.registry import register_algorithm
from fedlab.core.types import ClientOutput, Strategy

tree = optax.tree_utils


def thirds(batch):
    """Three parts of a batch (D, D', D''); with fewer than three rows the parts repeat rows."""
    B = batch.y.shape[0]
    if B < 3:
        return batch, batch, batch
    cut = [0, B // 3, 2 * B // 3, B]
    return tuple(jax.tree.map(lambda t, a=a, b=b: t[a:b], batch) for a, b in zip(cut[:-1], cut[1:]))


@register_algorithm("perfedavg")
def perfedavg(*, inner_lr: float = 0.1, client_lr: float = 0.01) -> Strategy:
    """Per-FedAvg (HF): MAML-type local steps with an exact Hessian-vector product; alpha = inner_lr."""
    alpha = check_number("inner_lr", inner_lr, 0, low_open=True)
    opt = common.client_optimizer(client_lr, None)

    def client_init(w_global, client_state, info):
        return common.local_init(opt, w_global)

    def client_step(local, batch, loss_fn):
        d, d_outer, d_hess = thirds(batch)

        def loss_and_grad(w):
            w_tmp = tree.tree_add_scale(w, -alpha, jax.grad(loss_fn)(w, d))
            loss, g = jax.value_and_grad(loss_fn)(w_tmp, d_outer)
            hvp = jax.jvp(lambda p: jax.grad(loss_fn)(p, d_hess), (w,), (g,))[1]
            return loss, tree.tree_add_scale(g, -alpha, hvp)

        return common.sgd_step(opt, local, loss_and_grad)

    def client_final(local, client_state, info):
        return ClientOutput(common.model_delta(local), info.num_examples * 1.0, {}), client_state

    def adapt(server_state, params, batch, loss_fn):
        return tree.tree_add_scale(params, -alpha, jax.grad(loss_fn)(params, batch))

    return Strategy("perfedavg", common.server_init, client_init, client_step, client_final,
                    common.add_aggregate, adapt=adapt, adapt_steps=1)
