"""Malicious clients inside the one compiled round: ``attack(strategy, spec, attackers=...)``.

A fixed set of clients (``attacker_ids``: drawn once from the seed) cheats whenever it is sampled;
the others run the strategy unchanged. Which client is an attacker is a [num_clients] mask looked
up by ``ClientInfo.client_id`` inside the vmapped round, so there is no Python loop over clients.

Data poisoning (the attacker trains honestly on bad data; any strategy):
    label_flip          y -> C - 1 - y on every training row
    backdoor[:T[,P[,B]]] a share P (default 0.5) of each mini-batch gets a trigger (the last
                        ``trigger_size`` input features set to ``trigger_value``, e.g. a bright
                        patch in an image corner) and the label T (default 0); B > 1 boosts the
                        backdoored update by B (model replacement, Bagdasaryan et al. 2020)
Model poisoning (the attacker sends a crafted update u' instead of its honest delta u; strategies
whose update is a model delta):
    sign_flip           u' = -u
    scale[:F]           u' = F u (model replacement, Bagdasaryan et al. 2020; default F = 10)
    gaussian[:S]        u' ~ N(0, S^2 I) (default S = 1)
    free_rider[:S]      u' = 0 (sends the global model back), plus N(0, S^2 I) noise if S > 0
    alie[:Z]            "A little is enough" (Baruch et al. 2019): every attacker sends
                        mu + Z sigma, the coordinate-wise mean and standard deviation of the honest
                        updates of the round; Z defaults to the paper's z_max for the round's n
                        participants and m attackers: s = floor(n/2 + 1) - m, Z = Phi^-1((n - s)/n).
                        It needs the honest updates, so it runs at aggregation time (the attackers
                        are omniscient and collude, as in the paper).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedlab.core.checks import check_int, check_number
from fedlab.core.types import Batch, Held, Strategy, is_host_aggregator
from fedlab.security.defenses import flatten_rows, parse_options, unflatten_row

_ATTACK_TAG = 0xBAD          # folded into the seed / a client's key: streams independent of the rest

#: kind -> (options [(name, type, default)], poisons the data?)
ATTACKS: dict[str, tuple[list, bool]] = {
    "sign_flip": ([], False),
    "scale": ([("factor", float, 10.0)], False),
    "gaussian": ([("std", float, 1.0)], False),
    "free_rider": ([("std", float, 0.0)], False),
    "alie": ([("z", float, None)], False),
    "label_flip": ([], True),
    "backdoor": ([("target", int, 0), ("fraction", float, 0.5), ("boost", float, 1.0)], True),
}


class Attack(NamedTuple):
    """A parsed attack spec: kind and its options by name."""

    kind: str
    options: dict

    @property
    def poisons_data(self) -> bool:
        return ATTACKS[self.kind][1]

    @property
    def crafts_update(self) -> bool:
        """The attacker changes its update (model poisoning, or a boosted backdoor)."""
        return not self.poisons_data or self.options.get("boost", 1.0) != 1.0

    @property
    def spec(self) -> str:
        values = [v for v in self.options.values() if v is not None]
        if self.kind == "backdoor" and self.options["boost"] == 1.0:
            values = values[:2]
        return self.kind + (":" + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
                            if values else "")


def parse_attack(spec) -> Attack:
    """'scale:10' -> Attack('scale', {'factor': 10.0}); every option range-checked."""
    if isinstance(spec, Attack):
        return spec
    table = {k: (None, opts) for k, (opts, _) in ATTACKS.items()}
    kind, values = parse_options("attack", table, spec)
    options = {name: v for (name, _, _), v in zip(ATTACKS[kind][0], values)}
    where = f"attack: {kind}"
    if kind == "scale":
        check_number(f"{where} FACTOR", options["factor"])
    if kind in ("gaussian", "free_rider"):
        check_number(f"{where} STD", options["std"], 0)
    if kind == "alie" and options["z"] is not None:
        check_number(f"{where} Z", options["z"])
    if kind == "backdoor":
        check_int(f"{where} TARGET", options["target"], 0)
        check_number(f"{where} FRACTION", options["fraction"], 0, 1, low_open=True)
        check_number(f"{where} BOOST", options["boost"], 0, low_open=True)
    return Attack(kind, options)


def attacker_ids(num_clients: int, fraction: float, seed: int) -> np.ndarray:
    """The attackers: round(fraction * num_clients) client ids (half up), a uniformly random subset
    fixed by the seed, in increasing order."""
    count = int(math.floor(fraction * num_clients + 0.5))
    key = jax.random.fold_in(jax.random.key(seed), _ATTACK_TAG)
    return np.sort(np.asarray(jax.random.permutation(key, num_clients))[:count]).astype(np.int32)


def stamp_trigger(x, trigger_value, rows=None):
    """x: [batch, *input_shape] with the last len(trigger_value) flat features set to the trigger
    (on the rows where ``rows`` [batch] is True; all rows when None)."""
    flat = x.reshape(x.shape[0], -1)
    size = trigger_value.shape[0]
    stamped = flat.at[:, flat.shape[1] - size:].set(jnp.broadcast_to(trigger_value, (flat.shape[0], size)))
    if rows is not None:
        stamped = jnp.where(rows[:, None], stamped, flat)
    return stamped.reshape(x.shape)


class AttackLocal(NamedTuple):
    inner: Any
    attacker: jax.Array


class AttackUpdate(NamedTuple):
    """An ALIE run's update: the client's honest delta and whether it is an attacker (a simulation
    tag, ``Held``: not counted in the bytes sent, so the aggregation-time attack knows whose rows
    to replace)."""

    update: Any
    attacker: Held


def alie_z(n, m):
    """Baruch et al.'s z_max for n participants of which m are attackers:
    s = floor(n/2 + 1) - m, z = Phi^-1((n - s) / n) (clamped to [0, Phi^-1(0.9999)])."""
    s = jnp.floor(n / 2 + 1) - m
    p = jnp.clip((n - s) / jnp.maximum(n, 1), 0.5, 0.9999)
    return jax.scipy.special.ndtri(p)


def alie_rows(x, take, attacker, z=None):
    """x [slots, d] with the attackers' rows replaced by mu + z sigma of the honest rows (the
    participants that are not attackers; population std). Returns (rows, z used)."""
    att = take & attacker
    honest = take & ~attacker
    h = jnp.maximum(jnp.sum(honest), 1)
    mu = jnp.sum(jnp.where(honest[:, None], x, 0.0), 0) / h
    sigma = jnp.sqrt(jnp.sum(jnp.where(honest[:, None], (x - mu) ** 2, 0.0), 0) / h)
    if z is None:
        z = alie_z(jnp.sum(take).astype(jnp.float32), jnp.sum(att).astype(jnp.float32))
    return jnp.where(att[:, None], mu + z * sigma, x), jnp.asarray(z, jnp.float32)


def attack(strategy: Strategy, spec, *, attackers, num_clients: int, num_classes: int | None = None,
           trigger_value=None) -> Strategy:
    """``strategy`` with the clients in ``attackers`` (ids) running the attack ``spec``.

    num_classes: needed by label_flip and backdoor; trigger_value: [trigger_size] values stamped
    by a backdoor (default four features set to 1.0). Wrap it outside a robust() defense, so an
    ALIE attacker's crafted rows go through the defense: attack(robust(fedavg(), 'krum:2'), 'alie', ...).
    """
    a = parse_attack(spec)
    if not isinstance(strategy, Strategy):
        raise ValueError(f"strategy must be a fedlab Strategy, got {type(strategy).__name__}")
    ids = np.asarray(attackers, np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= num_clients):
        raise ValueError(f"attackers must be client ids in [0, {num_clients - 1}], got {ids.tolist()}")
    mask = np.zeros(num_clients, bool)
    mask[ids] = True
    is_attacker = jnp.asarray(mask)
    if a.crafts_update and not strategy.model_update:
        raise ValueError(f"attack: {a.kind} crafts a model update; {strategy.name} sends more than a model "
                         "delta (model_update=False), so only data poisoning (label_flip, backdoor) applies")
    if a.kind == "alie" and strategy.aggregate is not None and is_host_aggregator(strategy.aggregate):
        raise ValueError(f"attack: alie acts at aggregation time and cannot precede {strategy.name}'s "
                         "host aggregation (secure aggregation, Paillier)")
    if a.poisons_data:
        if not num_classes or num_classes < 2:
            raise ValueError(f"attack: {a.kind} needs a classification dataset (2 or more classes)")
        if a.kind == "backdoor" and a.options["target"] >= num_classes:
            raise ValueError(f"attack: backdoor TARGET must be a class in [0, {num_classes - 1}], "
                             f"got {a.options['target']}")
    trigger = jnp.asarray(np.ones(4, np.float32) if trigger_value is None else trigger_value, jnp.float32)

    def client_init(broadcast, client_state, info):
        return AttackLocal(strategy.client_init(broadcast, client_state, info), is_attacker[info.client_id])

    def poison(batch: Batch, attacker) -> Batch:
        if a.kind == "label_flip":
            return batch._replace(y=jnp.where(attacker, num_classes - 1 - batch.y, batch.y).astype(batch.y.dtype))
        rows = attacker & (jnp.arange(batch.y.shape[0]) < round(a.options["fraction"] * batch.y.shape[0]))
        return batch._replace(x=stamp_trigger(batch.x, trigger, rows),
                              y=jnp.where(rows, a.options["target"], batch.y).astype(batch.y.dtype))

    def client_step(local, batch, loss_fn):
        inner, loss = strategy.client_step(local.inner, poison(batch, local.attacker), loss_fn)
        return local._replace(inner=inner), loss

    def craft(update, attacker, key):
        if a.kind == "sign_flip":
            bad = jax.tree.map(jnp.negative, update)
        elif a.kind == "scale":
            bad = jax.tree.map(lambda u: a.options["factor"] * u, update)
        else:   # gaussian, free_rider
            leaves, treedef = jax.tree.flatten(update)
            keys = jax.random.split(jax.random.fold_in(key, _ATTACK_TAG), len(leaves))
            noise = [a.options["std"] * jax.random.normal(k, u.shape, u.dtype) for k, u in zip(keys, leaves)]
            bad = jax.tree.unflatten(treedef, noise)
        return jax.tree.map(lambda b, u: jnp.where(attacker, b, u), bad, update)

    def client_final(local, client_state, info):
        inner_local = local.inner if a.poisons_data else local
        out, client_state = strategy.client_final(inner_local, client_state, info)
        attacker = is_attacker[info.client_id]
        if a.kind == "alie":
            out = out._replace(update=AttackUpdate(out.update, Held(attacker)))
        elif a.kind == "backdoor" and a.crafts_update:
            out = out._replace(update=jax.tree.map(lambda u: jnp.where(attacker, a.options["boost"] * u, u), out.update))
        elif not a.poisons_data:
            out = out._replace(update=craft(out.update, attacker, info.key))
        return out, client_state

    wrapped = strategy._replace(name=f"attack({strategy.name}, {a.spec})", client_final=client_final)
    if a.poisons_data:
        wrapped = wrapped._replace(client_init=client_init, client_step=client_step)
    if a.kind == "alie":
        inner_aggregate = strategy.aggregate
        z = a.options["z"]

        def aggregate(updates, weights, key):
            take = weights > 0
            rows, z_used = alie_rows(flatten_rows(updates.update), take, updates.attacker.value > 0, z)
            crafted = unflatten_rows(rows, updates.update)
            if inner_aggregate is None:
                w = jnp.where(take, weights, 0.0)
                mean = jnp.sum(jnp.where(take[:, None], rows, 0.0) * w[:, None], 0) / jnp.maximum(jnp.sum(w), 1e-12)
                agg, metrics = unflatten_row(mean, updates.update), {}
            else:
                agg, metrics = inner_aggregate(crafted, weights, key)
            return agg, {**metrics, "alie_z": z_used}

        wrapped = wrapped._replace(aggregate=aggregate)
    return wrapped


def unflatten_rows(rows, like):
    """[clients, d] rows back to a stacked pytree shaped like ``like``."""
    leaves, treedef = jax.tree.flatten(like)
    out, offset = [], 0
    for x in leaves:
        size = math.prod(x.shape[1:])
        out.append(rows[:, offset:offset + size].reshape(x.shape).astype(x.dtype))
        offset += size
    return jax.tree.unflatten(treedef, out)


def backdoor_evaluator(model, data, spec, trigger_value=None):
    """params -> {'backdoor_accuracy': share of triggered test rows classified as the target},
    over the test rows whose true class is not the target (the attack's success rate)."""
    a = parse_attack(spec)
    target = a.options["target"]
    trigger = jnp.asarray(np.ones(4, np.float32) if trigger_value is None else trigger_value, jnp.float32)
    keep = np.asarray(data.y_test) != target
    x = stamp_trigger(jnp.asarray(data.x_test[keep]), trigger)

    @jax.jit
    def hit_rate(params):
        return jnp.mean((jnp.argmax(model.apply(params, x), -1) == target).astype(jnp.float32))

    def evaluate(params):
        return {"backdoor_accuracy": float(hit_rate(params)) if keep.any() else float("nan")}

    return evaluate


def default_trigger(data, size: int = 4) -> np.ndarray:
    """The trigger value of each of the last ``size`` flat input features: that feature's largest
    training value (a saturated patch: white pixels in an image corner, extreme table values)."""
    flat = np.asarray(data.x_train).reshape(len(data.x_train), -1)
    size = min(size, flat.shape[1])
    return flat[:, flat.shape[1] - size:].max(axis=0).astype(np.float32)
