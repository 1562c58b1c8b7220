"""Privacy for federated learning: DP wrappers with a real accountant, secure aggregation,
Paillier aggregation and a membership-inference attack.

    from fedlab.privacy import dp, secure, encrypted, calibrate, membership_inference
    strategy = dp(fedavg(), clip=1.0, clients_per_round=10, num_clients=100, noise_multiplier=1.1)

The other names load on first use (dp_accounting, scikit-learn take seconds to import).
"""
from __future__ import annotations

import importlib

from fedlab.privacy.dp import dp, local_dp  # the functions, not the module of the same name

_EXPORTS = {
    "epsilon": "accounting", "epsilon_tracker": "accounting", "calibrate": "accounting",
    "secure": "secagg", "secure_aggregator": "secagg", "secure_sum": "secagg", "TooManyDropouts": "secagg",
    "encrypted": "paillier", "paillier_aggregator": "paillier", "encrypted_sum": "paillier",
    "membership_inference": "attacks",
}

__all__ = ["dp", "local_dp", *sorted(_EXPORTS)]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"fedlab.privacy.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'fedlab.privacy' has no attribute {name!r}")
