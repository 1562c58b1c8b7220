"""fedlab / centralized floor in this machine's fast and slow stretches (one process).

The shared 2-core VM runs at two speeds that alternate every few seconds. This script times N
rounds of fedlab.simulate on a bench_engine cell (default MLP L, devices="auto") with one round of
the centralized floor after each fedlab round (the same interleaving as bench_engine.py), splits
the rounds by the floor's speed (fast: the floor within 15% of its 10th percentile) and prints the
median seconds and the fedlab / floor ratio of each part and of all rounds.

    python benchmarks/bench_drift.py                     # MLP L, 150 rounds (~40 s)
    python benchmarks/bench_drift.py --cell logreg:L --rounds 300
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

import fedlab

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_engine as be  # noqa: E402  (benchmarks/bench_engine.py, next to this file)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cell", default="mlp:L", choices=be.COLUMNS)
    ap.add_argument("--rounds", type=int, default=150)
    a = ap.parse_args()
    model, scale = a.cell.split(":")
    path = be.data_file(scale)
    npz, data = dict(np.load(path)), fedlab.FederatedDataset.from_npz(path)
    floor = be.Reference(npz, model, be.SCALES[scale]["per_round"], "central")
    times, _ = be.run_fedlab(data, npz, model, be.SCALES[scale]["per_round"], a.rounds,
                             [be.interleave([floor])])
    ours, ref = np.array(times[1:]), np.array(floor.times[1:len(times)])
    fast = ref <= 1.15 * np.percentile(ref, 10)
    print(f"{a.cell}: {len(ours)} steady rounds, fedlab interleaved with the centralized floor")
    print("| rounds | count | fedlab s | floor s | fedlab / floor |")
    print("|---|---|---|---|---|")
    for name, part in (("floor fast", fast), ("floor slow", ~fast), ("all", np.ones_like(fast))):
        if part.any():
            f, c = np.median(ours[part]), np.median(ref[part])
            print(f"| {name} | {int(part.sum())} | {f:.4f} | {c:.4f} | {f / c:.2f} |")


if __name__ == "__main__":
    main()
