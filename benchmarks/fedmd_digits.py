"""FedMD (Li & Wang 2019) on scikit-learn's digits: heterogeneous parties with a few private rows
each, per party: islands (own rows only), transfer (public, then own rows: FedMD before round 1),
FedMD (digest by L1 on logits, the paper's, and by KL), FedMD without the public labels (no
transfer step on the public set: only the distilled scores carry knowledge; it starts from its
own rows alone) and pooled (public, then every party's rows pooled; same architecture).

    python benchmarks/fedmd_digits.py [--smoke] [--out benchmarks/results/fedmd_digits.csv]

Setup: digits in 10 parties (IID), 20% of each party's rows for testing (about 36), then 80% of
each party's training rows moved to the public set (holdout:0.8: about 1,150 labelled public rows,
about 29 private rows a party, 3 a class); architectures round-robin logreg, mlp (64-200-200-10),
cnn; Adam 0.01, batch 10; transfer: 5 epochs on the public set, 10 on the private rows; 10 rounds
of: scores on 500 public rows, digest 50 steps (L1 on logits), revisit 2 epochs. Seeds 0, 1, 2.
"""
from __future__ import annotations

import argparse
import pathlib
import time

import pandas as pd

import fedlab
from fedlab.transfer import fedmd

OPTIONS = {"public_rows": 500, "digest_steps": 50, "public_epochs": 5, "private_epochs": 10, "client_lr": 0.01}
METHODS = ["islands", "transfer", "fedmd_l1", "fedmd_kl", "unlabeled_start", "unlabeled_l1", "unlabeled_kl", "pooled"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/fedmd_digits.csv")
    args = parser.parse_args(argv)
    fedlab.enable_compilation_cache()
    base = fedlab.Experiment(dataset="digits", num_clients=10, algorithm="fedmd", models=("logreg", "mlp", "cnn"),
                             public="holdout:0.8", algorithm_options=OPTIONS, rounds=2 if args.smoke else 10,
                             local_epochs=2, batch_size=10)
    rows, began = [], time.time()
    for seed in range(1 if args.smoke else args.seeds):
        experiment = base.replace(seed=seed)
        built = experiment.build()
        table = fedmd.baselines(experiment, built=built)
        for loss in ("l1", "kl"):
            for label, public_epochs in (("fedmd", OPTIONS["public_epochs"]), ("unlabeled", 0)):
                options = {**OPTIONS, "digest_loss": loss, "public_epochs": public_epochs}
                h = experiment.replace(algorithm_options=options).run(progress=False)
                table[f"{label}_{loss}"] = [h[f"party_{k}_acc"].iloc[-1] for k in range(len(table))]
                if label == "unlabeled":
                    table["unlabeled_start"] = h.per_client["transfer_accuracy"].to_numpy()
        table["seed"] = seed
        table["bytes_up"] = h["bytes_up"].sum()
        rows.append(table[["seed", "party", "architecture", *METHODS, "bytes_up"]])
        print(f"seed {seed} ({time.time() - began:.0f} s):")
        print(table.groupby("architecture", sort=False)[METHODS].mean().round(3).to_string(), flush=True)
    out = pd.concat(rows, ignore_index=True)
    if not args.smoke:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        out.to_csv(args.out, index=False)
    print(summary(out).to_string())


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Architecture x method: 'mean ± std' over seeds of the mean accuracy of that architecture's parties."""
    methods = METHODS
    per_seed = table.groupby(["seed", "architecture"], sort=False)[methods].mean()
    everyone = table.groupby("seed")[methods].mean().assign(architecture="all parties").set_index(
        "architecture", append=True)
    per_seed = pd.concat([per_seed, everyone])
    g = per_seed.groupby(level="architecture", sort=False)
    return g.mean().map("{:.3f}".format) + " ± " + g.std(ddof=0).map("{:.3f}".format)


if __name__ == "__main__":
    main()
