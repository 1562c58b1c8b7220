"""The engine: runs any ``Strategy`` as one jit-compiled XLA program per round.

Inside the round the sampled clients are ``jax.vmap``-ed over chunks of ``chunk_size``
clients, the chunks run one after another in ``lax.scan`` (so memory holds one chunk at a
time), local steps run in ``lax.scan`` (or a ``fori_loop`` with per-client trip counts when
clients do unequal work), and the weighted mean ``sum_k w_k u_k / sum_k w_k`` is accumulated
chunk by chunk in the same program. Training data stays on the device as flat arrays;
mini-batches are gathered by client offset, nothing is copied per round.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedlab.core.types import Batch, ClientInfo, Model, Strategy, is_host_aggregator, tree_nbytes


@dataclasses.dataclass(frozen=True)
class Plan:
    """The static shape of a round (everything that fixes the compiled program).

    slots: sampled-client slots per round (clients_per_round, or a bound for Poisson sampling),
    a multiple of chunk. local_steps / local_epochs: exactly one is set. stragglers: fraction
    of the sampled clients that do a random part of the work, uniform in [1, full - 1].
    """

    num_clients: int
    clients_per_round: int
    slots: int
    chunk: int
    batch_size: int
    local_steps: int | None
    local_epochs: int | None
    max_examples: int
    sampling: str
    stragglers: float
    devices: int = 1      # the slots are split evenly across this many devices (shard_round)

    @property
    def num_chunks(self) -> int:
        """Chunks each device scans over."""
        return self.slots // (self.chunk * self.devices)

    @property
    def equal_work(self) -> bool:
        """All clients do the same number of steps: a plain scan, no per-client trip count."""
        return self.local_steps is not None and self.stragglers == 0


class DeviceData(NamedTuple):
    """The training rows on the device, flat. A data source for the engine: ``counts``,
    ``offsets``, ``for_client(cid)`` and, on what that returns, ``batch(offset, rows, mask)``
    (fedlab.data.population.GeneratedSource is the other one: rows made from a client's key)."""

    x: jax.Array          # [N, *input_shape]
    y: jax.Array          # [N]
    weight: jax.Array | None   # [N] example weight in the loss (None when the dataset has none)
    offsets: jax.Array    # [K] first row of each client
    counts: jax.Array     # [K] n_k

    def for_client(self, cid) -> "DeviceData":
        return self

    def batch(self, offset, rows, mask) -> Batch:
        """rows: [B] row numbers within the client (from ``offset``); mask: [B] 1.0 for real rows."""
        weight = mask if self.weight is None else self.weight[offset + rows] * mask
        return Batch(self.x[offset + rows], self.y[offset + rows], weight)


class RoundOutput(NamedTuple):
    """metrics: local_loss (mean over the participants), participants (clients with weight > 0),
    params_finite (1.0 if the new server params are all finite, else 0.0: the run diverged), and
    the strategy's client metrics as weighted means and its aggregate's metrics."""

    server_state: Any
    client_states: Any
    metrics: dict
    pending: Any = None   # (updates, weights, key) left for a host aggregator


def device_data(data) -> DeviceData:
    weight = None if data.train_weights is None else np.asarray(data.train_weights, np.float32)
    return DeviceData(*to_device(data.x_train, data.y_train, weight, np.asarray(data.train_offsets[:-1], np.int32),
                                 np.asarray(data.train_counts, np.int32)))


def to_device(*arrays) -> tuple:
    """Private copies of host arrays on the default device, with the dtypes jnp.asarray gives
    (float64 -> float32, int64 -> int32), compiling nothing: jnp.asarray of a numpy array compiles
    a copy program for every new shape (5-15 ms each here). The copy is made in numpy: on CPU,
    jax.device_put shares the memory of a 64-byte aligned numpy array, may_alias=False or not."""
    return jax.device_put(tuple(None if a is None else np.array(a, copy=True) for a in arrays))


def _local_work(plan: Plan, strategy: Strategy, model: Model, data: DeviceData, sampled_fraction=1.0,
                shapes_only: bool = False):
    """One client's whole round: client_init, its local steps, client_final. shapes_only: without
    the local steps, for ``jax.eval_shape`` (the steps keep the local state's shapes, a scan carry):
    tracing the steps a second time only for the output's shapes cost 0.2 s of every compile."""
    B = plan.batch_size

    def run(broadcast, client_state, cid, num_steps, full_steps, roots):
        """roots: (batch key, client key) of the round; each client folds in its id. The client
        key (ClientInfo.key) is computed only if the strategy uses it."""
        n = data.counts[cid]
        offset = data.offsets[cid]
        k_batches, k_client = (jax.random.fold_in(root, cid) for root in roots)
        info = ClientInfo(n, num_steps, full_steps, k_client, sampled_fraction, cid)
        batch_at = data.for_client(cid).batch
        local = strategy.client_init(broadcast, client_state, info)

        if plan.local_steps is not None:
            # Every step's rows in one draw before the loop, drawn flat and reshaped: on CPU each
            # random call is a small rolled loop (slow inside the step loop), and a [steps, B]
            # draw doubled the compile time of the whole round (2.4 s against 1.2 s, logreg).
            # The rows are gathered in one gather too (one small gather per step cost more).
            all_rows = jax.random.randint(k_batches, (plan.local_steps * B,), 0, n)
            rows = batch_at(offset, all_rows, jnp.ones_like(all_rows, jnp.float32))
            rows = jax.tree.map(lambda a: a.reshape((plan.local_steps, B) + a.shape[1:]), rows)

            def batch(t):   # B rows drawn uniformly with replacement from the client's n_k
                return jax.tree.map(lambda a: a[t], rows)
        else:
            per_epoch = (n + B - 1) // B
            # One permutation per epoch; the client's own rows sort first, padding rows last.
            is_pad = jnp.arange(plan.max_examples) >= n
            u = jax.random.uniform(k_batches, (plan.local_epochs * plan.max_examples,))
            perms = jnp.argsort(u.reshape(plan.local_epochs, plan.max_examples) + is_pad, axis=1)

            def batch(t):   # step t walks epoch t // per_epoch in order; the last batch is partial
                pos = (t % per_epoch) * B + jnp.arange(B)
                rows = perms[t // per_epoch, jnp.minimum(pos, plan.max_examples - 1)]
                return batch_at(offset, rows, (pos < n).astype(jnp.float32))

        def step(carry, t):
            local, loss_sum = carry
            local, loss = strategy.client_step(local, batch(t), model.loss)
            return (local, loss_sum + loss), None

        carry = (local, jnp.zeros((), jnp.float32))
        if plan.equal_work and not shapes_only:
            carry, _ = jax.lax.scan(step, carry, jnp.arange(plan.local_steps))
        elif not shapes_only:
            carry = jax.lax.fori_loop(0, num_steps, lambda t, c: step(c, t)[0], carry)
        local, loss_sum = carry
        output, client_state = strategy.client_final(local, client_state, info)
        return output, client_state, loss_sum / jnp.maximum(num_steps, 1)

    return run


def _assign_work(plan: Plan, counts, valid, key):
    """(num_steps, full_steps) per slot; exactly round(stragglers * sampled) stragglers."""
    if plan.local_steps is not None:
        unit = jnp.ones_like(counts)
        full_units = jnp.full_like(counts, plan.local_steps)
    else:
        unit = (counts + plan.batch_size - 1) // plan.batch_size     # steps per epoch
        full_units = jnp.full_like(counts, plan.local_epochs)
    if plan.stragglers == 0:
        return full_units * unit, full_units * unit
    k_who, k_units = jax.random.split(key)
    num_valid = jnp.sum(valid)
    num_stragglers = jnp.round(plan.stragglers * num_valid).astype(jnp.int32)
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(k_who, counts.shape) + 2.0 * ~valid))
    straggles = rank < num_stragglers
    partial = jax.random.randint(k_units, counts.shape, 1, jnp.maximum(full_units, 2))
    units = jnp.where(straggles, jnp.minimum(partial, full_units), full_units)
    return units * unit, full_units * unit


def make_round(plan: Plan, strategy: Strategy, model: Model):
    """The round as a function (server_state, client_states, data, ids, valid, key) -> RoundOutput
    (not yet jitted). ids: [slots] sampled client ids; valid: [slots] False for padding slots.
    With a host aggregator the server update is left undone and ``pending`` holds the stacked
    updates for ``finish_on_host``."""
    body = _round_body(plan, strategy, model)

    def round_fn(server_state, client_states, data: DeviceData, ids, valid, key):
        return body(server_state, client_states, data, ids, valid, jax.random.split(key, 4))

    return round_fn


def _round_body(plan: Plan, strategy: Strategy, model: Model):
    """make_round's function with the round key already split (work, batches, clients, aggregate)."""
    stacked = strategy.aggregate is not None

    def round_body(server_state, client_states, data: DeviceData, ids, valid, keys):
        k_work, k_batches, k_clients, k_agg = keys
        work = _local_work(plan, strategy, model, data, jnp.sum(valid) / plan.num_clients)
        broadcast = strategy.broadcast(server_state)
        counts = data.counts[ids]
        num_steps, full_steps = _assign_work(plan, counts, valid, k_work)
        my_states = jax.tree.map(lambda s: s[ids], client_states)

        def chunked(t):
            return t.reshape((plan.num_chunks, plan.chunk) + t.shape[1:])

        def run_chunk(acc, xs):
            sum_wu, sum_w, sums = acc
            cstate, cid, steps, full, ok = xs
            out, new_state, local_loss = jax.vmap(work, in_axes=(None, 0, 0, 0, 0, None))(
                broadcast, cstate, cid, steps, full, (k_batches, k_clients))
            # Participants: real slots with weight > 0. The others are masked with where, never
            # multiplied by 0 (0 * NaN is NaN): what a dropped client or a padding slot computed
            # cannot reach the aggregate, the losses or the metrics.
            take = ok & (out.weight > 0)
            w = jnp.where(take, out.weight, 0.0)
            update = jax.tree.map(lambda u: jnp.where(take.reshape((-1,) + (1,) * (u.ndim - 1)), u, 0),
                                  out.update)
            chunk_sums = {"local_loss": jnp.sum(jnp.where(take, local_loss, 0.0)),
                          "participants": jnp.sum(take.astype(jnp.float32)),
                          **{name: jnp.sum(jnp.where(take, v, 0.0) * w) for name, v in out.metrics.items()}}
            sums = jax.tree.map(jnp.add, sums, chunk_sums)
            if stacked:
                return (sum_wu, sum_w + jnp.sum(w), sums), (update, w, new_state)
            sum_wu = jax.tree.map(lambda s, u: s + jnp.tensordot(w, u, 1), sum_wu, update)
            return (sum_wu, sum_w + jnp.sum(w), sums), (None, None, new_state)

        xs = jax.tree.map(lambda t: chunked(_mine(plan, t)), (my_states, ids, num_steps, full_steps, valid))
        one = jax.eval_shape(_local_work(plan, strategy, model, data, shapes_only=True), broadcast,
                             jax.tree.map(lambda s: s[0], my_states), ids[0], num_steps[0], full_steps[0],
                             (k_batches, k_clients))[0]
        sums = {name: jnp.zeros((), jnp.float32) for name in ("local_loss", "participants", *one.metrics)}
        init = (optax.tree_utils.tree_zeros_like(one.update), jnp.zeros((), jnp.float32), sums)
        (sum_wu, sum_w, sums), (updates, weights, new_states) = jax.lax.scan(run_chunk, init, xs)
        if plan.devices > 1:    # the weighted sums over all devices; every device's slots, in order
            sum_wu, sum_w, sums = jax.lax.psum((sum_wu, sum_w, sums), CLIENTS_AXIS)
            updates, weights, new_states = jax.lax.all_gather((updates, weights, new_states), CLIENTS_AXIS,
                                                              axis=0, tiled=True)

        flat_states = jax.tree.map(lambda t: t.reshape((plan.slots,) + t.shape[2:]), new_states)
        target = jnp.where(valid, ids, plan.num_clients)            # padding slots write nowhere
        client_states = jax.tree.map(lambda s, new: s.at[target].set(new, mode="drop"),
                                     client_states, flat_states)
        participants = sums.pop("participants")
        metrics = {"local_loss": sums.pop("local_loss") / jnp.maximum(participants, 1),
                   "participants": participants,
                   **{name: v / jnp.maximum(sum_w, 1e-12) for name, v in sums.items()}}
        if stacked:
            updates = jax.tree.map(lambda t: t.reshape((plan.slots,) + t.shape[2:]), updates)
            weights = weights.reshape(plan.slots)
            if is_host_aggregator(strategy.aggregate):    # finished on the host by finish_on_host
                return RoundOutput(server_state, client_states, metrics, (updates, weights, k_agg))
            aggregate, agg_metrics = strategy.aggregate(updates, weights, k_agg)
            metrics.update(agg_metrics)
        else:
            aggregate = jax.tree.map(lambda s: s / jnp.maximum(sum_w, 1e-12), sum_wu)
        new_server = strategy.server_update(server_state, aggregate)
        if not strategy.update_when_empty:      # no participant: the server state stays as it was
            new_server = jax.tree.map(lambda new, old: jnp.where(sum_w > 0, new, old),
                                      new_server, server_state)
        metrics["params_finite"] = params_finite(new_server.params)
        return RoundOutput(new_server, client_states, metrics)

    return round_body


CLIENTS_AXIS = "clients"     # the mesh axis the sampled clients are sharded over


def _mine(plan: Plan, t):
    """This device's contiguous share of a [slots, ...] array (all of it on one device)."""
    if plan.devices == 1:
        return t
    per = plan.slots // plan.devices
    return jax.lax.dynamic_slice_in_dim(t, jax.lax.axis_index(CLIENTS_AXIS) * per, per)


def client_mesh(devices: int) -> jax.sharding.Mesh:
    """A 1-d Mesh over the first ``devices`` of ``jax.devices()`` (every process's devices in a
    multi-host run), axis CLIENTS_AXIS; ValueError if there are fewer."""
    available = jax.devices()
    if devices > len(available):
        raise ValueError(f"devices must be at most the {len(available)} {jax.default_backend()} device(s) "
                         f"available, got {devices} (on CPU, set XLA_FLAGS=--xla_force_host_platform_"
                         f"device_count={devices} before jax is imported)")
    return jax.sharding.Mesh(np.array(available[:devices]), (CLIENTS_AXIS,))


# On CPU a round with less local work than this runs on one device: its kernels are too short for
# the split to pay off, and the devices wait for each other at the reduction whenever another
# process takes a core (logistic regression S: 2 devices 1.1x faster on the idle 2-core machine,
# 1.3x slower with one core busy; logistic regression at 1.5e7 FLOPs a round: 1.5x and 1.3x faster).
SHARD_MIN_FLOPS = 1e7


def auto_devices(clients_per_round: int, fixed: bool, replicated_bytes: int, chunk: int | None = None,
                 round_flops: Callable[[], float] | None = None) -> int:
    """devices="auto": the most devices of the default backend (on CPU, one per core: see
    ``use_cpu_cores``) that split a round evenly: a divisor of clients_per_round with fixed
    sampling (Poisson slots are padded to a multiple), into shares of at least ``chunk`` clients (a
    chunk size the user gave). The training arrays and the client states are replicated on every
    device (``replicated_bytes``), and CPU devices share the host's memory, so on CPU the extra
    copies must stay under 1 GiB (else one device), and a round of fewer than SHARD_MIN_FLOPS
    stays on one device (``round_flops()``, e.g. from ``round_flops``: called only when the round
    could otherwise be split, since it lowers a program). On the 2-core benchmark machine 2
    CPU devices run the MLP S and L rounds 1.8x and 2.0x faster and logistic regression L 1.7x
    (benchmarks/bench_engine.py): each small per-client kernel runs on one core, and a sharded
    round runs two of them at a time."""
    count, cpu = jax.device_count(), jax.default_backend() == "cpu"
    if cpu and replicated_bytes * (count - 1) > 1 << 30:
        return 1
    best = max(d for d in range(1, count + 1)
               if (not fixed or clients_per_round % d == 0) and clients_per_round // d >= (chunk or 1))
    if cpu and best > 1 and round_flops is not None and 0 < round_flops() < SHARD_MIN_FLOPS:
        return 1
    return best


def round_flops(model: Model, params, input_shape: tuple, batch_size: int, steps: int, clients: int) -> float:
    """The local training's FLOPs in a round, estimated: XLA's cost analysis of one mini-batch's
    loss gradient (lowered, not compiled), times ``steps`` and ``clients``; 0 when XLA gives none."""
    x = jax.ShapeDtypeStruct((batch_size, *input_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((batch_size,), jnp.int32 if model.num_classes > 0 else jnp.float32)
    grad = jax.grad(lambda p, x, y: jnp.sum(model.example_losses(p, x, y)))
    cost = jax.jit(grad).lower(params, x, y).cost_analysis()
    if isinstance(cost, (list, tuple)):         # older JAX: one dict per program
        cost = cost[0] if cost else None
    return float((cost or {}).get("flops", 0.0)) * steps * clients


def use_cpu_cores() -> int | None:
    """Ask JAX for one CPU device per core (called when fedlab is imported, before JAX starts), so
    that devices="auto" spreads a round over every core; returns the count asked for, or None
    when JAX is left as it is: the user chose a count (JAX_NUM_CPU_DEVICES, jax_num_cpu_devices,
    XLA_FLAGS=--xla_force_host_platform_device_count) or set FEDLAB_CPU_DEVICES (an integer; 1 keeps
    JAX's single CPU device), or JAX has already started (its device count is fixed then)."""
    chosen = os.environ.get("FEDLAB_CPU_DEVICES")
    if jax.config.jax_num_cpu_devices != -1 or "xla_force_host_platform_device_count" in os.environ.get(
            "XLA_FLAGS", ""):
        return None
    if chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            raise ValueError(f"FEDLAB_CPU_DEVICES must be an integer >= 1, got {chosen!r}")
        count = int(chosen)
    else:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:        # JAX has already run something: its devices are fixed
        return None
    return count


def shard_round(round_fn, mesh: jax.sharding.Mesh):
    """``round_fn`` (built with plan.devices == mesh.size) as one SPMD program over ``mesh``: every
    input and output is replicated; inside, each device runs the chunk scan over its share of the
    round's slots, and the weighted sums are psum-med across devices (the same reduction). The
    outputs are replicated by construction (psum / all_gather), so the per-value replication
    check, which the strategies' scan carries would otherwise have to annotate, is off."""
    P = jax.sharding.PartitionSpec
    return jax.shard_map(round_fn, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False)


def update_nbytes(plan: Plan, strategy: Strategy, model: Model, data: DeviceData, server_state, client_states):
    """(bytes one client sends up, bytes the server sends one client), from abstract shapes."""
    work = _local_work(plan, strategy, model, data, shapes_only=True)
    broadcast = jax.eval_shape(strategy.broadcast, server_state)
    one_state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), client_states)
    z = jax.ShapeDtypeStruct((), jnp.int32)
    out = jax.eval_shape(lambda b, s, i, k: work(b, s, i, i, i, (k, k))[0],
                         broadcast, one_state, z, jax.random.key(0))
    return tree_nbytes(out.update), tree_nbytes(broadcast)


def auto_chunk(clients_per_round: int, num_params: int, backend: str = "cpu") -> int:
    """Clients per vmapped chunk: the largest divisor of clients_per_round (no slot wasted)
    whose weights fit a budget. On CPU, wide vmaps turn a big matrix product into many small
    ones, which stops paying off once a chunk's weights leave the cache: 2^17 floats (512 KiB),
    the whole round for logistic regression, 2 clients of the 60-200-200-10 MLP. On the 2-core
    Xeon (Sapphire Rapids, 2 MiB L2) of the shared benchmark, chunks of 2 beat 5 by 14% (MLP S)
    and 18% (MLP L), interleaved in one process; 1, 4 and 10 were slower. (On a 2-core EPYC an
    earlier JAX was fastest at 5: the best width depends on the CPU, this is the measured one.)
    On a GPU the wide vmap is what fills the device: 2^28 floats (1 GiB), i.e. the whole round
    of the benchmark (on an H200, MLP L in chunks of 5 took 12.4 ms a round against 2.5 ms in
    one vmap; benchmarks/bench_engine.py)."""
    fits = max(1, (1 << (17 if backend == "cpu" else 28)) // max(num_params, 1))
    return max(d for d in range(1, min(clients_per_round, fits) + 1) if clients_per_round % d == 0)


#: XLA options for the programs fedlab compiles on CPU. The older loop emitters compile the
#: round's small elementwise kernels (random bits, the SGD update, masks) in about 35% less time
#: than the MLIR fusion emitters (MLP L round: 1.0-1.6 s against 1.5-2.3 s), and run them as fast
#: (steady rounds within 3% in all four benchmark cells, interleaved) with bit-identical results.
CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


@functools.cache
def compiler_options() -> dict:
    """CPU_COMPILER_OPTIONS on a CPU backend whose XLA knows them, else {} (GPU, or a JAX that
    dropped an option: the defaults then, rather than an error at the first round)."""
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS)(np.float32(0))
    except Exception:   # noqa: BLE001 - "No such compile option": keep XLA's defaults
        return {}
    return dict(CPU_COMPILER_OPTIONS)


def jit(fn, **kwargs):
    """``jax.jit`` with ``compiler_options()``: how fedlab compiles its round and evaluation programs."""
    return jax.jit(fn, compiler_options=compiler_options(), **kwargs)


def make_sampling_round(plan: Plan, strategy: Strategy, model: Model):
    """For ``sampling == "fixed"``: the round with its client sampling inside the compiled program,
    (server_state, client_states, data, run_key, r) -> RoundOutput, for round r (from 1): the
    clients are drawn without replacement in the program, with no host round trip."""
    body = _round_body(plan, strategy, model)

    def round_fn(server_state, client_states, data: DeviceData, run_key, r):
        k_sample, keys = _fixed_round_keys(run_key, r)
        ids = jnp.pad(sample_fixed(plan, k_sample), (0, plan.slots - plan.clients_per_round))
        valid = jnp.arange(plan.slots) < plan.clients_per_round
        return body(server_state, client_states, data, ids, valid, keys)

    return round_fn


def _fixed_round_keys(run_key, r):
    """(sampling key, (work, batches, clients, aggregate) keys) of fixed-sampling round r, the same
    in the compiled program and on the host (``round_inputs``)."""
    k_sample, *keys = jax.random.split(jax.random.fold_in(run_key, r), 5)
    return k_sample, tuple(keys)


def sample_fixed(plan: Plan, key) -> jax.Array:
    """[clients_per_round] distinct client ids in increasing order, a uniformly random subset:
    the positions of the clients_per_round smallest of num_clients uniforms (one random draw and
    a top_k, which compile and run faster than ``jax.random.choice`` without replacement)."""
    u = jax.random.uniform(key, (plan.num_clients,))
    return jnp.sort(jax.lax.top_k(-u, plan.clients_per_round)[1]).astype(jnp.int32)


def sample_poisson(plan: Plan, key) -> tuple[np.ndarray, np.ndarray]:
    """(ids, valid) for one Poisson-sampled round: each client joins with probability
    clients_per_round / num_clients; at least plan.slots slots, more (a recompile) if needed.
    Fixed sampling happens inside the compiled round (``make_sampling_round``)."""
    rate = plan.clients_per_round / plan.num_clients
    chosen = np.flatnonzero(np.asarray(jax.random.bernoulli(key, rate, (plan.num_clients,)))).astype(np.int32)
    unit = plan.chunk * plan.devices
    slots = max(plan.slots, math.ceil(len(chosen) / unit) * unit)
    valid = np.arange(slots) < len(chosen)
    return np.pad(chosen, (0, slots - len(chosen))), valid


def poisson_slots(clients_per_round: int, num_clients: int, chunk: int) -> int:
    """Slots that hold a Poisson sample with probability > 1 - 1e-6 (more triggers a recompile)."""
    rate = clients_per_round / num_clients
    bound = clients_per_round + 5 * math.sqrt(num_clients * rate * (1 - rate)) + 1
    return min(math.ceil(min(bound, num_clients) / chunk) * chunk, math.ceil(num_clients / chunk) * chunk)


def params_finite(params) -> jax.Array:
    """1.0 if every leaf of ``params`` is finite (no NaN, no +-inf), else 0.0: a diverged model."""
    finite = [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]
    return jnp.all(jnp.stack(finite)).astype(jnp.float32) if finite else jnp.float32(1.0)


def finish_on_host(strategy: Strategy, server_update, out: RoundOutput) -> RoundOutput:
    """Run a host aggregator (NumPy, outside jit) on the pending updates, then the server update;
    a round with no participant leaves the server state as it was (unless update_when_empty)."""
    updates, weights, key = out.pending
    weights = np.asarray(weights)
    server_state, agg_metrics = out.server_state, {}
    if weights.sum() > 0 or strategy.update_when_empty:
        aggregate, agg_metrics = strategy.aggregate(jax.tree.map(np.asarray, updates), weights, key)
        server_state = server_update(server_state, aggregate)
    metrics = {**out.metrics, **agg_metrics, "params_finite": params_finite(server_state.params)}
    return RoundOutput(server_state, out.client_states, metrics)


# ---- clients drawn on the host (Poisson sampling; data staged per round, fedlab.data.disk) ------
_sample_fixed_jit = jax.jit(sample_fixed, static_argnums=0)


def round_inputs(plan: Plan, run_key, r: int):
    """(ids [slots], valid [slots], keys (work, batches, clients, aggregate)) of round r drawn on the
    host: Poisson sampling, and fixed sampling with exactly the keys of ``make_sampling_round`` (so a
    source staged per round trains on the clients the in-program sampler would draw)."""
    if plan.sampling == "fixed":
        k_sample, keys = _fixed_round_keys(run_key, r)
        ids = np.pad(np.asarray(_sample_fixed_jit(plan, k_sample)), (0, plan.slots - plan.clients_per_round))
        return ids, np.arange(plan.slots) < plan.clients_per_round, keys
    k_sample, k_round = jax.random.split(jax.random.fold_in(run_key, r))
    ids, valid = sample_poisson(plan, k_sample)
    return ids, valid, tuple(jax.random.split(k_round, 4))


def make_host_sampled_round(plan: Plan, strategy: Strategy, model: Model):
    """The round for clients drawn on the host: (server_state, client_states, data, ids, valid, keys)
    -> RoundOutput with ``round_inputs``'s ids and keys; the same round body as ``make_round`` and
    ``make_sampling_round``."""
    return _round_body(plan, strategy, model)
