"""Notebook 12 (precision marketing, oj stores) at full size over several seeds:

    python benchmarks/precision_marketing.py [SEEDS]

Per seed: islands vs federated vs federated under DP (eps 8) vs pooled (test-weighted mean accuracy
and the worst store); then one store exporting LoyalCH in percent (format:LoyalCH*100), with plain
FedAvg, quality weighting (threshold 3.5 and 15), median aggregation; and the broken store's island
vs the quality-weighted federated model. Writes benchmarks/results/precision_marketing_oj.csv."""
import sys
import warnings

import numpy as np
import pandas as pd

import fedlab
from fedlab.collaboration import compare_parties, summarize
from fedlab.data.quality import detection_scores

seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
warnings.simplefilter("ignore")
rows = []
for seed in range(seeds):
    exp = fedlab.Experiment(dataset="oj", rounds=40, clients_per_round=5, local_epochs=1, batch_size=16, seed=seed,
                            algorithm_options={"client_lr": 0.05})
    table = compare_parties(exp, extra={"federated, DP eps=8": exp.replace(privacy=fedlab.Privacy(
        clip=0.5, target_epsilon=8.0))})
    s = summarize(table)
    for model in s.index:
        rows.append({"seed": seed, "run": f"clean: {model}", "accuracy": s.loc[model, "mean"],
                     "worst store": s.loc[model, "worst party"]})
    bad = exp.replace(corrupt="format:LoyalCH*100", corrupt_clients=0.2)
    runs = {"corrupted: FedAvg": bad, "corrupted: quality weighting (z > 3.5)": bad.replace(client_weighting="quality"),
            "corrupted: quality weighting (z > 15)": bad.replace(client_weighting="quality", quality_threshold=15.0),
            "corrupted: median": bad.replace(defense="median")}
    for name, e in runs.items():
        built = e.build()
        last = e.run(built=built, progress=False).iloc[-1]
        row = {"seed": seed, "run": name, "accuracy": last["test_accuracy"], "worst store": last["client_acc_min"],
               "balanced accuracy": last["test_balanced_accuracy"]}
        if built.quality is not None:
            row.update(detection_scores(built.quality))
        rows.append(row)
    per = compare_parties(runs["corrupted: quality weighting (z > 15)"], pooled=False)
    broken = per[per["corrupted"]]
    rows.append({"seed": seed, "run": "broken store: island", "accuracy": float(np.mean(broken["island"]))})
    rows.append({"seed": seed, "run": "broken store: federated (quality weighting z > 15)",
                 "accuracy": float(np.mean(broken["federated"]))})
    print(pd.DataFrame([r for r in rows if r["seed"] == seed]).round(3).to_string(), flush=True)
out = pd.DataFrame(rows)
out.to_csv("benchmarks/results/precision_marketing_oj.csv", index=False)
print(f"oj, {seeds} seeds, mean (std):")
print(out.groupby("run", sort=False).agg(["mean", "std"]).drop(columns="seed").round(3).to_string())
