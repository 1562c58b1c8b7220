"""Reproduce the FedProx paper's Synthetic experiments (Li et al. 2020, Figure 1 / Figure 7).

Synthetic(0,0), (0.5,0.5), (1,1) with the paper's 30 natural clients; 0%, 50%, 90% stragglers
(a straggler does a random 1..19 of the 20 local epochs); FedAvg (drops stragglers), FedProx
mu=0 (keeps their partial work) and FedProx mu=1; 10 clients per round, batch 10, 20 local
epochs, lr 0.01, multinomial logistic regression. Writes the training loss per round to a CSV
and a plotly figure (rows: stragglers, columns: datasets) to an HTML file, and prints each run's
mean loss over its last 10 rounds and its instability (mean absolute round-to-round change).

    python benchmarks/fedprox_synthetic.py --rounds 200 --out benchmarks/out
    python benchmarks/fedprox_synthetic.py --plot-only --out benchmarks/out   # figure from the CSV
    python benchmarks/fedprox_synthetic.py --seeds 0 1 2 3 4 --rounds 40     # mean and spread over data draws

With several seeds each panel is run on every seed's data draw (the seed sets the data, the
model's start, the sampling and the stragglers) and the table gives the mean and the standard
deviation over seeds of the late-round loss and of the instability, and how many seeds'
FedAvg runs diverged (a non-finite loss) or ended above their first round's loss.
"""
from __future__ import annotations

import argparse
import pathlib
import time

import pandas as pd

import fedlab
from fedlab import report

DATASETS = ("synthetic:0,0", "synthetic:0.5,0.5", "synthetic:1,1")
STRAGGLERS = (0.0, 0.5, 0.9)
METHODS = {"FedAvg": ("fedavg", {}), "FedProx (mu=0)": ("fedprox", {"mu": 0.0}),
           "FedProx (mu=1)": ("fedprox", {"mu": 1.0})}


def run_all(rounds: int, seed: int, datasets=DATASETS, stragglers=STRAGGLERS, csv=None, methods=None) -> pd.DataFrame:
    """One row per (dataset, stragglers, method, round) with train_loss and test_accuracy; each
    finished run is also appended to ``csv`` when given."""
    rows = []
    for spec in datasets:
        data = fedlab.data.load_federated(spec, seed=seed)
        for fraction in stragglers:
            for method, (name, knobs) in METHODS.items():
                if methods is not None and method not in methods:
                    continue
                t0 = time.perf_counter()
                h = fedlab.simulate(name, "logreg", data, rounds=rounds, clients_per_round=10, local_epochs=20,
                                    batch_size=10, client_lr=0.01, stragglers=fraction, seed=seed,
                                    progress=False, **knobs)
                print(f"{spec:18s} stragglers={fraction:.0%} {method:15s} final train loss "
                      f"{h['train_loss'].iloc[-1]:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
                rows.append(h[["round", "train_loss", "test_accuracy"]].assign(
                    dataset=data.name, stragglers=fraction, method=method, seed=seed, status=h.status))
                if csv is not None:
                    rows[-1].to_csv(csv, mode="a", header=not pathlib.Path(csv).exists(), index=False)
    return pd.concat(rows, ignore_index=True)


def figure(table: pd.DataFrame):
    """Training loss vs. rounds, one panel per (stragglers, dataset), as in the paper."""
    return report.runs_figure(table.assign(stragglers=(table.stragglers * 100).round().astype(int).astype(str)
                                           + "% stragglers"), row="stragglers", col="dataset",
                              title="FedAvg vs FedProx on Synthetic data (Li et al. 2020, Figure 1)")


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, stragglers, method): mean and std over seeds of the late-round loss and the
    instability (report.tail_summary of each seed's run), and the seeds whose run diverged."""
    per_seed = report.tail_summary(table, ["dataset", "stragglers", "method", "seed"]).reset_index()
    status = table.groupby(["dataset", "stragglers", "method", "seed"])["status"].last().reset_index()
    per_seed = per_seed.merge(status, on=["dataset", "stragglers", "method", "seed"])
    grouped = per_seed.groupby(["dataset", "stragglers", "method"])
    values = [c for c in per_seed.columns if c not in ("dataset", "stragglers", "method", "seed", "status")]
    out = grouped[values].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out["seeds"] = grouped.size()
    out["diverged"] = grouped["status"].apply(lambda s: int((s == "diverged").sum()))
    return out.round(3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="several data draws (overrides --seed)")
    ap.add_argument("--methods", nargs="+", default=None, choices=list(METHODS))
    ap.add_argument("--out", default="benchmarks/out")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--stragglers", nargs="+", type=float, default=list(STRAGGLERS))
    ap.add_argument("--plot-only", action="store_true", help="redraw from an existing CSV")
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "fedprox_synthetic.csv"
    if a.plot_only:
        table = pd.read_csv(csv)
    else:
        csv.unlink(missing_ok=True)
        table = pd.concat([run_all(a.rounds, seed, a.datasets, a.stragglers, csv=csv, methods=a.methods)
                           for seed in (a.seeds or [a.seed])], ignore_index=True)
    if "seed" in table and table["seed"].nunique() > 1:
        print(seed_summary(table).to_string())
        return
    figure(table).write_html(out / "fedprox_synthetic.html", include_plotlyjs="cdn")
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(report.tail_summary(table, ["dataset", "stragglers", "method"]).unstack("method"))
    print(f"wrote {out / 'fedprox_synthetic.csv'} and {out / 'fedprox_synthetic.html'}")


if __name__ == "__main__":
    main()
