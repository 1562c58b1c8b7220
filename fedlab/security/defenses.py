"""Robust aggregation (Byzantine-resilient defenses) as jit aggregators, and ``robust(strategy, defense)``.

A defense replaces the engine's weighted mean by a rule that a few malicious clients cannot steer
far. It works on the round's updates flattened to rows, ``x: [slots, d]``, with ``weights:
[slots]`` (0 for padding slots and dropped clients: they are excluded, whatever they hold). The
number of participants m varies from round to round (Poisson sampling, dropouts), so every rule
is written with masks and sorts over the static [slots] axis, never a Python loop over clients.

    median            coordinate-wise median of the m updates (Yin et al. 2018)
    trimmed_mean:B    per coordinate, drop the floor(B m) largest and smallest values, mean of the
                      rest (Yin et al. 2018); B in [0, 0.5)
    krum:F            the update with the smallest score, the sum of squared distances to its
                      max(1, m - F - 2) nearest other updates (Blanchard et al. 2017; Flower)
    multikrum:F,M     the n_k-weighted mean of the M updates with the smallest Krum scores (Flower)
    bulyan:F          theta = m - 2F updates chosen by Krum one at a time (each on the updates still
                      left), then per coordinate the mean of the beta = theta - 2F values closest
                      to their median (El Mhamdi et al. 2018; Flower); needs m >= 4F + 3
    norm_clip:C       each update clipped to L2 norm C, then the n_k-weighted mean (Sun et al. 2019)
    fltrust:R         FLTrust (Cao et al. 2021): trust ReLU(cos(g_k, g0)) against the update g0 the server
                      computes on its own clean root set of R rows; updates rescaled to ||g0||

Median, trimmed mean, Krum and Bulyan weigh clients equally, as in their papers; Multi-Krum and
norm clipping keep FedAvg's n_k weights.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedlab.core.checks import check_int, check_number
from fedlab.core.types import Strategy, is_host_aggregator


class Defense(NamedTuple):
    """A robust rule. aggregate(x [slots, d], weights [slots]) -> (aggregate [d], metrics);
    min_clients: the clients per round the rule needs (checked when the run is built)."""

    name: str
    aggregate: Callable
    min_clients: int = 1
    spec: str = ""


# ---- masked order statistics over the client axis -------------------------------------------
def _sorted_with_count(x, take):
    """Each coordinate's participant values sorted ascending, padding (+inf) after them; m."""
    return jnp.sort(jnp.where(take[:, None], x, jnp.inf), axis=0), jnp.sum(take).astype(jnp.int32)


def _row(sorted_x, i):
    return jax.lax.dynamic_index_in_dim(sorted_x, jnp.clip(i, 0, sorted_x.shape[0] - 1), 0, keepdims=False)


def masked_median(x, take):
    """Coordinate-wise median of the rows where ``take`` (the mean of the two middle values for an
    even count), [d]; zeros when no row is taken."""
    s, m = _sorted_with_count(x, take)
    med = 0.5 * (_row(s, (m - 1) // 2) + _row(s, m // 2))
    return jnp.where(m > 0, med, 0.0)


def masked_trimmed_mean(x, take, beta):
    """Per coordinate, the mean of the taken values without the floor(beta m) largest and smallest."""
    s, m = _sorted_with_count(x, take)
    b = jnp.floor(beta * m).astype(jnp.int32)
    pos = jnp.arange(x.shape[0])[:, None]
    keep = (pos >= b) & (pos < m - b)
    return jnp.sum(jnp.where(keep, s, 0.0), axis=0) / jnp.maximum(m - 2 * b, 1)


def squared_distances(x, take):
    """[slots, slots] squared L2 distances between rows (centred first, for float32 accuracy);
    +inf on the diagonal and for any pair with a row not taken."""
    m = jnp.maximum(jnp.sum(take), 1)
    centred = jnp.where(take[:, None], x - jnp.sum(jnp.where(take[:, None], x, 0.0), 0) / m, 0.0)
    sq = jnp.sum(centred ** 2, axis=1)
    d = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * centred @ centred.T, 0.0)
    n = x.shape[0]
    ok = take[:, None] & take[None, :] & ~jnp.eye(n, dtype=bool)
    return jnp.where(ok, d, jnp.inf)


def krum_scores(dist, take, f):
    """Krum score of each taken row: the sum of its max(1, m - f - 2) smallest distances to the
    other taken rows (m = rows taken); +inf for rows not taken. dist: from squared_distances."""
    m = jnp.sum(take)
    closest = jnp.maximum(1, m - f - 2)
    s = jnp.sort(jnp.where(take[None, :], dist, jnp.inf), axis=1)
    pos = jnp.arange(dist.shape[0])[None, :]
    score = jnp.sum(jnp.where((pos < closest) & jnp.isfinite(s), s, 0.0), axis=1)
    return jnp.where(take, score, jnp.inf)


# ---- the rules ----------------------------------------------------------------------------------
def _take(weights):
    return weights > 0


def median() -> Defense:
    def aggregate(x, weights):
        return masked_median(x, _take(weights)), {"defense_kept": jnp.sum(_take(weights)).astype(jnp.float32)}
    return Defense("median", aggregate, 1, "median")


def trimmed_mean(beta: float = 0.1) -> Defense:
    beta = check_number("beta (defense trimmed_mean)", beta, 0, 0.5, high_open=True)

    def aggregate(x, weights):
        take = _take(weights)
        m = jnp.sum(take)
        kept = m - 2 * jnp.floor(beta * m)
        return masked_trimmed_mean(x, take, beta), {"defense_kept": kept.astype(jnp.float32)}
    return Defense("trimmed_mean", aggregate, 1, f"trimmed_mean:{beta:g}")


def multikrum(f: int = 1, keep: int = 1) -> Defense:
    f = check_int("f (defense krum)", f, 0)
    keep = check_int("m (defense multikrum)", keep, 1)

    def aggregate(x, weights):
        take = _take(weights)
        scores = krum_scores(squared_distances(x, take), take, f)
        rank = jnp.argsort(jnp.argsort(scores))
        chosen = take & (rank < jnp.minimum(keep, jnp.sum(take)))
        w = jnp.where(chosen, weights, 0.0)
        mean = jnp.sum(jnp.where(chosen[:, None], x, 0.0) * w[:, None], 0) / jnp.maximum(jnp.sum(w), 1e-12)
        return mean, {"defense_kept": jnp.sum(chosen).astype(jnp.float32)}
    name = "krum" if keep == 1 else "multikrum"
    return Defense(name, aggregate, 2 * f + 3, f"krum:{f}" if keep == 1 else f"multikrum:{f},{keep}")


def krum(f: int = 1) -> Defense:
    """Krum: the one update with the smallest score (multikrum with M = 1: weights do not matter)."""
    return multikrum(f, 1)


def bulyan(f: int = 1) -> Defense:
    f = check_int("f (defense bulyan)", f, 0)

    def aggregate(x, weights):
        take = _take(weights)
        n = x.shape[0]
        m = jnp.sum(take)
        theta = jnp.maximum(m - 2 * f, 1)
        dist = squared_distances(x, take)

        def pick(i, state):       # Krum on the rows still left; move its choice to the selection
            left, chosen = state
            best = jnp.argmin(krum_scores(dist, left, f))
            go = (i < theta) & jnp.any(left)
            return left.at[best].set(left[best] & ~go), chosen.at[best].set(chosen[best] | go)

        _, chosen = jax.lax.fori_loop(0, n, pick, (take, jnp.zeros_like(take)))
        beta = jnp.maximum(theta - 2 * f, 1)
        med = masked_median(x, chosen)
        gap = jnp.where(chosen[:, None], jnp.abs(x - med), jnp.inf)
        order = jnp.argsort(gap, axis=0)
        closest = jnp.take_along_axis(x, order, axis=0)
        pos = jnp.arange(n)[:, None]
        mean = jnp.sum(jnp.where(pos < beta, closest, 0.0), 0) / beta
        return mean, {"defense_kept": jnp.sum(chosen).astype(jnp.float32)}
    return Defense("bulyan", aggregate, 4 * f + 3, f"bulyan:{f}")


def norm_clip(clip: float = 1.0) -> Defense:
    clip = check_number("c (defense norm_clip)", clip, 0, low_open=True)

    def aggregate(x, weights):
        take = _take(weights)
        norm = jnp.sqrt(jnp.sum(jnp.where(take[:, None], x, 0.0) ** 2, axis=1))
        clipped = jnp.where(take[:, None], x * jnp.minimum(1.0, clip / jnp.maximum(norm, 1e-30))[:, None], 0.0)
        w = jnp.where(take, weights, 0.0)
        mean = jnp.sum(clipped * w[:, None], 0) / jnp.maximum(jnp.sum(w), 1e-12)
        frac = jnp.sum(take & (norm > clip)) / jnp.maximum(jnp.sum(take), 1)
        return mean, {"defense_clipped": frac.astype(jnp.float32)}
    return Defense("norm_clip", aggregate, 1, f"norm_clip:{clip:g}")


#: kind -> (factory, [(option, type, default)]) in the order a 'kind:a,b' spec fills them.
DEFENSES: dict[str, tuple[Callable, list]] = {
    "median": (median, []),
    "trimmed_mean": (trimmed_mean, [("beta", float, 0.1)]),
    "krum": (krum, [("f", int, 1)]),
    "multikrum": (multikrum, [("f", int, 1), ("m", int, 1)]),
    "bulyan": (bulyan, [("f", int, 1)]),
    "norm_clip": (norm_clip, [("c", float, 1.0)]),
    "fltrust": (lambda root: Defense("fltrust", None, 1, f"fltrust:{check_int('root (defense fltrust)', root, 1)}"),
                [("root", int, 100)]),
}


def parse_options(what: str, table: dict, spec) -> tuple[str, list]:
    """'krum:2' -> ('krum', [2]) with the table's types and defaults; ValueError naming ``what``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{what} must be a text such as {next(iter(table))!r}, got {spec!r}")
    kind, _, rest = spec.strip().partition(":")
    if kind not in table:
        raise ValueError(f"{what}: unknown kind {kind!r}; choose one of {sorted(table)}")
    options = table[kind][1]
    texts = [t.strip() for t in rest.split(",")] if rest else []
    if len(texts) > len(options):
        raise ValueError(f"{what}: {kind} takes at most {len(options)} option(s) "
                         f"({', '.join(o[0].upper() for o in options) or 'none'}), got {spec!r}")
    values = []
    for (name, typ, default), text in zip(options, texts + [None] * (len(options) - len(texts))):
        if text is None:
            values.append(default)
            continue
        try:
            value = typ(text)
        except ValueError:
            raise ValueError(f"{what}: {name.upper()} of {kind} must be {'an integer' if typ is int else 'a number'}"
                             f", got {text!r}") from None
        if typ is float and not math.isfinite(value):
            raise ValueError(f"{what}: {name.upper()} of {kind} must be a finite number, got {text!r}")
        values.append(value)
    return kind, values


def make_defense(spec) -> Defense:
    """A Defense from its spec ('median', 'krum:2', 'multikrum:2,5', 'norm_clip:0.5', ...)."""
    if isinstance(spec, Defense):
        return spec
    kind, values = parse_options("defense", DEFENSES, spec)
    try:
        return DEFENSES[kind][0](*values)
    except ValueError as err:
        raise ValueError(f"defense: {err}") from None


def check_clients(defense: Defense, clients_per_round: int) -> None:
    """The defense's need for clients per round (Krum: 2F + 3, Bulyan: 4F + 3), as one clear line."""
    if clients_per_round < defense.min_clients:
        raise ValueError(f"defense: {defense.spec} needs at least {defense.min_clients} clients per round "
                         f"(Krum: 2F + 3, Bulyan: 4F + 3), got clients_per_round={clients_per_round}; "
                         f"lower F or sample more clients")


# ---- flat rows <-> the update pytree ----------------------------------------------------------
def flatten_rows(updates) -> jax.Array:
    """The stacked update pytree as rows, [clients, d] float32."""
    leaves = jax.tree.leaves(updates)
    return jnp.concatenate([x.reshape(x.shape[0], -1).astype(jnp.float32) for x in leaves], axis=1)


def unflatten_row(row, like):
    """A [d] row back to one update shaped like a row of the stacked pytree ``like``."""
    leaves, treedef = jax.tree.flatten(like)
    out, offset = [], 0
    for x in leaves:
        size = math.prod(x.shape[1:])
        out.append(row[offset:offset + size].reshape(x.shape[1:]).astype(x.dtype))
        offset += size
    return jax.tree.unflatten(treedef, out)


def robust(strategy: Strategy, defense) -> Strategy:
    """``strategy`` aggregated by ``defense`` (a Defense or a spec such as 'krum:2') instead of the
    weighted mean. The strategy must send a model delta (model_update) and use the engine's mean."""
    defense = make_defense(defense)
    if defense.aggregate is None:
        raise ValueError("defense: fltrust needs the server's root data and the model: use "
                         "fltrust(strategy, model, root_x, root_y) (an Experiment does this itself)")
    if not isinstance(strategy, Strategy):
        raise ValueError(f"strategy must be a fedlab Strategy, got {type(strategy).__name__}")
    if strategy.aggregate is not None:
        kind = "a host" if is_host_aggregator(strategy.aggregate) else "its own"
        raise ValueError(f"defense: {strategy.name} already has {kind} aggregation (e.g. DP's noised sum, "
                         "secure aggregation); a robust rule replaces the weighted mean, so it does not "
                         "compose with it")
    if not strategy.model_update:
        raise ValueError(f"defense: robust aggregation compares model updates; {strategy.name} sends more "
                         "than a model delta (model_update=False: FedNova's tau, q-FFL's h, SCAFFOLD's "
                         "control variates)")

    def aggregate(updates, weights, key):
        row, metrics = defense.aggregate(flatten_rows(updates), weights)
        return unflatten_row(row, updates), metrics

    return strategy._replace(name=f"robust({strategy.name}, {defense.spec})", aggregate=aggregate)


# ---- FLTrust: trust from the server's own clean root data -------------------------------------------
class StackedRows(NamedTuple):
    """FLTrust's aggregate: the rows themselves, reduced in server_update where the model is known."""

    rows: jax.Array       # [slots, d]
    take: jax.Array       # [slots] participants


def fltrust(strategy: Strategy, model, root_x, root_y, *, batch_size: int = 32) -> Strategy:
    """FLTrust (Cao et al. 2021): each round the server trains on its small clean root set with the
    strategy's own local training (one pass in batches of ``batch_size``, from the global model) to get
    g0; client k's trust is ReLU(cos(g_k, g0)); each g_k is rescaled to ||g0|| and the aggregate is
    sum_k TS_k g_k ||g0|| / ||g_k|| / sum_k TS_k (0 when every trust is 0).
    root_x: [r, *input_shape], root_y: [r]."""
    from fedlab.core.types import Batch, ClientInfo

    if strategy.aggregate is not None or not strategy.model_update:
        raise ValueError(f"defense: fltrust needs a strategy that sends a model delta and uses the weighted "
                         f"mean; {strategy.name} does not")
    batch_size = check_int("batch_size", batch_size, 1)
    root_x = jnp.asarray(root_x, jnp.float32)
    root_y = jnp.asarray(root_y)
    r = int(root_y.shape[0])
    if r < 1:
        raise ValueError("defense: fltrust needs a root set of at least 1 row")
    steps = -(-r // batch_size)
    pad = steps * batch_size - r
    xs = jnp.concatenate([root_x, jnp.zeros((pad,) + root_x.shape[1:], root_x.dtype)]).reshape(
        (steps, batch_size) + root_x.shape[1:])
    ys = jnp.concatenate([root_y, jnp.zeros((pad,), root_y.dtype)]).reshape(steps, batch_size)
    ms = (jnp.arange(steps * batch_size) < r).astype(jnp.float32).reshape(steps, batch_size)

    def aggregate(updates, weights, key):
        return StackedRows(flatten_rows(updates), weights > 0), {}

    def server_update(state, agg):
        broadcast = strategy.broadcast(state)
        params = state.params
        info = ClientInfo(jnp.asarray(r, jnp.int32), jnp.asarray(steps, jnp.int32), jnp.asarray(steps, jnp.int32),
                          jax.random.key(0), 1.0, -1)
        local = strategy.client_init(broadcast, strategy.client_state_init(params), info)

        def step(local, batch):
            return strategy.client_step(local, Batch(*batch), model.loss)[0], None

        local, _ = jax.lax.scan(step, local, (xs, ys, ms))
        out, _ = strategy.client_final(local, strategy.client_state_init(params), info)
        g0 = flatten_rows(jax.tree.map(lambda u: u[None], out.update))[0]
        g0_norm = jnp.sqrt(jnp.sum(g0 ** 2))
        rows = jnp.where(agg.take[:, None], agg.rows, 0.0)
        norms = jnp.sqrt(jnp.sum(rows ** 2, axis=1))
        cos = rows @ g0 / jnp.maximum(norms * g0_norm, 1e-30)
        trust = jnp.where(agg.take, jax.nn.relu(cos), 0.0)
        scaled = rows * (g0_norm / jnp.maximum(norms, 1e-30))[:, None]
        mean = jnp.sum(trust[:, None] * scaled, 0) / jnp.maximum(jnp.sum(trust), 1e-30)
        one = jax.tree.map(lambda u: jax.ShapeDtypeStruct((1,) + u.shape, u.dtype), out.update)
        return strategy.server_update(state, unflatten_row(mean, one))

    return strategy._replace(name=f"fltrust({strategy.name})", aggregate=aggregate, server_update=server_update)


def root_set(data, size: int, attackers, seed: int):
    """FLTrust's clean root set: ``size`` training rows drawn (from the seed) among the clients that
    are not attackers. Returns (x [size, ...], y [size])."""
    honest = np.ones(data.num_clients, bool)
    honest[np.asarray(attackers, int)] = False
    rows = np.concatenate([np.arange(data.train_offsets[k], data.train_offsets[k + 1])
                           for k in np.flatnonzero(honest)]).astype(np.int64)
    if size > len(rows):
        raise ValueError(f"defense: fltrust:{size} needs {size} clean root rows, but the honest clients hold "
                         f"only {len(rows)}")
    order = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(seed), 0x7257), len(rows)))
    pick = np.sort(rows[order[:size]])
    return data.x_train[pick], data.y_train[pick]
