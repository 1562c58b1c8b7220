"""Federated strategies, one small module each. Importing this package registers them."""
from fedlab.algorithms.fedavg import fedavg
from fedlab.algorithms.fedprox import fedprox

__all__ = ["fedavg", "fedprox"]
