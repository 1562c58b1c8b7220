"""SecureBoost speed: seconds per tree with and without Paillier encryption and packing.

    python benchmarks/bench_secureboost.py [--rows 300 1000] [--trees 1] [--key-size 2048]

Reports CPU seconds of this process (what the run costs, stable on a shared machine) and
wall seconds. Data: a synthetic binary task (sklearn ``make_classification``, 24 features split 8 / 8 / 8
between the guest and two hosts), depth 3, 32 bins. Prints one row per (rows, mode).
Costs: one Paillier encryption per row and tree (two without packing), plus one decryption
per host split candidate (two without packing), or one per ~key_size / 128 candidates
(key_size / 64 without packing) with the hosts' cipher compression.
"""
from __future__ import annotations

import argparse
import time

import jax
import pandas as pd
from sklearn.datasets import make_classification

from fedlab.vertical import SecureBoostConfig, fit_secureboost

try:
    import gmpy2  # noqa: F401  (phe uses it for modular arithmetic when installed)
    BACKEND = "gmpy2"
except ImportError:
    BACKEND = "pure Python"


def run(rows: int, trees: int, key_size: int, insecure: bool = False) -> list[dict]:
    x, y = make_classification(n_samples=rows, n_features=24, n_informative=12, random_state=0)
    guest, hosts = x[:, :8], [x[:, 8:16], x[:, 16:]]
    out = []
    # warm-up: jax compiles the key derivation once
    fit_secureboost(guest[:50], y[:50], [h[:50] for h in hosts],
                    SecureBoostConfig(num_trees=1, encrypt=False), key=jax.random.key(0))
    for mode, encrypt, packing, compress in [("plaintext", False, True, False),
                                             ("paillier, packed g/h, compressed", True, True, True),
                                             ("paillier, packed g/h", True, True, False),
                                             ("paillier, g and h apart, compressed", True, False, True),
                                             ("paillier, g and h apart", True, False, False)]:
        cfg = SecureBoostConfig(num_trees=trees, max_depth=3, max_bin=32, encrypt=encrypt, packing=packing,
                                compress=compress, key_size=key_size, insecure_test_key=insecure)
        start, cpu_start = time.perf_counter(), time.process_time()
        model = fit_secureboost(guest, y, hosts, cfg, key=jax.random.key(0))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        candidates = sum(sum(len(s) for s in m.payload["sums"]) for m in model.transcript
                         if m.name.endswith("split_candidates"))
        out.append({"rows": rows, "mode": mode, "cpu_s_per_tree": cpu / trees,
                    "wall_s_per_tree": seconds / trees,
                    "ciphertexts_per_tree": rows * (0 if not encrypt else 1 if packing else 2),
                    "decryptions_per_tree": candidates / trees if encrypt else 0})
        print(f"  done: {out[-1]}", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--trees", type=int, default=1)
    parser.add_argument("--key-size", type=int, default=2048)
    parser.add_argument("--insecure-test-key", action="store_true", help="allow a key below 2048 bits")
    args = parser.parse_args()
    table = pd.DataFrame([r for rows in args.rows for r in run(rows, args.trees, args.key_size, args.insecure_test_key)])
    print(f"SecureBoost, depth 3, 32 bins, 2 hosts, {args.key_size}-bit Paillier ({BACKEND}), "
          f"{args.trees} trees per run")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
