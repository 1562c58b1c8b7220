"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning"), option II. Client i keeps a control variate c_i (its persistent client state), the
server keeps c. Each local step uses the corrected gradient g_i(y) - c_i + c; afterwards
c_i+ = c_i - c + (x - y_i) / (K_i lr), with K_i the steps the client did. The server moves
x += server_lr * mean_S (y_i - x) and c += (1 / N) sum_S (c_i+ - c_i). Clients are averaged
uniformly, as in the paper, so the fixed point minimises the mean of the client objectives."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedlab.core.checks import check_number
from fedlab.core.registry import register_algorithm
from fedlab.core.types import ClientOutput, Params, Strategy

tree = optax.tree_utils


class ScaffoldState(NamedTuple):
    params: Params
    control: Params       # c, the server control variate


class ScaffoldLocal(NamedTuple):
    params: Params
    start: Params
    correction: Params    # c - c_i, added to every local gradient


@register_algorithm("scaffold")
def scaffold(*, client_lr: float = 0.01, server_lr: float = 1.0) -> Strategy:
    """SCAFFOLD: control variates correct client drift (option II, local SGD)."""
    client_lr = check_number("client_lr", client_lr, 0, low_open=True)
    server_lr = check_number("server_lr", server_lr, 0, low_open=True)

    def server_init(params):
        return ScaffoldState(params, tree.tree_zeros_like(params))

    def broadcast(state):
        return state

    def client_state_init(params):
        return tree.tree_zeros_like(params)          # c_i = 0

    def client_init(server, control_i, info):
        return ScaffoldLocal(server.params, server.params, tree.tree_sub(server.control, control_i))

    def client_step(local, batch, loss_fn):
        loss, grads = jax.value_and_grad(loss_fn)(local.params, batch)
        step = tree.tree_add(grads, local.correction)
        return local._replace(params=tree.tree_add_scale(local.params, -client_lr, step)), loss

    def client_final(local, control_i, info):
        delta = tree.tree_sub(local.params, local.start)                     # y_i - x
        # c_i+ = c_i - c + (x - y_i) / (K_i lr) = -correction - delta / (K_i lr)
        new_control = tree.tree_add_scale(tree.tree_scale(-1.0, local.correction),
                                          -1.0 / (info.num_steps * client_lr), delta)
        # mean over the sampled clients of (|S| / N) (c_i+ - c_i) is (1 / N) sum_S (c_i+ - c_i)
        delta_control = tree.tree_scale(info.sampled_fraction, tree.tree_sub(new_control, control_i))
        return ClientOutput((delta, delta_control), jnp.float32(1.0), {}), new_control

    def server_update(state, aggregate):
        delta, delta_control = aggregate
        return ScaffoldState(tree.tree_add_scale(state.params, server_lr, delta),
                             tree.tree_add(state.control, delta_control))

    return Strategy("scaffold", server_init, client_init, client_step, client_final, server_update,
                    broadcast=broadcast, client_state_init=client_state_init,
                    model_update=False)      # the update is (y_i - x, control-variate delta)
