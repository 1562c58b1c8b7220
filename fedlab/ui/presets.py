"""Presets for teaching: settings that show one idea each, in pairs or triples to run one after
the other and compare (the runs' names then say what differs). Each preset's text says what to
look at.

Measured here (CPU): "DP at scale" reaches 0.60 test accuracy, as the same run without DP does
(0.60), while "DP with 10 clients a round" stays near 0.40: DP-FedAvg needs many clients a round.
The personalization, attack and compression presets are the settings of the README's measured
tables (``benchmarks/personalization_curve.py``, ``benchmarks/attacks_and_compression.py``); the
scenario presets start from ``fedlab.data.scenarios.presets()``, one per scenario dataset.
"""
from __future__ import annotations

from fedlab.core.experiment import Experiment, Privacy
from fedlab.data.scenarios import presets as scenario_presets

NONE = "choose a preset..."

_non_iid = dict(dataset="synthetic_iid", num_clients=20, rounds=40, clients_per_round=10, local_steps=10,
                algorithm_options={"client_lr": 0.05})
_stragglers = dict(dataset="synthetic:1,1", rounds=40, clients_per_round=10, local_epochs=5, stragglers=0.5)
_dp = dict(dataset="synthetic_iid", num_clients=1000, rounds=30, local_steps=10)
# the personalization curve's setting at alpha 0.1 (README: islands 0.90, FedAvg 0.83, Ditto 0.94)
_personal = dict(dataset="digits", partition="dirichlet:0.1", num_clients=20, model="mlp", model_options={"hidden": [32]},
                 rounds=30, clients_per_round=10, local_steps=10, batch_size=10)
# the attack tables' setting: digits, 20 iid clients all taking part, logistic regression
_attack = dict(dataset="digits", num_clients=20, clients_per_round=20, rounds=30, local_epochs=1, batch_size=16,
               algorithm_options={"client_lr": 0.1})
_backdoor = dict(_attack, attack="backdoor:0,0.5,10", attackers=0.1)
# the compression table's setting: an MLP 64-200-200-10 (55,050 parameters), 10 of 20 clients a round
_compress = dict(dataset="digits", num_clients=20, model="mlp", rounds=60, clients_per_round=10, local_epochs=1,
                 batch_size=16, eval_every=5, algorithm_options={"client_lr": 0.05})

PRESETS: dict[str, tuple[Experiment, str]] = {
    "1a · IID clients": (
        Experiment(**_non_iid, partition="iid"),
        "Every client holds the same mix of labels. Run it, then 1b, and compare the accuracy and the "
        "spread of accuracy across clients."),
    "1b · non-IID clients (Dirichlet α = 0.1)": (
        Experiment(**_non_iid, partition="dirichlet:0.1"),
        "Each client sees mostly one or two labels (see the Data tab's heatmap): FedAvg learns slower and "
        "the clients' accuracies spread out."),
    "2a · FedAvg, half the clients straggle": (
        Experiment(**_stragglers, algorithm="fedavg"),
        "Half of each round's clients finish only part of their local work; FedAvg drops them. Compare "
        "with 2b and 2c."),
    "2b · FedProx μ = 1, half the clients straggle": (
        Experiment(**_stragglers, algorithm="fedprox", algorithm_options={"mu": 1.0}),
        "FedProx keeps the stragglers' partial work and pulls every client toward the global model."),
    "2c · SCAFFOLD, half the clients straggle": (
        Experiment(**_stragglers, algorithm="scaffold"),
        "SCAFFOLD corrects each client's drift with control variates."),
    "3a · DP at scale: 250 of 1000 clients a round, ε = 8": (
        Experiment(**_dp, clients_per_round=250, privacy=Privacy(target_epsilon=8.0)),
        "Differentially private FedAvg learns when many clients share each round: the noise on the "
        "average shrinks with the clients per round (see the Privacy tab). Compare with 3b."),
    "3b · DP, only 10 clients a round, ε = 8": (
        Experiment(**_dp, clients_per_round=10, privacy=Privacy(target_epsilon=8.0)),
        "The same budget with 10 clients a round: the noise swamps the updates and the model barely learns."),
    "4a · personalization: FedAvg, digits split by Dirichlet α = 0.1": (
        Experiment(**_personal, algorithm_options={"client_lr": 0.05}),
        "One global model for 20 clients that each see mostly one or two digits. Look at the Clients view: "
        "the spread of accuracy across clients and the worst-served client's curve. Then run 4b and 4c, and "
        "press Pooled for the centralized reference."),
    "4b · personalization: Ditto λ = 0.1 (a personal model per client)": (
        Experiment(**_personal, algorithm="ditto", algorithm_options={"client_lr": 0.05, "lam": 0.1}),
        "Each client keeps its own model pulled toward the global one. In the Clients view the scatter puts "
        "each client at (global model's accuracy, its own model's): points above the diagonal gain from "
        "personalizing (the README measures 0.94 against FedAvg's 0.83 mean per-client accuracy)."),
    "4c · personalization: islands (each client alone)": (
        Experiment(**_personal, algorithm="local", algorithm_options={"client_lr": 0.05}),
        "No federation: each client trains only on its own rows and sends nothing (MB sent stays 0). Under this "
        "skew an island does well on its own few digits; compare its per-client accuracy with 4a and 4b."),
    "5a · attack: 20% of clients flip their update's sign, FedAvg": (
        Experiment(**_attack, attack="sign_flip", attackers=0.2),
        "Four of the 20 clients send the negative of their update; FedAvg averages them in. Watch the test "
        "accuracy against 5b (the README measures 0.87 here against 0.92 without attackers)."),
    "5b · attack: 20% sign flip, coordinate-wise median": (
        Experiment(**_attack, attack="sign_flip", attackers=0.2, defense="median"),
        "The server takes the coordinate-wise median of the updates instead of the mean: a minority of "
        "flipped updates cannot pull it far (0.90 in the README)."),
    "6a · backdoor: 10% of clients plant a trigger (boosted 10x), FedAvg": (
        Experiment(**_backdoor),
        "Two attackers stamp a trigger on half of their rows, relabel them 0 and scale their update 10x. "
        "Look at the backdoor accuracy panel: the share of triggered test digits the model calls 0 "
        "(the README measures 0.99), while the test accuracy hardly shows it."),
    "6b · backdoor with norm clipping (norm_clip:0.2)": (
        Experiment(**_backdoor, defense="norm_clip:0.2"),
        "Every update is clipped to L2 norm 0.2 before averaging, so a boosted update weighs no more than an "
        "honest one: the backdoor accuracy stays near 0 (0.02 in the README) at no accuracy cost."),
    "7a · communication: full float32 updates (MLP, 55k parameters)": (
        Experiment(**_compress),
        "The reference: every client sends its whole update, 220 kB, each round. Look at the MB sent panel "
        "(log scale helps) and the accuracy; then 7b and 7c."),
    "7b · communication: top-k 1% with error feedback": (
        Experiment(**_compress, compress="topk:0.01", error_feedback=True),
        "Each client sends its largest 1% of values (and their indices) and keeps the rest as a residual for "
        "later rounds: about 67x fewer bytes for nearly the same accuracy (README: 0.917 against 0.938)."),
    "7c · communication: top-k 1% without error feedback": (
        Experiment(**_compress, compress="topk:0.01"),
        "The same bytes, but what is not sent is lost: accuracy falls behind 7b (README: 0.872). Error "
        "feedback is what makes aggressive sparsification work."),
}

_scenarios = scenario_presets()
_common = dict(rounds=40, local_epochs=1, batch_size=32, algorithm_options={"client_lr": 0.05})
SCENARIO_PRESETS: dict[str, tuple[Experiment, str]] = {
    "8a · scenario, merchant analytics: txhousing (46 city markets)": (
        _scenarios["merchant analytics"],
        "A platform and 46 city housing markets predict monthly home sales (a regression: RMSE and R² panels, "
        "and each client's target range in the Data tab). Press Islands and Pooled to see who gains from "
        "federating."),
    "8b · scenario, precision marketing: oj (5 stores)": (
        _scenarios["precision marketing"],
        "Five stores predict which orange-juice brand a customer buys. Few parties, different customers: "
        "compare the per-client accuracies with the Islands baseline."),
    "8c · scenario, precision marketing: caravan (10 customer types)": (
        Experiment(dataset="caravan", clients_per_round=10, **_common),
        "Who buys caravan insurance, by customer main type: a rare target (balanced by class weights). Look "
        "at the balanced accuracy in the runs table and the spread across customer types."),
    "8d · scenario, risk control: lending_club (50 states)": (
        _scenarios["risk control"],
        "Banks in 50 states score loans (bad/good). Small states have few loans: the Clients view plots "
        "accuracy against client size."),
    "8e · scenario, risk control: credit_data (6 housing statuses)": (
        Experiment(dataset="credit_data", clients_per_round=6, **_common),
        "Credit scoring (good/bad) by housing status. Set corrupt (Data tab), e.g. missing:0.3,scale:100, to "
        "see the data-quality heatmap flag the damaged parties."),
    "8f · scenario, supply chain: flights (16 airlines)": (
        _scenarios["supply chain"],
        "Airlines predict arrival delays over 15 minutes from a 5% sample of NYC 2013 flights. The partition "
        "heatmap shows how differently late each carrier is."),
    "8g · scenario, supply chain: deliveries (7 weekdays)": (
        Experiment(dataset="deliveries", clients_per_round=7, **_common),
        "Food-delivery minutes (regression) by weekday: the RMSE is in minutes. Compare with Islands: does a "
        "weekday learn better alone?"),
}
PRESETS.update(SCENARIO_PRESETS)
