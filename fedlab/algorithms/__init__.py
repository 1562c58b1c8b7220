"""Federated strategies, one small module each. Importing this package registers them."""
from fedlab.algorithms.ditto import ditto
from fedlab.algorithms.fedavg import fedavg
from fedlab.algorithms.fedmeta import fomaml, maml, metasgd, reptile
from fedlab.algorithms.fednova import fednova
from fedlab.algorithms.fedopt import fedadagrad, fedadam, fedavgm, fedopt, fedyogi
from fedlab.algorithms.fedper import fedper, fedrep
from fedlab.algorithms.fedprox import fedprox
from fedlab.algorithms.local import local
from fedlab.algorithms.perfedavg import perfedavg
from fedlab.algorithms.qffl import qffl
from fedlab.algorithms.scaffold import scaffold

__all__ = ["ditto", "fedadagrad", "fedadam", "fedavg", "fedavgm", "fednova", "fedopt", "fedper", "fedprox",
           "fedrep", "fedyogi", "fomaml", "local", "maml", "metasgd", "perfedavg", "qffl", "reptile", "scaffold"]
