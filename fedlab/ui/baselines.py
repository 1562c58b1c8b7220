"""The two one-click baselines of the workbench, for the controls' settings (issue 12):

- islands: the same run with ``algorithm="local"``: every client trains only on its own rows with
  the same local work per round and sends nothing (no privacy, attack, defense or compression:
  nothing is sent to attack, defend or compress);
- pooled: ``fedlab.transfer.pooled``'s centralized reference (every training row in one place,
  which no federation may do), as a History so that it shows in the chart and the runs table:
  the same recipe (the model trained by SGD on the pooled rows, rounds x local work steps with
  batches of batch_size x clients_per_round rows), evaluated on every client's own test rows at
  each evaluated round. It sends nothing (bytes NaN); ``history.attrs["baseline"] == "pooled"``.
"""
from __future__ import annotations

import numpy as np

from fedlab.core.curves import ClientCurves
from fedlab.core.experiment import Experiment

ISLANDS = "islands (local)"
POOLED = "pooled (centralized)"
_NOTHING_SENT = dict(privacy=None, attack=None, attackers=0.0, defense=None, compress=None, compress_down=None,
                     error_feedback=False)


def islands(experiment: Experiment) -> Experiment:
    """``experiment`` as islands: ``local`` with the same client_lr and local work."""
    options = {k: v for k, v in experiment.algorithm_options.items() if k == "client_lr"}
    return experiment.replace(algorithm="local", algorithm_options=options, client_weighting="size",
                              **_NOTHING_SENT)


def pooled_experiment(experiment: Experiment) -> Experiment:
    """The settings ``fedlab.transfer.pooled`` trains with: FedAvg's client SGD (same client_lr)
    on one client holding every row; nothing federated around it."""
    options = {k: v for k, v in experiment.algorithm_options.items() if k == "client_lr"}
    return experiment.replace(algorithm="fedavg", algorithm_options=options, holdout_clients=0.0,
                              client_weighting="size", finetune_steps=0, **_NOTHING_SENT)


def pooled_run(experiment: Experiment, data, callbacks=()):
    """The pooled baseline of ``experiment`` on ``data`` (its FederatedDataset) as a History:
    one row per round, the per-client evaluation columns (test_accuracy, client_acc_*, or for
    regression test_rmse, client_rmse_*) of the pooled model on every client's test rows at each
    evaluated round, ``per_client`` and ``client_rounds`` per client. Its last row's
    test_accuracy is ``fedlab.transfer.pooled(experiment, data)["test_accuracy"]``."""
    from fedlab.core.simulate import Evaluator, simulate
    from fedlab.transfer import pool

    base = pooled_experiment(experiment)
    built = base.replace(corrupt="").build(data)
    evaluate = Evaluator(built.model, built.data)
    curves = ClientCurves(built.data.names(), "test_accuracy" if built.model.num_classes > 0 else "test_rmse")
    pending = {}

    def per_client_metrics(params):            # replaces the one pooled client's evaluation columns
        metrics = evaluate(params)
        pending["values"] = evaluate.client_values
        return metrics

    def keep_curve(event):                     # (first of the callbacks: the others see the row as kept)
        event.metrics.update(bytes_up=np.nan, bytes_down=np.nan)
        if "values" in pending:
            curves.add(event.round, pending.pop("values"))

    steps = ({"local_steps": experiment.local_steps} if experiment.local_steps
             else {"local_epochs": experiment.local_epochs or 1})
    history = simulate(built.strategy, built.model, pool(built.data), rounds=experiment.rounds, clients_per_round=1,
                       batch_size=experiment.batch_size * built.clients_per_round, seed=experiment.seed,
                       progress=False, eval_every=experiment.eval_every, extra_eval=per_client_metrics,
                       callbacks=[keep_curve, *callbacks], **steps)
    history["bytes_up"] = history["bytes_down"] = np.nan          # nothing federated, nothing sent
    history["clients"] = history["participants"] = built.data.num_clients
    history.per_client = evaluate.per_client(history.params, built.data.names())
    history.client_rounds = curves.frame()
    history.settings = experiment.to_dict()
    history.attrs["baseline"] = "pooled"
    history.attrs["evaluated_clients"] = built.data.num_clients
    return history
