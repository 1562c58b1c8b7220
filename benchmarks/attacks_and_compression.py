"""Measured results of issue 13 (malicious clients, robust aggregation, compression) on digits.

    python benchmarks/attacks_and_compression.py [robustness|alie|backdoor|fltrust|compression|all] [--seeds 2]

Writes benchmarks/results/attacks_*.csv (one row per run: settings, final metrics) and
compression_curves.csv (one row per evaluated round: cumulative MB up, test accuracy), and prints
the tables of the README. Every run is a ``fedlab.Experiment``; nothing here is special-cased.
"""
from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np
import pandas as pd

import fedlab

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
# digits, 20 iid clients (about 72 training rows each), all of them every round, logistic regression
BASE = dict(dataset="digits", num_clients=20, clients_per_round=20, rounds=30, local_epochs=1, batch_size=16,
            algorithm_options={"client_lr": 0.1})
DEFENSES = [None, "median", "trimmed_mean:0.2", "krum:8"]


def run(seed: int, **changes) -> dict:
    e = fedlab.Experiment(**{**BASE, **changes, "seed": seed})
    t0 = time.perf_counter()
    h = e.run(progress=False)
    last = h.iloc[-1]
    row = {**{k: changes.get(k) for k in ("attack", "attackers", "defense", "compress", "error_feedback")},
           "seed": seed, "status": h.status, "test_accuracy": float(last["test_accuracy"]),
           "attackers_n": len(h.attackers or []), "seconds": time.perf_counter() - t0}
    if "backdoor_accuracy" in h:
        row["backdoor_accuracy"] = float(last["backdoor_accuracy"])
    if "defense_clipped" in h:
        row["clipped_share"] = float(h["defense_clipped"].mean())
    return row, h


def table(rows, path):
    df = pd.DataFrame(rows)
    df.to_csv(path, index=False)
    return df


def robustness(seeds):
    rows = []
    for attack in ("sign_flip", "scale:10", "alie"):
        for frac in (0.0, 0.2, 0.4):
            for defense in DEFENSES:
                for seed in seeds:
                    if frac == 0 and attack != "sign_flip":
                        continue            # no attacker: the same run for every attack
                    row, _ = run(seed, attack=attack if frac else None, attackers=frac, defense=defense)
                    rows.append({**row, "attack": attack if frac else "none", "attackers": frac})
                    print(rows[-1], flush=True)
    df = table(rows, RESULTS / "attacks_robustness.csv")
    summary = df.groupby(["attack", "defense", "attackers"], dropna=False)["test_accuracy"].agg(["mean", "std"])
    print(summary.to_string())


def alie(seeds):
    """ALIE at 20% of 50 clients (the paper's n = 50: z = Phi^-1(0.68) = 0.47), and with z = 1."""
    rows = []
    for attack in (None, "alie", "alie:1"):
        for defense in (None, "median", "krum:10"):
            for seed in seeds:
                row, h = run(seed, num_clients=50, clients_per_round=50, attack=attack,
                             attackers=0.2 if attack else 0.0, defense=defense)
                row["alie_z"] = float(h["alie_z"].iloc[-1]) if "alie_z" in h else np.nan
                rows.append({**row, "attack": attack or "none"})
                print(rows[-1], flush=True)
    df = table(rows, RESULTS / "attacks_alie.csv")
    print(df.groupby(["attack", "defense"], dropna=False)["test_accuracy"].agg(["mean", "std"]).to_string())


def backdoor(seeds):
    rows = []
    for attack in ("backdoor:0", "backdoor:0,0.5,10"):
        for frac in (0.1,):
            for defense in (None, "norm_clip:0.2"):
                for seed in seeds:
                    row, _ = run(seed, attack=attack, attackers=frac, defense=defense)
                    rows.append(row)
                    print(rows[-1], flush=True)
    for defense in (None, "norm_clip:0.2"):
        for seed in seeds:
            row, h = run(seed, defense=defense)
            ev = fedlab.security.backdoor_evaluator(fedlab.MODELS["logreg"].factory((8, 8, 1), 10),
                                                    fedlab.Experiment(**BASE, seed=seed).load_data(), "backdoor:0",
                                                    np.ones(4, np.float32))
            rows.append({**row, "attack": "none", "attackers": 0.0,
                         "backdoor_accuracy": ev(h.params)["backdoor_accuracy"]})
    df = table(rows, RESULTS / "attacks_backdoor.csv")
    print(df.groupby(["attack", "attackers", "defense"], dropna=False)[["test_accuracy", "backdoor_accuracy"]]
          .agg(["mean", "std"]).to_string())


def fltrust(seeds):
    """FLTrust with a 100-row root set against the robustness grid's strongest cells."""
    rows = []
    for attack, frac in ((None, 0.0), ("sign_flip", 0.2), ("sign_flip", 0.4), ("alie", 0.2)):
        for seed in seeds:
            row, _ = run(seed, attack=attack, attackers=frac, defense="fltrust:100")
            rows.append({**row, "attack": attack or "none", "attackers": frac})
            print(rows[-1], flush=True)
    df = table(rows, RESULTS / "attacks_fltrust.csv")
    print(df.groupby(["attack", "attackers"])["test_accuracy"].agg(["mean", "std"]).to_string())


def compression(seeds):
    """MLP 64-200-200-10 (55,050 parameters), 60 rounds, 10 of 20 clients a round."""
    curves = []
    setups = [(None, False), ("topk:0.01", False), ("topk:0.01", True), ("topk:0.1", True), ("qsgd:4", False),
              ("sign", True)]
    for spec, ef in setups:
        for seed in seeds:
            _, h = run(seed, model="mlp", rounds=60, clients_per_round=10, eval_every=5, compress=spec,
                       error_feedback=ef, algorithm_options={"client_lr": 0.05})
            mb_up = pd.Series(h["bytes_up"]).cumsum() / 1e6       # over every round, then keep the evaluated
            h = pd.DataFrame(h).assign(mb_up=mb_up)
            h = h[h["test_accuracy"].notna()]
            curves.append(pd.DataFrame({"compress": spec or "none", "error_feedback": ef, "seed": seed,
                                        "round": h["round"], "mb_up": h["mb_up"], "test_accuracy": h["test_accuracy"]}))
            print(spec, ef, seed, float(h["test_accuracy"].iloc[-1]), flush=True)
    df = pd.concat(curves)
    df.to_csv(RESULTS / "compression_curves.csv", index=False)
    print(df.groupby(["compress", "error_feedback"]).apply(lambda g: g[g["round"] == g["round"].max()][
        ["mb_up", "test_accuracy"]].agg(["mean", "std"]).unstack()).to_string())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("which", nargs="?", default="all")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    fedlab.enable_compilation_cache()
    RESULTS.mkdir(exist_ok=True)
    seeds = list(range(args.seeds))
    for name in (["robustness", "alie", "backdoor", "fltrust", "compression"] if args.which == "all" else [args.which]):
        globals()[name](seeds)
