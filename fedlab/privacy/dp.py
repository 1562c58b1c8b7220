"""Differential privacy as strategy wrappers: ``dp(strategy, ...)`` and ``local_dp(strategy, ...)``.

``dp`` is user-level central DP (DP-FedAvg, McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models"): each client clips its update to L2 norm C, the server adds
Gaussian noise of standard deviation z*C to the sum and divides by the expected number of clients
m (not the realised one, which would leak)::

    update_k = update_k * min(1, C / ||update_k||)
    aggregate = (sum_k update_k + N(0, (z C)^2 I)) / m

Clients are weighted equally (the inner strategy's weight only says whether a client counts:
weight 0 drops it). With ``adaptive_clipping`` (Andrew et al. 2021, "Differentially Private
Learning with Adaptive Clipping"), C follows the ``target_quantile`` of the update norms:
``C <- C * exp(-clip_lr * (b - target_quantile))`` with b the noised fraction of clients whose
norm was <= C. The count noise costs privacy, so the update noise grows to
``z_update = (z^-2 - (2 sigma_b)^-2)^-1/2`` and the whole round stays a Gaussian of multiplier z.

Clients send ``update / C`` (inside the unit ball) and the server multiplies the noised mean by
C, so the current clip norm lives only in the server state and in what it broadcasts.
The per-client training metrics the engine reports (e.g. train_loss) are not privatised.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedlab.core.checks import check_int, check_number
from fedlab.core.types import ClientOutput, Strategy
from fedlab.privacy import accounting

_LOCAL_NOISE_TAG = 0x1D9  # folded into a client's key so its noise is independent of the inner strategy's


class DPServerState(NamedTuple):
    """inner: the wrapped strategy's server state; clip: the current clip norm C (scalar)."""

    inner: Any
    clip: jax.Array

    @property
    def params(self):
        return self.inner.params


class DPLocalState(NamedTuple):
    inner: Any
    clip: jax.Array


class DPUpdate(NamedTuple):
    """What a DP client sends. scaled: update * min(1, C / ||update||) / C (norm <= 1);
    unclipped: 1.0 if ||update|| <= C else 0.0 (used by adaptive clipping); clip: the C it used
    (public: the server broadcast it), so the round's metrics can report it."""

    scaled: Any
    unclipped: jax.Array
    clip: jax.Array


def clip_by_global_norm(tree, clip):
    """(tree * min(1, clip / ||tree||), ||tree||), with ||.|| the L2 norm over all leaves."""
    norm = optax.tree_utils.tree_norm(tree)
    factor = jnp.minimum(1.0, clip / jnp.maximum(norm, 1e-30))
    return optax.tree_utils.tree_scale(factor, tree), norm


def gaussian_like(key, tree, stddev):
    """A pytree shaped like ``tree`` of independent N(0, stddev^2) draws."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [stddev * jax.random.normal(k, x.shape, x.dtype)
                                        for k, x in zip(keys, leaves)])


def _check_strategy(strategy, wrapper: str):
    if not isinstance(strategy, Strategy):
        raise ValueError(f"strategy must be a fedlab Strategy, got {type(strategy).__name__}")
    if getattr(strategy.aggregate, "decodes_compressed", False):
        raise ValueError(f"{wrapper}: compress outside DP, compressed({wrapper}(strategy), up=...), not inside: "
                         + ("clipping and noising after the server decodes would send dense updates"
                            if wrapper == "dp" else
                            "noise on a compressed update either fills it (dense again) or covers only the "
                            "kept coordinates, whose choice (a top-k support) leaks the raw update"))
    if strategy.aggregate is not None:
        raise ValueError(f"strategy {strategy.name!r} already has a custom aggregate; DP replaces the "
                         "aggregation, so wrap a strategy that uses the engine's weighted mean")
    if not strategy.model_update:
        raise ValueError(f"{wrapper}() clips and noises a model update (a delta shaped like the params); "
                         f"{strategy.name} sends more than that (model_update=False: e.g. FedNova's tau, "
                         "q-FFL's h, SCAFFOLD's control-variate delta), which must not be clipped or noised")


def dp(strategy: Strategy, *, clip: float, clients_per_round: int, num_clients: int,
       sampling: str = "poisson", noise_multiplier: float | None = None,
       target_epsilon: float | None = None, delta: float = 1e-5, rounds: int | None = None,
       accountant: str = "rdp", adaptive_clipping: bool = False, target_quantile: float = 0.5,
       clip_lr: float = 0.2, count_noise_stddev: float | None = None) -> Strategy:
    """Central user-level DP for any strategy (DP-FedAvg; see the module docstring).

    Give ``noise_multiplier`` z (epsilon is then reported each round), or ``target_epsilon`` and
    ``rounds`` (z is calibrated so the whole run spends target_epsilon at ``delta``).
    ``clients_per_round``/``num_clients`` and ``sampling`` must match the engine's sampling:
    they set the amplification the accountant assumes (``simulate`` checks that they do).
    ``report`` adds ``epsilon`` (spent so far) and ``noise_multiplier`` to the History.
    ``count_noise_stddev`` (sigma_b) defaults to clients_per_round / 20, as Andrew et al.
    recommend.
    """
    _check_strategy(strategy, "dp")
    accounting.check_clip(clip)
    accounting.check_delta(delta)
    num_clients = int(check_int("num_clients", num_clients, 1))
    clients_per_round = int(check_int("clients_per_round", clients_per_round, 1, num_clients))
    sampling_rate = clients_per_round / num_clients
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ValueError("give exactly one of noise_multiplier and target_epsilon")
    if rounds is not None:
        rounds = int(check_int("rounds", rounds, 1))
    check_number("target_quantile", target_quantile, 0, 1, low_open=True, high_open=True)
    check_number("clip_lr", clip_lr, 0, low_open=True)
    if count_noise_stddev is not None:
        check_number("count_noise_stddev", count_noise_stddev, 0)
    accounting.check_sampling(sampling_rate, rounds or 1, accountant, sampling, num_clients)
    if target_epsilon is not None:
        if rounds is None:
            raise ValueError("rounds is required with target_epsilon (the budget is for the whole run)")
        noise_multiplier = accounting.calibrate(target_epsilon, delta, rounds, sampling_rate,
                                                accountant=accountant, sampling=sampling,
                                                num_clients=num_clients)
    accounting.check_noise(noise_multiplier)
    z = float(noise_multiplier)
    sigma_b = clients_per_round / 20 if count_noise_stddev is None else float(count_noise_stddev)
    if adaptive_clipping and z > 0:
        if not 2 * sigma_b > z:
            raise ValueError(f"count_noise_stddev must be > noise_multiplier / 2 = {z / 2} with "
                             f"adaptive_clipping, got {sigma_b}")
        z_update = (z ** -2 - (2 * sigma_b) ** -2) ** -0.5
    else:
        z_update = z
    m = float(clients_per_round)

    def server_init(params):
        return DPServerState(strategy.server_init(params), jnp.asarray(clip, jnp.float32))

    def broadcast(state):
        return strategy.broadcast(state.inner), state.clip

    def client_init(received, client_state, info):
        inner_broadcast, clip_now = received
        return DPLocalState(strategy.client_init(inner_broadcast, client_state, info), clip_now)

    def client_step(local, batch, loss_fn):
        inner, loss = strategy.client_step(local.inner, batch, loss_fn)
        return local._replace(inner=inner), loss

    def client_final(local, client_state, info):
        out, client_state = strategy.client_final(local.inner, client_state, info)
        clipped, norm = clip_by_global_norm(out.update, local.clip)
        update = DPUpdate(optax.tree_utils.tree_scale(1.0 / local.clip, clipped),
                          (norm <= local.clip).astype(jnp.float32), local.clip)
        weight = (out.weight > 0).astype(jnp.float32)
        return ClientOutput(update, weight, out.metrics), client_state

    def aggregate(updates, weights, key):
        take = weights > 0
        summed = jax.tree.map(
            lambda u: jnp.sum(jnp.where(take.reshape((-1,) + (1,) * (u.ndim - 1)), u, 0), axis=0), updates)
        key_update, key_count = jax.random.split(key)
        noised = optax.tree_utils.tree_add(summed.scaled, gaussian_like(key_update, summed.scaled, z_update))
        mean = optax.tree_utils.tree_scale(1.0 / m, noised)
        metrics = {"clip": jnp.max(jnp.where(take, updates.clip, 0.0))}
        unclipped = summed.unclipped
        if adaptive_clipping:
            unclipped = (unclipped + sigma_b * jax.random.normal(key_count)) / m
            metrics["unclipped_fraction"] = unclipped
        return DPUpdate(mean, unclipped, metrics["clip"]), metrics

    aggregate.unit_ball_sum = True     # sums updates inside the unit ball: compressed() keeps them there
    def server_update(state, agg):
        inner = strategy.server_update(state.inner, optax.tree_utils.tree_scale(state.clip, agg.scaled))
        clip_next = state.clip
        if adaptive_clipping:
            clip_next = state.clip * jnp.exp(-clip_lr * (agg.unclipped - target_quantile))
        return DPServerState(inner, clip_next)

    spent = accounting.epsilon_tracker(z, sampling_rate, delta, accountant=accountant, sampling=sampling,
                                       num_clients=num_clients)

    def report(rounds_done):
        return {"epsilon": spent(int(rounds_done)), "noise_multiplier": z}

    requires = {**(strategy.requires or {}), "clients_per_round": clients_per_round,
                "num_clients": num_clients, "sampling": sampling}
    # update_when_empty: an empty Poisson round still releases its noise; skipping it would reveal
    # that nobody was sampled, which the accountant does not cover.
    # the model each client uses and its fine-tuning step see the inner strategy's server state
    personal = strategy.personal_params and (lambda state, client_state: strategy.personal_params(state.inner,
                                                                                                  client_state))
    adapt = strategy.adapt and (lambda state, *args: strategy.adapt(state.inner, *args))
    return Strategy(f"dp({strategy.name})", server_init, client_init, client_step, client_final,
                    server_update, broadcast, strategy.client_state_init, aggregate, report, requires,
                    model_update=False, update_when_empty=True, personal_params=personal, adapt=adapt,
                    adapt_steps=strategy.adapt_steps, global_model=strategy.global_model)


def local_dp(strategy: Strategy, *, clip: float, noise_multiplier: float, delta: float = 1e-5) -> Strategy:
    """Local DP: each client clips its update to L2 norm ``clip`` and adds N(0, (z clip)^2) itself,
    so the server never sees a raw update. ``report`` adds ``epsilon``: a client's guarantee
    against the server after taking part in every round so far (a Gaussian of sensitivity 2*clip
    per round, no sampling amplification), from dp_accounting's RDP accountant.
    """
    _check_strategy(strategy, "local_dp")
    accounting.check_clip(clip)
    accounting.check_noise(noise_multiplier)
    accounting.check_delta(delta)
    z = float(noise_multiplier)

    def client_final(local, client_state, info):
        out, client_state = strategy.client_final(local, client_state, info)
        clipped, _ = clip_by_global_norm(out.update, clip)
        noise = gaussian_like(jax.random.fold_in(info.key, _LOCAL_NOISE_TAG), clipped, z * clip)
        return out._replace(update=optax.tree_utils.tree_add(clipped, noise)), client_state

    @functools.lru_cache(maxsize=None)
    def report(rounds_done):
        if rounds_done == 0:
            return {"epsilon": 0.0}
        if z == 0:
            return {"epsilon": math.inf}
        import dp_accounting
        from dp_accounting import rdp

        acc = rdp.RdpAccountant()
        acc.compose(dp_accounting.GaussianDpEvent(z / 2), int(rounds_done))
        return {"epsilon": float(acc.get_epsilon(delta))}

    return strategy._replace(name=f"local_dp({strategy.name})", client_final=client_final, report=report)
