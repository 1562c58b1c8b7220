"""FedAvg (size weights) vs quality weighting (flagged clients left out) on a corrupted federation,
several seeds: python benchmarks/quality_weighting.py [DATASET] [CORRUPT] [FRACTION] [SEEDS]."""
import sys
import warnings

import pandas as pd

import fedlab
from fedlab.data.quality import detection_scores

dataset = sys.argv[1] if len(sys.argv) > 1 else "lending_club"
corrupt = sys.argv[2] if len(sys.argv) > 2 else "label_noise:0.4,scale:10"
fraction = float(sys.argv[3]) if len(sys.argv) > 3 else 0.3
seeds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
warnings.simplefilter("ignore")
rows = []
for seed in range(seeds):
    base = fedlab.Experiment(dataset=dataset, rounds=30, local_epochs=1, batch_size=32, seed=seed,
                             algorithm_options={"client_lr": 0.05})
    for name, exp in (("clean, size", base),
                      ("corrupted, size", base.replace(corrupt=corrupt, corrupt_clients=fraction)),
                      ("corrupted, quality", base.replace(corrupt=corrupt, corrupt_clients=fraction,
                                                          client_weighting="quality"))):
        built = exp.build()
        h = exp.run(built=built, progress=False)
        last = h.iloc[-1]
        row = {"seed": seed, "run": name, "test_accuracy": last["test_accuracy"],
               "test_balanced_accuracy": last["test_balanced_accuracy"], "client_acc_p10": last["client_acc_p10"]}
        if built.quality is not None:
            row.update(detection_scores(built.quality), flagged=int(built.quality["flagged"].sum()))
        rows.append(row)
        print(row, flush=True)
table = pd.DataFrame(rows)
print(f"{dataset} corrupt={corrupt} corrupt_clients={fraction}, {seeds} seeds, mean (std):")
print(table.groupby("run", sort=False).agg(["mean", "std"]).drop(columns="seed").round(3).to_string())
