"""Presets for teaching: settings that show one idea each, in pairs or triples to run one after
the other and compare (the runs' names then say what differs).

Measured here (CPU): "DP at scale" reaches 0.60 test accuracy, as the same run without DP does
(0.60), while "DP with 10 clients a round" stays near 0.40: DP-FedAvg needs many clients a round.
"""
from __future__ import annotations

from fedlab.core.experiment import Experiment, Privacy

NONE = "choose a preset..."

_non_iid = dict(dataset="synthetic_iid", num_clients=20, rounds=40, clients_per_round=10, local_steps=10,
                algorithm_options={"client_lr": 0.05})
_stragglers = dict(dataset="synthetic:1,1", rounds=40, clients_per_round=10, local_epochs=5, stragglers=0.5)
_dp = dict(dataset="synthetic_iid", num_clients=1000, rounds=30, local_steps=10)

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
}
