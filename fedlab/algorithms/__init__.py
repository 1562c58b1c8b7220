"""Federated strategies, one small module each. Importing this package registers them."""
from fedlab.algorithms.fedavg import fedavg
from fedlab.algorithms.fednova import fednova
from fedlab.algorithms.fedopt import fedadagrad, fedadam, fedavgm, fedopt, fedyogi
from fedlab.algorithms.fedprox import fedprox
from fedlab.algorithms.local import local
from fedlab.algorithms.qffl import qffl
from fedlab.algorithms.scaffold import scaffold

__all__ = ["fedadagrad", "fedadam", "fedavg", "fedavgm", "fednova", "fedopt", "fedprox", "fedyogi",
           "local", "qffl", "scaffold"]
