"""Communication compression with exact bytes: ``compressed(strategy, up=..., down=..., error_feedback=...)``.

A client's update is flattened to one vector v of d float32 values and sent as a payload whose
arrays are exactly what goes on the wire, so the History's ``bytes_up`` / ``bytes_down`` (the
engine's ``tree_nbytes`` of what is sent) count values, indices, scales and seeds to the byte.
The layout of a payload is fixed by d and the spec, which both ends know, so no per-message
header is sent (0 header bytes)::

    topk:F     the k = ceil(F d) largest |v_i|: k float32 values + k indices (uint16 if d <= 65536,
               else uint32)                                                     4k + 2k or 4k + 4k
    randk:F    k coordinates drawn from a 4-byte seed the server regenerates them from: k float32
               values + the uint32 seed; scaled by d/k (unbiased) without error feedback, unscaled
               with it (a contraction, as top-k)                               4k + 4
    qsgd:S     QSGD (Alistarh et al. 2017), S levels: ||v|| (float32) and per coordinate the signed
               level in [-S, S] (int8 if S <= 127, else int16), stochastic rounding (unbiased)
                                                                               4 + d or 4 + 2d
    sign       scaled sign (signSGD with a scale, Karimireddy et al. 2019): mean |v_i| (float32)
               and one bit per coordinate packed in uint8                      4 + ceil(d / 8)

Error feedback (Seide et al. 2014; Stich et al. 2018; Karimireddy et al. 2019) keeps each client's
residual e (what compression dropped) as its persistent state and sends C(v + e) next time. A client
that does not count in a round (dropped, a FedAvg straggler) keeps its residual.

``down`` compresses the broadcast: the server keeps the model the clients hold (their view) and
sends C(w - view), which every client adds to its view (so the gap w - view is fed back on the
server). Clients train from their view; the server's own model w is the one evaluated.

Where it composes and where not: after ``local_dp`` it is post-processing of an already private
vector, so sound (``compressed(local_dp(s))``); the other order, ``local_dp(compressed(s))``, is
refused: noise on a compressed update either fills it (dense again) or covers only the kept
coordinates, whose choice (a top-k support) is a function of the raw update and leaks. With central
DP, ``compressed(dp(s), up=...)`` compresses each clipped update (error feedback included), then
scales the payload so that what the server decodes is back inside DP's unit ball (error feedback,
QSGD's rounding and rand-k's d/k can leave it; a scale of one float field, so the bytes do not
change); the server decodes, sums and noises the dense sum as ``dp`` does: the sensitivity is C
whatever the client sends, and the accounting is unchanged. The broadcast of a DP run is compressed
inside it, ``dp(compressed(s, down=...))`` (post-processing of the noised model). With secure
aggregation, top-k payloads of different clients have different supports and cannot be summed under
pairwise masks (refused).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedlab.core.checks import check_int, check_number
from fedlab.core.types import Held, Strategy, _identity_broadcast, is_host_aggregator
from fedlab.security.defenses import parse_options

_COMPRESS_TAG = 0xC0DE


class Compressor(NamedTuple):
    """encode(v [d], key) -> payload (fixed shapes); decode(payload) -> [d] float32;
    rescale(payload, factor) -> the payload of factor * decode(payload) (same shapes and bytes:
    every kind is linear in one float field, so clipping a decoded update scales that field)."""

    spec: str
    encode: Callable
    decode: Callable
    rescale: Callable = None


COMPRESSORS = {"topk": (None, [("fraction", float, 0.01)]), "randk": (None, [("fraction", float, 0.01)]),
               "qsgd": (None, [("levels", int, 16)]), "sign": (None, [])}


def make_compressor(spec, d: int, *, error_feedback: bool = False, what: str = "compress") -> Compressor:
    """The compressor of ``spec`` for vectors of d values (ValueError naming ``what`` if bad)."""
    kind, values = parse_options(what, COMPRESSORS, spec)
    if kind in ("topk", "randk"):
        frac = check_number(f"{what}: {kind} FRACTION", values[0], 0, 1, low_open=True)
        k = max(1, math.ceil(frac * d))
        index_dtype = jnp.uint16 if d <= 65536 else jnp.uint32
        if kind == "topk":
            def encode(v, key):
                _, idx = jax.lax.top_k(jnp.abs(v), k)
                return {"values": v[idx], "indices": idx.astype(index_dtype)}

            def decode(p):
                return jnp.zeros(d, jnp.float32).at[p["indices"].astype(jnp.int32)].set(p["values"])
        else:
            scale = 1.0 if error_feedback else d / k

            def coords(seed):
                return jax.lax.top_k(jax.random.uniform(jax.random.key(seed), (d,)), k)[1]

            def encode(v, key):
                seed = jax.random.bits(key, (), jnp.uint32)
                return {"values": v[coords(seed)] * scale, "seed": seed}

            def decode(p):
                return jnp.zeros(d, jnp.float32).at[coords(p["seed"])].set(p["values"])
        return Compressor(f"{kind}:{frac:g}", encode, decode, _scaling("values"))
    if kind == "qsgd":
        levels = check_int(f"{what}: qsgd LEVELS", values[0], 1, 32767)
        level_dtype = jnp.int8 if levels <= 127 else jnp.int16

        def encode(v, key):
            norm = jnp.sqrt(jnp.sum(v ** 2))
            scaled = jnp.abs(v) / jnp.maximum(norm, 1e-30) * levels
            low = jnp.floor(scaled)
            level = low + (jax.random.uniform(key, (d,)) < scaled - low)
            return {"norm": norm, "levels": (jnp.sign(v) * level).astype(level_dtype)}

        def decode(p):
            return p["norm"] * p["levels"].astype(jnp.float32) / levels
        return Compressor(f"qsgd:{levels}", encode, decode, _scaling("norm"))
    # sign
    padded = -d % 8

    def encode(v, key):
        bits = jnp.pad(v >= 0, (0, padded)).reshape(-1, 8).astype(jnp.uint8)
        packed = jnp.sum(bits << jnp.arange(8, dtype=jnp.uint8), axis=1, dtype=jnp.uint8)
        return {"scale": jnp.mean(jnp.abs(v)), "bits": packed}

    def decode(p):
        bits = (p["bits"][:, None] >> jnp.arange(8, dtype=jnp.uint8)) & 1
        return p["scale"] * (2.0 * bits.reshape(-1)[:d].astype(jnp.float32) - 1.0)
    return Compressor("sign", encode, decode, _scaling("scale"))


def _scaling(field: str) -> Callable:
    def rescale(payload, factor):
        return {**payload, field: (payload[field] * factor).astype(payload[field].dtype)}
    return rescale


def canonical_spec(spec, what: str = "compress") -> str:
    """The spec written canonically ('topk:0.10' -> 'topk:0.1'), after checking it."""
    return make_compressor(spec, 1000, what=what).spec


# ---- flat vector <-> pytree ----------------------------------------------------------------------
def _flat(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)])


def _unflat(v, like):
    leaves, treedef = jax.tree.flatten(like)
    out, offset = [], 0
    for x in leaves:
        size = math.prod(x.shape)
        out.append(v[offset:offset + size].reshape(x.shape).astype(x.dtype))
        offset += size
    return jax.tree.unflatten(treedef, out)


class CompressedClientState(NamedTuple):
    inner: Any
    residual: jax.Array     # [d] error-feedback memory ([0] without error feedback)


class CompressedServerState(NamedTuple):
    """inner: the wrapped strategy's server state (its params: the server's model w); view: the
    model the clients hold, flat [d]; message: the compressed C(w - view) to broadcast; round."""

    inner: Any
    view: jax.Array
    message: Any
    round: jax.Array

    @property
    def params(self):
        return self.inner.params


def compressed(strategy: Strategy, *, up: str | None = None, down: str | None = None,
               error_feedback: bool = False) -> Strategy:
    """``strategy`` with its uplink (``up``) and/or broadcast (``down``) compressed (see the module
    docstring for the specs and the byte counts); ``error_feedback`` keeps the uplink residual as
    each client's state."""
    if not isinstance(strategy, Strategy):
        raise ValueError(f"strategy must be a fedlab Strategy, got {type(strategy).__name__}")
    if up is None and down is None:
        raise ValueError("compress: give up and/or down")
    if error_feedback and up is None:
        raise ValueError("error_feedback: needs an uplink compression (compress)")
    if strategy.aggregate is not None and is_host_aggregator(strategy.aggregate):
        raise ValueError("compress: the updates go to a host aggregation (secure aggregation, Paillier); "
                         "compressed payloads of different clients (top-k supports) cannot be summed under "
                         "masks or ciphertexts, so fedlab does not combine them")
    central_dp = bool(getattr(strategy.aggregate, "unit_ball_sum", False))
    if not strategy.model_update and not central_dp:
        raise ValueError(f"compress: {strategy.name} does not send a plain model delta (model_update=False: "
                         "FedNova's tau, q-FFL's h, SCAFFOLD's control variates); compressing it would change "
                         "what these algorithms' weights assume")
    if down is not None and strategy.broadcast is not _identity_broadcast:
        raise ValueError(f"compress_down: {strategy.name} broadcasts more than its model; only the model "
                         "broadcast can be compressed" + (" (with DP, compress it inside: compressed(dp(compressed("
                                                         "strategy, down=...)), up=...))" if central_dp else ""))
    for spec, what in ((up, "compress"), (down, "compress_down")):
        if spec is not None:
            canonical_spec(spec, what)
    layout: dict = {}     # the update's shapes, recorded when client_final is traced

    def uplink(d):
        return make_compressor(up, d, error_feedback=error_feedback)

    def body_of(update):
        """The model delta inside what a client sends (DP's scaled update, an attacker-tagged update)."""
        if central_dp:
            return update.scaled
        if hasattr(update, "attacker") and isinstance(update.attacker, Held):
            return update.update
        return update

    def with_body(update, body):
        if central_dp:
            return update._replace(scaled=body)
        if hasattr(update, "attacker") and isinstance(update.attacker, Held):
            return update._replace(update=body)
        return body

    def client_state_init(params):
        d = sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(params))
        return CompressedClientState(strategy.client_state_init(params),
                                     jnp.zeros(d if error_feedback else 0, jnp.float32))

    def client_init(received, client_state, info):
        return strategy.client_init(received, client_state.inner, info)

    def client_final(local, client_state, info):
        out, inner_state = strategy.client_final(local, client_state.inner, info)
        body = body_of(out.update)
        layout["like"] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), body)
        v = _flat(body)
        comp = uplink(v.shape[0])
        if error_feedback:
            v = v + client_state.residual
        payload = comp.encode(v, jax.random.fold_in(info.key, _COMPRESS_TAG))
        residual = client_state.residual
        if error_feedback:
            residual = jnp.where(out.weight > 0, v - comp.decode(payload), residual)
        if central_dp:
            # back into DP's unit ball after compressing (error feedback, QSGD's rounding, rand-k's
            # d/k can leave it): the sensitivity the noise is calibrated to holds whatever was sent
            norm = jnp.sqrt(jnp.sum(comp.decode(payload) ** 2))
            payload = comp.rescale(payload, jnp.minimum(1.0, 1.0 / jnp.maximum(norm, 1e-30)))
        return out._replace(update=with_body(out.update, payload)), CompressedClientState(inner_state, residual)

    inner_aggregate = strategy.aggregate

    def aggregate(updates, weights, key):
        like = layout["like"]
        d = sum(math.prod(x.shape) for x in jax.tree.leaves(like))
        rows = jax.vmap(uplink(d).decode)(body_of(updates))
        take = weights > 0
        rows = jnp.where(take[:, None], rows, 0.0)
        if inner_aggregate is None:
            w = jnp.where(take, weights, 0.0)
            return _unflat(jnp.sum(rows * w[:, None], 0) / jnp.maximum(jnp.sum(w), 1e-12), like), {}
        stacked = jax.vmap(lambda r: _unflat(r, like))(rows)
        return inner_aggregate(with_body(updates, stacked), weights, key)

    aggregate.decodes_compressed = True         # dp / local_dp refuse to wrap it (see privacy.dp)
    wrapped = strategy._replace(name=f"compressed({strategy.name})", client_state_init=client_state_init,
                                client_init=client_init, client_final=client_final)
    if up is not None:
        wrapped = wrapped._replace(aggregate=aggregate)
    else:
        wrapped = wrapped._replace(client_state_init=strategy.client_state_init, client_init=strategy.client_init,
                                   client_final=strategy.client_final)
    if down is None:
        return wrapped

    def downlink(d):
        return make_compressor(down, d, what="compress_down")

    def server_init(params):
        v = _flat(params)
        message = downlink(v.shape[0]).encode(jnp.zeros_like(v), jax.random.key(0))
        return CompressedServerState(strategy.server_init(params), v, message, jnp.zeros((), jnp.int32))

    def broadcast(state):
        return Held(state.view), state.message

    def client_init_down(received, client_state, info):
        view, message = received
        start = _unflat(view.value + downlink(view.value.shape[0]).decode(message), layout_params["like"])
        return wrapped.client_init(start, client_state, info)

    def server_update(state, aggregate):
        inner = strategy.server_update(state.inner, aggregate)
        comp = downlink(state.view.shape[0])
        view = state.view + comp.decode(state.message)           # what the clients hold now
        key = jax.random.fold_in(jax.random.key(_COMPRESS_TAG), state.round)
        message = comp.encode(_flat(inner.params) - view, key)
        return CompressedServerState(inner, view, message, state.round + 1)

    layout_params: dict = {}
    base_server_init = server_init

    def server_init_recording(params):
        layout_params["like"] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), params)
        return base_server_init(params)

    return wrapped._replace(server_init=server_init_recording, broadcast=broadcast, client_init=client_init_down,
                            server_update=server_update)
