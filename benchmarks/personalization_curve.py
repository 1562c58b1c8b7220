"""The personalization curve (PFLlib's benchmark shape) on scikit-learn's digits: personalized vs
global accuracy as the Dirichlet label skew alpha goes from 0.01 (each client sees one or two
digits) to 5 (nearly IID), with islands (``local``) and the pooled (centralized) reference.

    python benchmarks/personalization_curve.py [--smoke] [--out benchmarks/results/personalization_digits.csv]

Setup: 20 clients, 10 per round, 30 rounds of 10 local SGD steps (batch 10, lr 0.05), an MLP
64-32-10; seeds 0, 1, 2. Per run the last round's mean per-client test accuracy of the global
model (global_acc_mean) and of the model each client uses (personal_acc_*). Prints the tables.
"""
from __future__ import annotations

import argparse
import pathlib
import time

import fedlab

LR = 0.05
VARIANTS = {
    "islands": {"algorithm": "local"},
    "FedAvg": {},
    "FedAvg+FT": {"finetune_steps": 10},
    "Ditto": {"algorithm": "ditto", "algorithm_options": {"client_lr": LR, "lam": 1.0}},
    "FedPer": {"algorithm": "fedper", "algorithm_options": {"client_lr": LR}},
    "FedRep": {"algorithm": "fedrep", "algorithm_options": {"client_lr": LR}},
    "Per-FedAvg": {"algorithm": "perfedavg", "algorithm_options": {"client_lr": LR, "inner_lr": LR}},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="2 alphas, 1 seed, 3 rounds")
    parser.add_argument("--out", default="benchmarks/results/personalization_digits.csv")
    args = parser.parse_args(argv)
    fedlab.enable_compilation_cache()
    base = fedlab.Experiment(dataset="digits", num_clients=20, model="mlp", model_options={"hidden": [32]},
                             rounds=3 if args.smoke else 30, clients_per_round=10, local_steps=10, batch_size=10,
                             algorithm_options={"client_lr": LR})
    alphas, seeds = ([0.1, 5.0], [0]) if args.smoke else ([0.01, 0.1, 0.5, 1.0, 5.0], [0, 1, 2])
    began = time.time()
    table = fedlab.transfer.sweep(base, VARIANTS, alphas=alphas, seeds=seeds, log=lambda r: print(
        f"{time.time() - began:6.0f}s alpha={r['alpha']:<5} seed={r['seed']} {r['method']:<11} "
        f"global {r['global_acc_mean']:.3f} personal {r['personal_acc_mean']:.3f}", flush=True))
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print("\npersonal_acc_mean (mean ± std over seeds)\n", fedlab.transfer.curve(table).to_string())
    print("\nglobal_acc_mean\n", fedlab.transfer.curve(table, "global_acc_mean").to_string())
    print("\npersonal_acc_p10\n", fedlab.transfer.curve(table, "personal_acc_p10").to_string())


if __name__ == "__main__":
    main()
