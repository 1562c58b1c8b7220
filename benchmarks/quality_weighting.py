"""FedAvg (size weights) vs quality weighting (flagged clients left out) on a corrupted federation,
several seeds; and, for the corrupted parties, their own island model vs the federated models:

    python benchmarks/quality_weighting.py [DATASET] [CORRUPT] [FRACTION] [SEEDS]

Islands: scikit-learn's LogisticRegression fitted on each corrupted party's own (corrupted)
training rows with its example weights, scored on its clean test rows, like the federated models."""
import sys
import warnings

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

import fedlab
from fedlab.data.quality import client_scores, detection_scores

dataset = sys.argv[1] if len(sys.argv) > 1 else "lending_club"
corrupt = sys.argv[2] if len(sys.argv) > 2 else "label_noise:0.4,scale:10"
fraction = float(sys.argv[3]) if len(sys.argv) > 3 else 0.3
seeds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
warnings.simplefilter("ignore")


def island_accuracy(data, k):
    x, y = data.client(k)
    xt, yt = data.client(k, "test")
    if len(yt) == 0:
        return np.nan
    if len(np.unique(y)) < 2:
        return float(np.mean(yt == y[0]))
    w = None if data.train_weights is None else data.train_weights[data.train_offsets[k]:data.train_offsets[k + 1]]
    return float(LogisticRegression(max_iter=1000).fit(x, y, sample_weight=w).score(xt, yt))


rows = []
for seed in range(seeds):
    base = fedlab.Experiment(dataset=dataset, rounds=30, local_epochs=1, batch_size=32, seed=seed,
                             algorithm_options={"client_lr": 0.05})
    bad = base.replace(corrupt=corrupt, corrupt_clients=fraction)
    corrupted = bad.load_tables().corrupted
    for name, exp in (("clean, size", base), ("corrupted, size", bad),
                      ("corrupted, quality", bad.replace(client_weighting="quality"))):
        built = exp.build()
        h = exp.run(built=built, progress=False)
        last = h.iloc[-1]
        per_client = client_scores(built.model, h.params, built.data)
        row = {"seed": seed, "run": name, "test_accuracy": last["test_accuracy"],
               "test_balanced_accuracy": last["test_balanced_accuracy"],
               "corrupted_parties_acc": np.nanmean(per_client[corrupted]),
               "clean_parties_acc": np.nanmean(per_client[~corrupted])}
        if built.quality is not None:
            row.update(detection_scores(built.quality), flagged=int(built.quality["flagged"].sum()))
        rows.append(row)
        print(row, flush=True)
        if name == "corrupted, size":
            islands = [island_accuracy(built.data, k) for k in np.flatnonzero(corrupted)]
            rows.append({"seed": seed, "run": "corrupted parties' islands", "corrupted_parties_acc": np.nanmean(islands)})
            print(rows[-1], flush=True)
table = pd.DataFrame(rows)
print(f"{dataset} corrupt={corrupt} corrupt_clients={fraction}, {seeds} seeds, mean (std):")
print(table.groupby("run", sort=False).agg(["mean", "std"]).drop(columns="seed").round(3).to_string())
