"""A real dataset larger than memory, from disk (issue 15): conversion and training memory and time.

1. Writes a Parquet file of ``--clients`` clients with FedProx Synthetic(1,1)-like rows (60 float32
   features, an int32 label, an int64 client column), streamed one row group of 1000 clients at a
   time (rows shuffled within the group, so clients interleave), never whole in memory. Client
   sizes 50 + floor(LogNormal(4, 1.2)): about 160 rows a client, 5.5 GiB uncompressed at 100k clients.
2. Converts it (``client_data="disk"``: fedlab.data.disk.cached_disk into $FEDLAB_CACHE/disk) in a
   fresh process: seconds and peak memory.
3. Runs ``fedlab.Experiment(dataset="parquet:PATH", partition="column:client", client_data="disk",
   ...)``: FedAvg, 1000 clients a round, logreg, 20 local steps of batch 10, 5 rounds, evaluated on
   1000 clients.

Setup: ``build()`` (opening the converted arrays) and what ``run`` does before round 1 (staging the
first round, reading the evaluation sample). Memory: ru_maxrss (peak resident set), and the peaks of RssAnon (the process's own memory) and
RssFile (mapped file pages: counted in the resident set, but clean ones are reclaimable), sampled
from /proc/self/status every 50 ms.

    python benchmarks/bench_disk.py --dir /tmp/fedlab-disk-bench            # 100k clients
    python benchmarks/bench_disk.py --dir /tmp/x --clients 2000 --keep      # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np

MONITOR = textwrap.dedent("""
    import resource, threading, time
    peaks = {"RssAnon": 0, "RssFile": 0}
    def watch():
        while True:
            with open("/proc/self/status") as f:
                for line in f:
                    name = line.split(":")[0]
                    if name in peaks:
                        peaks[name] = max(peaks[name], int(line.split()[1]) * 1024)
            time.sleep(0.05)
    threading.Thread(target=watch, daemon=True).start()
    def memory():
        return dict(peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                    peak_anon_gib=peaks["RssAnon"] / 2**30, peak_file_gib=peaks["RssFile"] / 2**30)
""")

CONVERT = MONITOR + textwrap.dedent("""
    import json, sys
    from fedlab.data.disk import cached_disk
    t0 = time.perf_counter()
    d = cached_disk(sys.argv[1], client_column="client", target="label")
    print(json.dumps(dict(seconds=time.perf_counter() - t0, clients=d.num_clients, rows=d.num_rows, **memory())))
""")

RUN = MONITOR + textwrap.dedent("""
    import json, sys
    t0 = time.perf_counter()
    import fedlab
    exp = fedlab.Experiment(dataset=f"parquet:{sys.argv[1]}", dataset_options={"target": "label"},
                            partition="column:client", client_data="disk", model="logreg", clients_per_round=1000,
                            local_steps=20, batch_size=10, rounds=5)
    t1 = time.perf_counter()
    built = exp.build()
    setup = time.perf_counter() - t1
    t2 = time.perf_counter()
    h = exp.run(built=built, progress=False)
    # what simulate did before its first round (open, first staging, evaluation sample, compile of the evaluator)
    setup += time.perf_counter() - t2 - float(h["elapsed"].iloc[-1])
    print(json.dumps(dict(setup=setup, first=float(h["seconds"].iloc[0]), steady=float(h["seconds"].iloc[1:].median()),
                          total=time.perf_counter() - t0, accuracy=float(h["test_accuracy"].iloc[-1]), status=h.status,
                          evaluated=h.attrs["evaluated_clients"], **memory())))
""")


def write_parquet(path: str, clients: int, seed: int = 0, group: int = 1000) -> None:
    """Synthetic(1,1)-like rows, written one row group of ``group`` clients at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    sizes = 50 + np.floor(np.exp(4.0 + 1.2 * rng.standard_normal(clients))).astype(np.int64)
    scale = np.sqrt(np.arange(1, 61, dtype=np.float64) ** -1.2).astype(np.float32)
    names = [f"x{j}" for j in range(1, 61)]
    schema = pa.schema([*(pa.field(n, pa.float32()) for n in names), pa.field("label", pa.int32()),
                        pa.field("client", pa.int64())])
    tmp = path + ".tmp"
    with pq.ParquetWriter(tmp, schema, compression="none") as writer:
        for start in range(0, clients, group):
            n = sizes[start:start + group]
            k = len(n)
            u, B = rng.standard_normal(k), rng.standard_normal(k)
            W = (u[:, None, None] + rng.standard_normal((k, 60, 10))).astype(np.float32)
            b = (u[:, None] + rng.standard_normal((k, 10))).astype(np.float32)
            v = (B[:, None] + rng.standard_normal((k, 60))).astype(np.float32)
            who = np.repeat(np.arange(k), n)
            x = v[who] + scale * rng.standard_normal((len(who), 60), dtype=np.float32)
            bounds = np.concatenate([[0], np.cumsum(n)])
            y = np.concatenate([np.argmax(x[s:e] @ W[i] + b[i], axis=1) for i, (s, e) in
                                enumerate(zip(bounds[:-1], bounds[1:]))]).astype(np.int32)
            order = rng.permutation(len(who))            # clients interleave within the row group
            columns = [pa.array(x[order, j]) for j in range(60)]
            columns += [pa.array(y[order]), pa.array((start + who[order]).astype(np.int64))]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    os.replace(tmp, path)


def child(script: str, *args: str, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="where the Parquet file and the converted arrays go")
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the files (default: deleted at the end)")
    a = parser.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    path = os.path.join(a.dir, f"clients{a.clients}.parquet")
    env = {**os.environ, "FEDLAB_CACHE": os.path.join(a.dir, "cache")}
    try:
        if not os.path.exists(path):
            t0 = time.perf_counter()
            write_parquet(path, a.clients)
            print(f"wrote {path}: {os.path.getsize(path) / 2**30:.2f} GiB in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        c = child(CONVERT, path, env=env)
        print(f"conversion: {c['clients']} clients, {c['rows']} rows, {c['seconds']:.0f} s, peak RSS "
              f"{c['peak_rss_gib']:.2f} GiB (RssAnon {c['peak_anon_gib']:.2f}, RssFile {c['peak_file_gib']:.2f})",
              flush=True)
        print("| setup s | first round s | steady round s | peak RSS GiB | RssAnon GiB | RssFile GiB | accuracy |")
        print("|---|---|---|---|---|---|---|")
        for _ in range(2):
            r = child(RUN, path, env=env)
            print(f"| {r['setup']:.1f} | {r['first']:.2f} | {r['steady']:.3f} | "
                  f"{r['peak_rss_gib']:.2f} | {r['peak_anon_gib']:.2f} | {r['peak_file_gib']:.2f} | "
                  f"{r['accuracy']:.3f} |", flush=True)
    finally:
        if not a.keep:           # only what this script wrote
            shutil.rmtree(env["FEDLAB_CACHE"], ignore_errors=True)
            for name in (path, path + ".tmp"):
                if os.path.exists(name):
                    os.remove(name)


if __name__ == "__main__":
    main()
