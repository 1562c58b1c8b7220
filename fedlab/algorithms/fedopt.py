"""FedOpt (Reddi et al. 2021, "Adaptive Federated Optimization"): FedAvg's clients, and a server
that treats minus the averaged model delta as a gradient and steps an optax optimizer with it.
FedAvgM (server momentum), FedAdagrad, FedAdam and FedYogi are FedOpt with one server optimizer
each. optax's adam and yogi use bias correction, which the paper's Algorithm 2 leaves out;
optax's adagrad puts tau^2 inside the square root (1 / sqrt(v + tau^2)) and has no momentum."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from fedlab.algorithms.fedavg import fedavg
from fedlab.core.checks import check_number
from fedlab.core.registry import register_algorithm
from fedlab.core.types import Params, Strategy

SERVER_OPTIMIZERS = ("sgd", "adagrad", "adam", "yogi")


class FedOptState(NamedTuple):
    params: Params
    opt_state: Any


def make_server_optimizer(name: str, *, server_lr: float, momentum: float = 0.0, beta1: float = 0.9,
                          beta2: float = 0.99, tau: float = 1e-3) -> optax.GradientTransformation:
    """The optax optimizer called ``name`` (one of SERVER_OPTIMIZERS) with the paper's knobs."""
    if name not in SERVER_OPTIMIZERS:
        raise ValueError(f"server_opt must be one of {list(SERVER_OPTIMIZERS)}, got {name!r}")
    server_lr = check_number("server_lr", server_lr, 0, low_open=True)
    momentum, beta1, beta2 = (check_number(knob, value, 0, 1, high_open=True)
                              for knob, value in (("momentum", momentum), ("beta1", beta1), ("beta2", beta2)))
    tau = check_number("tau", tau, 0, low_open=True)
    if name == "sgd":
        return optax.sgd(server_lr, momentum=momentum or None)
    if name == "adagrad":
        return optax.adagrad(server_lr, initial_accumulator_value=tau ** 2, eps=tau ** 2)
    if name == "adam":
        return optax.adam(server_lr, b1=beta1, b2=beta2, eps=tau)
    return optax.yogi(server_lr, b1=beta1, b2=beta2, eps=tau)


def with_server_optimizer(strategy: Strategy, opt: optax.GradientTransformation, name: str) -> Strategy:
    """``strategy`` with its server step replaced by ``opt`` applied to minus the aggregate."""

    def server_init(params):
        return FedOptState(params, opt.init(params))

    def server_update(state, aggregate):
        pseudo_grad = jax.tree.map(lambda d: -d, aggregate)
        updates, opt_state = opt.update(pseudo_grad, state.opt_state, state.params)
        return FedOptState(optax.apply_updates(state.params, updates), opt_state)

    return strategy._replace(name=name, server_init=server_init, server_update=server_update)


@register_algorithm("fedopt")
def fedopt(*, server_opt: str = "adam", server_lr: float = 0.01, momentum: float = 0.0,
           beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3, client_lr: float = 0.01,
           client_optimizer: optax.GradientTransformation | None = None,
           server_optimizer: optax.GradientTransformation | None = None) -> Strategy:
    """FedOpt: FedAvg clients, server optimizer ``server_opt`` (sgd, adagrad, adam, yogi) or any optax one."""
    opt = server_optimizer or make_server_optimizer(server_opt, server_lr=server_lr, momentum=momentum,
                                                    beta1=beta1, beta2=beta2, tau=tau)
    name = "fedopt" if server_optimizer is not None else f"fedopt_{server_opt}"
    return with_server_optimizer(fedavg(client_lr=client_lr, client_optimizer=client_optimizer), opt, name)


@register_algorithm("fedavgm")
def fedavgm(*, server_lr: float = 1.0, momentum: float = 0.9, client_lr: float = 0.01,
            client_optimizer: optax.GradientTransformation | None = None) -> Strategy:
    """FedAvgM (Hsu et al. 2019): FedAvg with server momentum (server SGD)."""
    opt = make_server_optimizer("sgd", server_lr=server_lr, momentum=momentum)
    return with_server_optimizer(fedavg(client_lr=client_lr, client_optimizer=client_optimizer), opt, "fedavgm")


@register_algorithm("fedadagrad")
def fedadagrad(*, server_lr: float = 0.1, tau: float = 1e-3, client_lr: float = 0.01,
               client_optimizer: optax.GradientTransformation | None = None) -> Strategy:
    """FedAdagrad (Reddi et al. 2021): server Adagrad on the averaged model delta."""
    opt = make_server_optimizer("adagrad", server_lr=server_lr, tau=tau)
    return with_server_optimizer(fedavg(client_lr=client_lr, client_optimizer=client_optimizer), opt,
                                 "fedadagrad")


@register_algorithm("fedadam")
def fedadam(*, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
            client_lr: float = 0.01, client_optimizer: optax.GradientTransformation | None = None) -> Strategy:
    """FedAdam (Reddi et al. 2021): server Adam on the averaged model delta."""
    opt = make_server_optimizer("adam", server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)
    return with_server_optimizer(fedavg(client_lr=client_lr, client_optimizer=client_optimizer), opt, "fedadam")


@register_algorithm("fedyogi")
def fedyogi(*, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
            client_lr: float = 0.01, client_optimizer: optax.GradientTransformation | None = None) -> Strategy:
    """FedYogi (Reddi et al. 2021): server Yogi on the averaged model delta."""
    opt = make_server_optimizer("yogi", server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)
    return with_server_optimizer(fedavg(client_lr=client_lr, client_optimizer=client_optimizer), opt, "fedyogi")
