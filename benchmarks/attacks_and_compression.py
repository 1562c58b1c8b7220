"""Measured results of issue 13 (malicious clients, robust aggregation, compression) on digits.

    python benchmarks/attacks_and_compression.py [robustness|robustness_more|lending|alie|backdoor|fltrust|compression|compression_more|dp_compression|all] [--seeds 3]

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
DEFENSES = [None, "median", "trimmed_mean:0.2", "krum:8", "multikrum:8,12", "bulyan:4"]
ATTACKS = ("sign_flip", "scale:10", "alie", "label_flip")
FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4)
# lending_club: its natural 50 state clients, all of them every round; class-weighted logistic regression
LENDING = dict(dataset="lending_club", num_clients=None, clients_per_round=50, rounds=30, local_epochs=1,
               batch_size=32, algorithm_options={"client_lr": 0.05})
LENDING_DEFENSES = [None, "median", "trimmed_mean:0.2", "krum:20"]


def run(seed: int, **changes) -> dict:
    e = fedlab.Experiment(**{**BASE, **changes, "seed": seed})
    t0 = time.perf_counter()
    h = e.run(progress=False)
    last = h.iloc[-1]
    row = {**{k: changes.get(k) for k in ("attack", "attackers", "defense", "compress", "error_feedback")},
           "seed": seed, "status": h.status, "test_accuracy": float(last["test_accuracy"]),
           "attackers_n": len(h.attackers or []), "seconds": time.perf_counter() - t0}
    for extra in ("test_balanced_accuracy", "test_loss"):
        if extra in h:
            row[extra] = float(last[extra])
    if "backdoor_accuracy" in h:
        row["backdoor_accuracy"] = float(last["backdoor_accuracy"])
    if "defense_clipped" in h:
        row["clipped_share"] = float(h["defense_clipped"].mean())
    return row, h


def table(rows, path):
    df = pd.DataFrame(rows)
    df.to_csv(path, index=False)
    return df


def grid(seeds, base, defenses, path):
    """Every attack x attacker fraction x defense x seed (no attacker: one run per defense and seed)."""
    rows = []
    for frac in FRACTIONS:
        for attack in ATTACKS:
            if frac == 0 and attack != ATTACKS[0]:
                continue                    # no attacker: the same run for every attack
            for defense in defenses:
                for seed in seeds:
                    row, _ = run(seed, **base, attack=attack if frac else None, attackers=frac, defense=defense)
                    rows.append({**row, "attack": attack if frac else "none", "attackers": frac})
                    print(rows[-1], flush=True)
                table(rows, path)           # written as it goes: a long grid can be read while it runs
    df = table(rows, path)
    metric = "test_balanced_accuracy" if base.get("dataset") == "lending_club" else "test_accuracy"
    summary = df.groupby(["attack", "attackers", "defense"], dropna=False)[metric].agg(["mean", "std"])
    print(summary.to_string())


def robustness(seeds):
    grid(seeds, {}, DEFENSES, RESULTS / "attacks_robustness.csv")     # from scratch; robustness_more completes


def robustness_more(seeds):
    """The digits grid completed in place: the cells of attacks_robustness.csv that are missing, most
    wanted first (a third seed of the first grid, label flipping, Multi-Krum and Bulyan, then 10% and
    30% attackers); rows already there are kept, the file is rewritten after each cell."""
    path = RESULTS / "attacks_robustness.csv"
    rows = pd.read_csv(path).to_dict("records") if path.exists() else []
    done = {(r["attack"], float(r["attackers"]), r["defense"] if isinstance(r["defense"], str) else None, r["seed"])
            for r in rows}
    old_attacks, old_defenses = ("sign_flip", "scale:10", "alie"), DEFENSES[:4]
    new_defenses = DEFENSES[4:]
    cells = [("none", 0.0, d) for d in old_defenses]
    cells += [(a, f, d) for a in old_attacks for f in (0.2, 0.4) for d in old_defenses]
    cells += [("label_flip", f, d) for f in (0.2, 0.4) for d in old_defenses]
    cells += [("none", 0.0, d) for d in new_defenses]
    cells += [(a, f, d) for a in ATTACKS for f in (0.2, 0.4) for d in new_defenses]
    cells += [(a, f, d) for group in (old_defenses, new_defenses) for f in (0.1, 0.3) for a in ATTACKS
              for d in group]
    for attack, frac, defense in cells:
        for seed in seeds:
            if (attack, frac, defense, seed) in done:
                continue
            row, _ = run(seed, attack=None if attack == "none" else attack, attackers=frac, defense=defense)
            rows.append({**row, "attack": attack, "attackers": frac})
            done.add((attack, frac, defense, seed))
            print(rows[-1], flush=True)
        table(rows, path)


def lending(seeds):
    """The same grid on lending_club by state (50 natural clients; Krum's F = 20 = 40% of them)."""
    grid(seeds, LENDING, LENDING_DEFENSES, RESULTS / "attacks_lending_club.csv")


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


def compression(seeds, more: bool = False):
    """MLP 64-200-200-10 (55,050 parameters), 60 rounds, 10 of 20 clients a round. ``more``: keep the
    curves of compression_curves.csv and add the missing (setup, seed) runs, rand-k first."""
    path = RESULTS / "compression_curves.csv"
    curves = [pd.read_csv(path)] if more and path.exists() else []
    done = {(c, bool(e), s) for c, e, s in curves[0][["compress", "error_feedback", "seed"]].drop_duplicates()
            .itertuples(index=False)} if curves else set()
    setups = [("randk:0.1", False), ("randk:0.1", True), (None, False), ("topk:0.01", False), ("topk:0.01", True),
              ("topk:0.1", True), ("qsgd:4", False), ("sign", True)]
    for spec, ef in setups:
        for seed in seeds:
            if (spec or "none", ef, seed) in done:
                continue
            _, h = run(seed, model="mlp", rounds=60, clients_per_round=10, eval_every=5, compress=spec,
                       error_feedback=ef, algorithm_options={"client_lr": 0.05})
            mb_up = pd.Series(h["bytes_up"]).cumsum() / 1e6       # over every round, then keep the evaluated
            h = pd.DataFrame(h).assign(mb_up=mb_up)
            h = h[h["test_accuracy"].notna()]
            curves.append(pd.DataFrame({"compress": spec or "none", "error_feedback": ef, "seed": seed,
                                        "round": h["round"], "mb_up": h["mb_up"], "test_accuracy": h["test_accuracy"]}))
            print(spec, ef, seed, float(h["test_accuracy"].iloc[-1]), flush=True)
            pd.concat(curves).to_csv(path, index=False)
    df = pd.concat(curves)
    df.to_csv(path, index=False)
    print(df.groupby(["compress", "error_feedback"]).apply(lambda g: g[g["round"] == g["round"].max()][
        ["mb_up", "test_accuracy"]].agg(["mean", "std"]).unstack()).to_string())


def compression_more(seeds):
    compression(seeds, more=True)


def dp_compression(seeds):
    """Uplink compression under central DP at a stated epsilon: 100 digits clients (about 14 training rows
    each), 50 expected a round (Poisson), logistic regression, 30 rounds of 2 local epochs (batch 8),
    clip 0.5, (8, 1e-5)-DP for the whole run: the same noise multiplier (1.95) for every compression."""
    rows = []
    setups = [(None, False, False), (None, False, True), ("topk:0.1", True, True), ("topk:0.01", True, True),
              ("qsgd:4", False, True), ("sign", True, True), ("randk:0.1", True, True)]
    for spec, ef, private in setups:
        for seed in seeds:
            changes = dict(num_clients=100, clients_per_round=50, rounds=30, local_epochs=2, batch_size=8,
                           eval_every=10, compress=spec, error_feedback=ef,
                           privacy=fedlab.Privacy(clip=0.5, target_epsilon=8.0) if private else None)
            row, h = run(seed, **changes)
            row.update(compress=spec or "none", error_feedback=ef, dp=private, mb_up=float(h["bytes_up"].sum()) / 1e6,
                       epsilon=float(h["epsilon"].iloc[-1]) if "epsilon" in h else np.nan,
                       noise_multiplier=float(h["noise_multiplier"].iloc[-1]) if "noise_multiplier" in h else np.nan)
            rows.append(row)
            print(rows[-1], flush=True)
            table(rows, RESULTS / "dp_compression.csv")
    df = table(rows, RESULTS / "dp_compression.csv")
    print(df.groupby(["dp", "compress", "error_feedback"])[["mb_up", "test_accuracy", "epsilon"]]
          .agg(["mean", "std"]).to_string())


def readme_tables(seeds=None):
    """The README's tables from the CSVs: mean ± standard deviation over the seeds (n in brackets when
    a cell has fewer runs than the others)."""
    def cell(values):
        n = len(values)
        return "" if n == 0 else f"{values.mean():.3f} ± {values.std(ddof=1) if n > 1 else float('nan'):.3f}" + (
            f" (n={n})" if n < 3 else "")

    for name, metric, defenses in (("attacks_robustness", "test_accuracy", DEFENSES),
                                   ("attacks_lending_club", "test_balanced_accuracy", LENDING_DEFENSES)):
        path = RESULTS / f"{name}.csv"
        if not path.exists():
            continue
        df = pd.read_csv(path)
        df["defense"] = df["defense"].fillna("FedAvg")
        names = ["FedAvg" if d is None else d for d in defenses]
        print(f"\n{name} ({metric})\n| attack | attackers | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for attack in ("none",) + ATTACKS:
            for frac in FRACTIONS:
                cells = [cell(df[(df.attack == attack) & (df.attackers == frac) & (df.defense == d)][metric])
                         for d in names]
                if any(cells):
                    print(f"| {attack} | {frac:.0%} | " + " | ".join(cells) + " |")
    path = RESULTS / "dp_compression.csv"
    if path.exists():
        df = pd.read_csv(path)
        print("\n| uplink | DP | MB up | final accuracy | epsilon |\n|---|---|---|---|---|")
        for (dp_on, spec, ef), g in df.groupby(["dp", "compress", "error_feedback"], sort=False):
            print(f"| {spec}{' + EF' if ef else ''} | {'(8, 1e-5)' if dp_on else 'no'} | {g.mb_up.mean():.3f} | "
                  f"{cell(g.test_accuracy)} | {g.epsilon.mean():.3f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("which", nargs="?", default="all")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    fedlab.enable_compilation_cache()
    RESULTS.mkdir(exist_ok=True)
    seeds = list(range(args.seeds))
    for name in (["robustness", "lending", "alie", "backdoor", "fltrust", "compression", "dp_compression"] if args.which == "all" else [args.which]):
        globals()[name](seeds)
