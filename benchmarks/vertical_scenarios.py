"""The vertical halves of the risk-control and supply-chain scenarios, several seeds:

    python benchmarks/vertical_scenarios.py [SEEDS]

risk control: lending_club cut into a platform (application, label) and a bank (bureau file, rate,
grade), 90 % / 80 % of the loans each, PSI-aligned; test AUC of XGBoost on the platform's columns,
on the bank's, SecureBoost (plaintext protocol: encryption is lossless) and XGBoost on the join.
supply chain: a 5 % sample of nycflights13 flights (platform: schedule columns, label late > 15
min) and the weather at origin in the departure hour (weather party), PSI-aligned; test AUC of a
SplitNN on both parties vs the same network on the flight columns alone and on the join.
The seed changes the parties' coverage draws, the flight sample, the train/test split and the
initialisations. Writes benchmarks/results/vertical_scenarios.csv."""
import sys

import jax
import numpy as np
import optax
import pandas as pd
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from fedlab.data import scenarios
from fedlab.models import mlp
from fedlab.vertical import (SecureBoostConfig, align_frames, fit_secureboost, predict_secureboost, psi_align,
                             softmax_cross_entropy, splitnn, train_splitnn)

seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
rows = []


def split_auc(xs, y, train, test, key):
    """Test AUC of a SplitNN with one bottom network per array in xs (one array: a single party)."""
    bottoms = [mlp((x.shape[1],), 8, hidden=(32,)) for x in xs]
    net = splitnn(bottoms, mlp((8 * len(xs),), 2, hidden=(16,)), softmax_cross_entropy, optax.adam(1e-3),
                  cut_activation=jax.nn.relu)
    state, _ = train_splitnn(net, [x[train] for x in xs], y[train], epochs=10, batch_size=128, key=key)
    probs = jax.nn.softmax(net.predict(state, [np.asarray(x[test], np.float32) for x in xs]))[:, 1]
    return roc_auc_score(y[test], np.asarray(probs))


def split(n, seed):
    perm = np.asarray(jax.random.permutation(jax.random.key(1000 + seed), n))
    return perm[: int(0.7 * n)], perm[int(0.7 * n):]


for seed in range(seeds):
    key = jax.random.key(seed)
    # ---- risk control: SecureBoost
    parties = scenarios.lending_vertical(key, coverage={"platform": 0.9, "bank": 0.8})
    aligned = align_frames(parties, psi_align(parties, "customer_id", key=key))
    y = (aligned["platform"]["Class"] == "bad").to_numpy(int)
    train, test = split(len(y), seed)
    xp = scenarios.encode_party(aligned["platform"], [c for c in scenarios.LENDING_PARTIES["platform"] if c != "Class"],
                                train, log_columns=("funded_amnt", "annual_inc"))
    xb = scenarios.encode_party(aligned["bank"], scenarios.LENDING_PARTIES["bank"], train,
                                log_columns=("total_bal_il", "total_il_high_credit_limit", "delinq_amnt"))
    boost = dict(max_depth=3, learning_rate=0.1, max_bin=32, reg_lambda=1.0, min_child_weight=1.0)
    sb = fit_secureboost(xp[train], y[train], [xb[train]], SecureBoostConfig(num_trees=30, encrypt=False, **boost),
                         key=key)
    auc = {"federated": roc_auc_score(y[test], predict_secureboost(sb, xp[test], [xb[test]]))}
    for name, x in (("label party alone", xp), ("other party's columns alone", xb), ("pooled", np.hstack([xp, xb]))):
        m = xgb.XGBClassifier(n_estimators=30, tree_method="hist", n_jobs=1, random_state=seed, **boost)
        auc[name] = roc_auc_score(y[test], m.fit(x[train], y[train]).predict_proba(x[test])[:, 1])
    rows.append({"scenario": "risk control (SecureBoost)", "seed": seed, "shared_rows": len(y), **auc})
    print(rows[-1], flush=True)

    # ---- supply chain: SplitNN
    parties = scenarios.flights_weather(key, fraction=0.05)
    aligned = align_frames(parties, psi_align(parties, "flight_id", key=key))
    y = (aligned["platform"]["late"] == "late").to_numpy(int)
    train, test = split(len(y), seed)
    xf = scenarios.encode_party(aligned["platform"], ["carrier", "month", "weekday", "hour", "origin", "dest", "distance"],
                                train, categorical=("month",), log_columns=("distance",))
    xw = scenarios.encode_party(aligned["weather"], scenarios.WEATHER_COLUMNS, train)
    layouts = {"label party alone": [xf], "other party's columns alone": [xw], "federated": [xf, xw],
               "pooled": [np.hstack([xf, xw])]}
    auc = {name: split_auc(xs, y, train, test, key) for name, xs in layouts.items()}
    rows.append({"scenario": "supply chain (SplitNN)", "seed": seed, "shared_rows": len(y), **auc})
    print(rows[-1], flush=True)

table = pd.DataFrame(rows)
table.to_csv("benchmarks/results/vertical_scenarios.csv", index=False)
cols = ["label party alone", "other party's columns alone", "federated", "pooled"]
print(f"test AUC, {seeds} seeds, mean (std):")
print(table.groupby("scenario")[cols].agg(["mean", "std"]).round(3).to_string())
