"""FedAvg (size weights) vs quality weighting (flagged clients left out) vs robust aggregation
(coordinate-wise median, trimmed mean) on the same corrupted federation (and the median on the clean one;
and, as a diagnosis, FedAvg and the median on the corrupted rows encoded without the corrupted clients'
statistics), several seeds; and, for
each corrupted party, its own island model vs the federated models:

    python benchmarks/quality_weighting.py [DATASET] [CORRUPT] [FRACTION] [SEEDS] [OUT_PREFIX]

Writes OUT_PREFIX.csv (one row per seed and run) and OUT_PREFIX_parties.csv (one row per seed and
corrupted party: its island accuracy and each federated model's accuracy on its clean test rows).
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
out = sys.argv[5] if len(sys.argv) > 5 else f"benchmarks/results/quality_weighting_{dataset}"
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


rows, parties = [], []
for seed in range(seeds):
    base = fedlab.Experiment(dataset=dataset, rounds=30, local_epochs=1, batch_size=32, seed=seed,
                             algorithm_options={"client_lr": 0.05})
    bad = base.replace(corrupt=corrupt, corrupt_clients=fraction)
    corrupted = bad.load_tables().corrupted
    runs = {"clean, FedAvg": base, "clean, median": base.replace(defense="median"), "corrupted, FedAvg": bad,
            "corrupted, quality weighting": bad.replace(client_weighting="quality"),
            "corrupted, median": bad.replace(defense="median"),
            "corrupted, trimmed mean 0.2": bad.replace(defense="trimmed_mean:0.2")}
    per_party = {}
    for name, exp in runs.items():
        built = exp.build()
        h = exp.run(built=built, progress=False)
        last = h.iloc[-1]
        per_client = client_scores(built.model, h.params, built.data)
        per_party[name] = per_client[corrupted]
        row = {"seed": seed, "run": name, "test_accuracy": last["test_accuracy"],
               "test_balanced_accuracy": last["test_balanced_accuracy"],
               "corrupted_parties_acc": np.nanmean(per_client[corrupted]),
               "clean_parties_acc": np.nanmean(per_client[~corrupted])}
        if built.quality is not None:
            row.update(detection_scores(built.quality), flagged=int(built.quality["flagged"].sum()))
        rows.append(row)
        print(row, flush=True)
        if name == "corrupted, FedAvg":
            data = built.data
            islands = np.array([island_accuracy(data, k) for k in np.flatnonzero(corrupted)])
            rows.append({"seed": seed, "run": "corrupted parties' islands", "corrupted_parties_acc": np.nanmean(islands)})
            print(rows[-1], flush=True)
    # diagnosis: the same corrupted rows, encoded with statistics that leave the corrupted clients out
    # (an oracle: what the robust rules would do if the shared preprocessing were not poisoned)
    oracle = bad.load_tables(exclude=corrupted).data
    for name, exp in (("corrupted, FedAvg, oracle preprocessing", base),
                      ("corrupted, median, oracle preprocessing", base.replace(defense="median"))):
        built = exp.build(data=oracle)
        h = exp.run(built=built, progress=False)
        last = h.iloc[-1]
        per_client = client_scores(built.model, h.params, built.data)
        rows.append({"seed": seed, "run": name, "test_accuracy": last["test_accuracy"],
                     "test_balanced_accuracy": last["test_balanced_accuracy"],
                     "corrupted_parties_acc": np.nanmean(per_client[corrupted]),
                     "clean_parties_acc": np.nanmean(per_client[~corrupted])})
        print(rows[-1], flush=True)
    for i, k in enumerate(np.flatnonzero(corrupted)):
        parties.append({"seed": seed, "party": data.names()[k], "train_rows": int(data.train_counts[k]),
                        "test_rows": int(data.test_counts[k]), "island": islands[i],
                        **{name: v[i] for name, v in per_party.items()}})
table = pd.DataFrame(rows)
table.to_csv(f"{out}.csv", index=False)
pd.DataFrame(parties).to_csv(f"{out}_parties.csv", index=False)
print(f"{dataset} corrupt={corrupt} corrupt_clients={fraction}, {seeds} seeds, mean (std):")
print(table.groupby("run", sort=False).agg(["mean", "std"]).drop(columns="seed").round(3).to_string())
p = pd.DataFrame(parties).dropna(subset=["island"])
fed = "corrupted, quality weighting"
print(f"corrupted parties with test rows: {len(p)} (over {seeds} seeds); federated ({fed}) beats the island for "
      f"{int((p[fed] > p['island']).sum())}, ties {int((p[fed] == p['island']).sum())}")
