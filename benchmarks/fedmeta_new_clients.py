"""FedMeta (Chen et al. 2018) on scikit-learn's digits: accuracy of clients that never trained,
after K adaptation steps on their own training rows (support) measured on their test rows
(query), for FedAvg (+ the same fine-tuning) and the meta-learners; and the rounds each needs
to reach a target new-client accuracy.

    python benchmarks/fedmeta_new_clients.py [--smoke] [--out benchmarks/results/fedmeta_digits.csv]

Setup: digits in 20 clients by Dirichlet(0.3) labels, a quarter of them (5) held out; 15 train,
10 per round, 30 rounds of 10 local steps (batch 10), MLP 64-32-10. Every method adapts a new
client with the same 5 plain SGD steps at 0.05 (MAML's inner_lr = FedAvg's fine-tuning rate;
Meta-SGD starts its learned rates there). Seeds 0, 1, 2.
"""
from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np
import pandas as pd

import fedlab

LR = 0.05
META = {"client_lr": LR, "inner_lr": LR}
METHODS = {
    "FedAvg+FT": ("fedavg", {"client_lr": LR}),
    "Reptile (0.5)": ("reptile", {"client_lr": LR, "server_lr": 0.5}),
    "FOMAML": ("fomaml", META),
    "MAML": ("maml", META),
    "Meta-SGD": ("metasgd", META),
    "Per-FedAvg": ("perfedavg", META),
}
TARGET = 0.7


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/fedmeta_digits.csv")
    args = parser.parse_args(argv)
    fedlab.enable_compilation_cache()
    base = fedlab.Experiment(dataset="digits", partition="dirichlet:0.3", num_clients=20, model="mlp",
                             model_options={"hidden": [32]}, rounds=3 if args.smoke else 30, clients_per_round=10,
                             local_steps=10, batch_size=10, holdout_clients=0.25, adapt_steps=5)
    rows, began = [], time.time()
    for seed in [0] if args.smoke else [0, 1, 2]:
        experiment = base.replace(seed=seed)
        for label, (algorithm, options) in METHODS.items():
            h = experiment.replace(algorithm=algorithm, algorithm_options=options).run(progress=False)
            last = h.iloc[-1]
            rows.append({"seed": seed, "method": label, "new_client_accuracy": last["new_client_accuracy"],
                         "new_client_acc_mean": last["new_client_acc_mean"],
                         "personal_acc_mean": last["personal_acc_mean"],
                         "global_acc_mean": last["client_acc_mean"],
                         f"rounds_to_{TARGET}": fedlab.transfer.rounds_to(h, "new_client_accuracy", TARGET),
                         "best_new_client_accuracy": h["new_client_accuracy"].max()})
            print(f"{time.time() - began:6.0f}s seed={seed} {label:<14} new clients {rows[-1]['new_client_accuracy']:.3f} "
                  f"rounds to {TARGET}: {rows[-1][f'rounds_to_{TARGET}']}", flush=True)
    table = pd.DataFrame(rows)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    g = table.groupby("method", sort=False)
    summary = pd.DataFrame({c: g[c].mean().map("{:.3f}".format) + " ± " + g[c].std(ddof=0).map("{:.3f}".format)
                            for c in ["new_client_accuracy", "personal_acc_mean", "global_acc_mean"]})
    summary[f"rounds_to_{TARGET} (runs reaching it)"] = g[f"rounds_to_{TARGET}"].agg(
        lambda r: f"{np.nanmean(r):.1f} ({r.notna().sum()}/{len(r)})" if r.notna().any() else f"- (0/{len(r)})")
    print(summary.to_string())


if __name__ == "__main__":
    main()
