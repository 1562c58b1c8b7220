"""Federated datasets: loaders, the FedProx synthetic generator and partitioners.

Importing this package registers every dataset and partition by name.
"""
from fedlab.data.federated import FederatedDataset
from fedlab.data.partition import CentralDataset, Partition, federate, make_partition
from fedlab.data.synthetic import generate_synthetic
from fedlab.data.loaders import from_csv, from_dataframe, load_federated
from fedlab.data import scenarios  # noqa: F401  (registers the scenario datasets)

__all__ = ["FederatedDataset", "CentralDataset", "Partition", "federate", "make_partition",
           "generate_synthetic", "from_dataframe", "from_csv", "load_federated"]
