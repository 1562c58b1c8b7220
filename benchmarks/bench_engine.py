"""fedlab's engine on the shared peer workload (../shared/bench), next to hand-written JAX.

Same data file, same initial weights, same math as the peers measured in
../shared/bench/RESULTS.md ($FEDLAB_PEERBENCH): FedAvg, 20 local SGD steps of batch 10 at lr 0.01, server =
sample-count-weighted mean; S = 100 clients / 10 per round, L = 1000 clients / 100 per round;
multinomial logistic regression and an MLP 60-200-200-10. In one process, interleaved round by
round (the machine's speed drifts), it times fedlab.simulate and three hand-written references
(one jitted round with a vmap over all clients; lax.map over vmapped chunks of 5; the
centralized floor, the same sample-gradients on one model) and fedlab's round on one device
(fedlab itself uses every device, devices="auto": on CPU one per core), and prints steady seconds per round
(median of rounds 2..R, then median over repetitions), the first round (compile included: cold
in the first repetition, from a persistent compilation cache in the others), and the peers' rows
read from RESULTS.md when ../shared/bench is there (else those rows are left out). The data
files are generated into benchmarks/data/ on first use by benchmarks/workload.py (numpy only;
the same arrays as the shared gen_data.py), so the script runs in a plain clone.

    python benchmarks/bench_engine.py                  # the whole table (~10 min on 2 cores)
    python benchmarks/bench_engine.py --cells logreg:S mlp:L --reps 3
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fedlab

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import workload  # noqa: E402  (benchmarks/workload.py, next to this file)

HERE = pathlib.Path(__file__).resolve().parent
BENCH = pathlib.Path(os.environ.get("FEDLAB_PEERBENCH", HERE.parent.parent / "shared" / "bench"))
DATA = HERE / "data"
SCALES = {"S": dict(clients=100, seed=0, per_round=10, rounds=50),
          "L": dict(clients=1000, seed=1, per_round=100, rounds=20)}
LOCAL_STEPS, BATCH, LR = 20, 10, 0.01


def data_file(scale: str) -> pathlib.Path:
    """benchmarks/data/synth_<scale>.npz, made by benchmarks/workload.py (numpy only) if missing."""
    path = DATA / f"synth_{scale}.npz"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        workload.write(path, SCALES[scale]["clients"], SCALES[scale]["seed"])
    return path


def initial_params(npz: dict, model: str):
    """The file's fixed initial weights in fedlab's layout ({'W', 'b'} or a list of layers)."""
    if model == "logreg":
        return {"W": jnp.asarray(npz["lr_W"]), "b": jnp.asarray(npz["lr_b"])}
    return [{"W": jnp.asarray(npz[f"mlp_W{i}"]), "b": jnp.asarray(npz[f"mlp_b{i}"])} for i in (1, 2, 3)]


# ---- fedlab -------------------------------------------------------------------------------
def run_fedlab(data, npz, model: str, per_round: int, rounds: int, callbacks=()) -> tuple[list[float], float]:
    """Per-round seconds of fedlab.simulate (the History's 'seconds': sampling, local work and
    aggregation, no evaluation) and the final test accuracy."""
    h = fedlab.simulate("fedavg", model, data, rounds=rounds, clients_per_round=per_round,
                        local_steps=LOCAL_STEPS, batch_size=BATCH, client_lr=LR, eval_every=rounds,
                        init_params=initial_params(npz, model), progress=False, callbacks=callbacks)
    return h["seconds"].tolist(), float(h["test_accuracy"].iloc[-1])


# ---- hand-written references (the modes of ../shared/bench/ref_jax.py) -------------------------
def reference_round(npz: dict, model: str, per_round: int, mode: str, chunk: int = 5):
    """A jitted round (params, ids, key) -> params written by hand, as in ref_jax.py."""
    counts = np.diff(npz["train_offsets"])
    K, P = len(counts), int(counts.max())
    xp = np.zeros((K, P, 60), np.float32)
    yp = np.zeros((K, P), np.int32)
    for k in range(K):
        a, b = npz["train_offsets"][k], npz["train_offsets"][k + 1]
        xp[k, :b - a], yp[k, :b - a] = npz["X_train"][a:b], npz["y_train"][a:b]
    xp, yp, nj = jnp.asarray(xp), jnp.asarray(yp), jnp.asarray(counts, jnp.int32)
    xflat, yflat = jnp.asarray(npz["X_train"]), jnp.asarray(npz["y_train"])
    C = per_round

    def forward(p, x):
        for i in range(0, len(p) - 2, 2):
            x = jax.nn.relu(x @ p[i] + p[i + 1])
        return x @ p[-2] + p[-1]

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean()

    def sgd(p, x, y):
        return jax.tree.map(lambda w, g: w - LR * g, p, jax.grad(loss)(p, x, y))

    def local_update(p, x, y, n, key):
        def step(p, k):
            idx = jax.random.randint(k, (BATCH,), 0, n)
            return sgd(p, x[idx], y[idx]), None
        return jax.lax.scan(step, p, jax.random.split(key, LOCAL_STEPS))[0]

    clients = jax.vmap(local_update, in_axes=(None, 0, 0, 0, 0))

    def round_vmap(p, ids, key):
        n = nj[ids]
        new = clients(p, xp[ids], yp[ids], n, jax.random.split(key, C))
        return jax.tree.map(lambda q: jnp.tensordot(n / n.sum(), q, 1), new)

    def round_chunk(p, ids, key):
        n = nj[ids]
        resh = lambda t: t.reshape((C // chunk, chunk) + t.shape[1:])
        new = jax.lax.map(lambda a: clients(p, *a), (resh(xp[ids]), resh(yp[ids]), resh(n),
                                                    resh(jax.random.split(key, C))))
        return jax.tree.map(lambda q: jnp.tensordot(resh(n / n.sum()), q, 2), new)

    def round_central(p, ids, key):
        def step(p, k):
            idx = jax.random.randint(k, (C * BATCH,), 0, len(yflat))
            return sgd(p, xflat[idx], yflat[idx]), None
        return jax.lax.scan(step, p, jax.random.split(key, LOCAL_STEPS))[0]

    return jax.jit({"vmap": round_vmap, "chunk": round_chunk, "central": round_central}[mode])


class OneDevice:
    """fedlab's own round program on one device (what devices=1 runs), stepped like a Reference,
    next to the simulate run that uses every device (devices="auto": on CPU one per core)."""

    def __init__(self, data, npz, model: str, per_round: int):
        from fedlab.core import engine
        from fedlab.core.simulate import initial_state, resolve_model, resolve_strategy

        strategy = resolve_strategy("fedavg", {"client_lr": LR})
        model_ = resolve_model(model, data, None)
        _, self.server, self.clients = initial_state(strategy, model_, data.num_clients, 0, initial_params(npz, model))
        num_params = sum(np.size(p) for p in jax.tree.leaves(self.server.params))
        plan = engine.Plan(data.num_clients, per_round, per_round, engine.auto_chunk(per_round, num_params),
                           BATCH, LOCAL_STEPS, None, int(data.train_counts.max()), "fixed", 0.0)
        self.fn = engine.jit(engine.make_sampling_round(plan, strategy, model_))
        self.dev, self.key, self.times = engine.device_data(data), jax.random.key(0), []

    def round(self, r: int) -> None:
        t0 = time.perf_counter()
        out = self.fn(self.server, self.clients, self.dev, self.key, np.int32(r + 1))
        self.server, self.clients = jax.block_until_ready((out.server_state, out.client_states))
        self.times.append(time.perf_counter() - t0)


class Reference:
    """A hand-written implementation stepped one round at a time, on the shared schedule (as in
    fl_common.schedule); ``times`` holds its seconds per round."""

    def __init__(self, npz: dict, model: str, per_round: int, mode: str):
        self.fn = reference_round(npz, model, per_round, mode)
        keys = ("lr_W", "lr_b") if model == "logreg" else tuple(f"mlp_{w}{i}" for i in (1, 2, 3) for w in "Wb")
        self.params = [jnp.asarray(npz[k]) for k in keys]
        self.key, self.times = jax.random.key(0), []
        self.num_clients, self.per_round = len(npz["train_offsets"]) - 1, per_round

    def round(self, r: int) -> None:
        ids = np.random.RandomState(r).choice(self.num_clients, self.per_round, replace=False)
        t0 = time.perf_counter()
        self.key, sub = jax.random.split(self.key)
        self.params = jax.block_until_ready(self.fn(self.params, jnp.asarray(ids), sub))
        self.times.append(time.perf_counter() - t0)


def interleave(references):
    """A simulate callback: after each fedlab round, one round of each reference (each first in turn)."""
    order = list(references)

    def step(event):
        k = event.round % len(order)
        for ref in order[k:] + order[:k]:
            ref.round(event.round - 1)
    return step


# ---- the table --------------------------------------------------------------------------------
PEERS = {"FedJAX 0.0.17": "FedJAX", "pfl 0.6.0": "pfl", "Flower 1.42": "Flower",
         "reference JAX, fused vmap": "ref vmap", "reference JAX, lax.map over vmapped chunks of 5": "ref chunk 5"}
COLUMNS = ("logreg:S", "mlp:S", "logreg:L", "mlp:L")


def peer_rows(path: pathlib.Path = BENCH / "RESULTS.md") -> dict[str, list[float]]:
    """Steady seconds per round of FedJAX, pfl and Flower, from the shared RESULTS.md table
    ({} when there is none, e.g. in a plain clone)."""
    rows = {}
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        for prefix, name in PEERS.items():
            if line.startswith("| " + prefix):
                rows[name] = [float(v) for v in re.findall(r"\|\s*([0-9.]+)\s*(?=\|)", line)[-4:]]
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", nargs="+", default=list(COLUMNS), choices=COLUMNS)
    ap.add_argument("--reps", type=int, default=3, help="repetitions (median taken)")
    ap.add_argument("--rounds", type=int, default=None, help="override rounds per run (default 50 S, 20 L)")
    ap.add_argument("--cache", default=None, help="persistent compilation cache directory (default: a new "
                    "temporary one, so repetition 0 compiles cold and later ones load from the cache)")
    a = ap.parse_args()
    fedlab.enable_compilation_cache(a.cache or tempfile.mkdtemp(prefix="fedlab-bench-cache-"))
    impls = ("fedlab", "ref vmap", "ref chunk 5", "ref central", "fedlab, 1 device")
    steady = {(i, c): [] for i in impls for c in a.cells}
    first = {(i, c): [] for i in impls for c in a.cells}
    for rep in range(a.reps):
        for cell in a.cells:
            model, scale = cell.split(":")
            s = SCALES[scale]
            rounds = a.rounds or s["rounds"]
            path = data_file(scale)
            npz = dict(np.load(path))
            data = fedlab.FederatedDataset.from_npz(path)
            refs = {impl: Reference(npz, model, s["per_round"], impl.split()[1]) for impl in impls[1:4]}
            refs["fedlab, 1 device"] = OneDevice(data, npz, model, s["per_round"])
            fedlab_times, acc = run_fedlab(data, npz, model, s["per_round"], rounds, [interleave(refs.values())])
            for impl in impls:
                times = fedlab_times if impl == "fedlab" else refs[impl].times
                steady[impl, cell].append(float(np.median(times[1:])))
                first[impl, cell].append(times[0])
                print(f"rep {rep} {cell:9s} {impl:16s} steady {steady[impl, cell][-1]:.4f} s  "
                      f"first {times[0]:.2f} s" + (f"  acc {acc:.3f}" if impl == "fedlab" else ""), flush=True)

    med = lambda d, i, c: float(np.median(d[i, c]))
    print(f"\nSteady seconds per round (median of rounds 2..R, median over {a.reps} reps, interleaved round "
          f"by round; this machine, this process; fedlab on {jax.device_count()} {jax.default_backend()} "
          f"device(s))\n")
    print("| implementation | " + " | ".join(a.cells) + " |")
    print("|---|" + "---|" * len(a.cells))
    for impl in impls:
        print(f"| {impl} | " + " | ".join(f"{med(steady, impl, c):.4g}" for c in a.cells) + " |")
    peers = peer_rows()
    for name, vals in peers.items():
        if name.startswith("ref"):
            continue
        print(f"| {name} (RESULTS.md) | " + " | ".join(f"{vals[COLUMNS.index(c)]:.3g}" for c in a.cells) + " |")
    print("| fedlab / best reference | " + " | ".join(
        f"{med(steady, 'fedlab', c) / min(med(steady, i, c) for i in impls[1:3]):.2f}" for c in a.cells) + " |")
    print("| fedlab / centralized floor | " + " | ".join(
        f"{med(steady, 'fedlab', c) / med(steady, 'ref central', c):.2f}" for c in a.cells) + " |")
    print("\nFirst round, seconds: cold compile (repetition 0) / from the persistent cache (median of "
          "the other repetitions)\n")
    print("| implementation | " + " | ".join(a.cells) + " |")
    print("|---|" + "---|" * len(a.cells))
    for impl in impls:
        warm = lambda c, impl=impl: f"{np.median(first[impl, c][1:]):.2f}" if a.reps > 1 else "-"
        print(f"| {impl} | " + " | ".join(f"{first[impl, c][0]:.2f} / {warm(c)}" for c in a.cells) + " |")
    # RESULTS.md was measured on another (or differently loaded) machine: express fedlab in units
    # of the best hand-written reference measured here, and the peers in units of the same
    # reference as measured in RESULTS.md.
    best_ref = lambda c: min(med(steady, i, c) for i in impls[1:3])
    best_ref_peers = lambda c: min(peers[i][COLUMNS.index(c)] for i in ("ref vmap", "ref chunk 5"))
    if not all(name in peers for name in ("FedJAX", "pfl", "Flower", "ref vmap", "ref chunk 5")):
        print(f"\n(no peer rows: {BENCH / 'RESULTS.md'} not found; set FEDLAB_PEERBENCH to the shared bench folder)")
        return
    print("\nfedlab speed-up over the peers: (peer / best reference, both from RESULTS.md) / "
          "(fedlab / best reference, both measured here)\n")
    print("| peer | " + " | ".join(a.cells) + " |")
    print("|---|" + "---|" * len(a.cells))
    for name in ("FedJAX", "pfl", "Flower"):
        print(f"| {name} | " + " | ".join(
            f"{(peers[name][COLUMNS.index(c)] / best_ref_peers(c)) / (med(steady, 'fedlab', c) / best_ref(c)):.1f}x"
            for c in a.cells) + " |")


if __name__ == "__main__":
    main()
