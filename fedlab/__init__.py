"""fedlab: a Jupyter-first research workbench for federated learning on JAX.

    import fedlab
    data = fedlab.data.load_federated("synthetic:1,1")
    history = fedlab.simulate("fedprox", "logreg", data, rounds=50, clients_per_round=10,
                              local_epochs=20, batch_size=10, mu=1.0, client_lr=0.01)
    # or the whole run as one value (what the CLI and the workbench use):
    experiment = fedlab.Experiment(dataset="synthetic:1,1", algorithm="fedprox",
                                   algorithm_options={"mu": 1.0}, rounds=50, local_epochs=20)
    history = experiment.run(out="runs/fedprox")      # resume: fedlab.resume("runs/fedprox", rounds=100)
"""
from fedlab.core.engine import use_cpu_cores

use_cpu_cores()     # one CPU device per core, before anything starts JAX (FEDLAB_CPU_DEVICES=1: JAX's one device)

from fedlab import algorithms, collaboration, data, models, report, transfer  # noqa: F401  (registers the built-ins)
from fedlab.core.cache import enable_compilation_cache
from fedlab.core.registry import (ALGORITHMS, DATASETS, MODELS, PARTITIONS, register_algorithm,
                                  register_dataset, register_model, register_partition)
from fedlab.core.experiment import Experiment, Privacy
from fedlab.core.rundir import resume
from fedlab.core.simulate import History, RoundEvent, RunState, StopTraining, simulate
from fedlab.core.types import Batch, ClientInfo, ClientOutput, Model, Strategy, host_aggregator
from fedlab.data.federated import FederatedDataset

__all__ = ["ALGORITHMS", "DATASETS", "MODELS", "PARTITIONS", "Batch", "ClientInfo", "ClientOutput",
           "Experiment", "FederatedDataset", "History", "Model", "Privacy", "RoundEvent", "RunState", "StopTraining",
           "Strategy",
           "enable_compilation_cache", "host_aggregator", "register_algorithm", "register_dataset", "register_model",
           "register_partition", "resume", "simulate"]
__version__ = "0.1.0"
