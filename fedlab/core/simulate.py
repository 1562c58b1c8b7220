"""``simulate``: the training loop around the compiled round, its evaluation and its History."""
from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from fedlab.core import engine
from fedlab.core.checks import check_int, check_number
from fedlab.core.curves import ClientCurves
from fedlab.core.personal import NewClientEvaluator, PersonalEvaluator
from fedlab.core.registry import ALGORITHMS, MODELS
from fedlab.core.types import Model, Strategy, tree_nbytes


class StopTraining(Exception):
    """Raise from a callback to end the run after the current round; the History keeps the
    rounds done so far and has ``status == "stopped"``."""


class RunEndedWarning(RuntimeWarning):
    """Warned when a run ends diverged or failed (its History says the same in ``status``)."""


class RunState(NamedTuple):
    """Everything a run needs to continue after round ``round``: the server state (optimizer
    states, DP's clip norm), every client's persistent state (SCAFFOLD's control variates).
    Random streams need nothing more: round r's keys are ``fold_in(key(seed), r)``."""

    round: int
    server_state: Any
    client_states: Any


class RoundEvent(NamedTuple):
    """What callbacks receive after every round. metrics: the round's History row as a dict
    (evaluation columns are NaN on rounds that were not evaluated); elapsed: seconds since the
    run started; params: the server model after the round."""

    round: int
    rounds: int
    metrics: dict
    elapsed: float
    params: Any


#: How a run ended (``History.status``); every status but "completed" comes with a message.
STATUSES = ("completed", "stopped", "interrupted", "diverged", "failed")


class History(pd.DataFrame):
    """One row per round. Columns: round, clients (sampled), participants (weight > 0),
    local_loss, train_loss, test_loss, test_accuracy, test_balanced_accuracy,
    client_acc_{mean,std,min,p10,p50,p90,max} (test accuracy across clients) or, for regression,
    test_rmse, test_mae, test_r2 and client_rmse_{mean,...,max} (test RMSE across clients), bytes_up,
    bytes_down, seconds (the round's training step: sampling, local work, aggregation; no
    evaluation), elapsed, and whatever the strategy reports. Attributes: ``params`` (final
    server model), ``settings`` (the run's arguments), ``status`` (one of STATUSES),
    ``message`` (why it ended, for every status but "completed"), ``state`` (the RunState after
    the last round kept, to continue the run), ``per_client`` (one row per client with the final
    model: examples, losses, test accuracy), ``client_rounds`` (each evaluated round's per-client
    test accuracy, or RMSE, and personal accuracy: ``fedlab.core.curves``), ``stopped`` (status is "stopped"), ``attackers``
    (the malicious client ids of an Experiment with an attack, else None)."""

    _metadata = ["params", "settings", "status", "message", "state", "per_client", "attackers", "client_rounds"]
    attackers = None
    client_rounds = None

    @property
    def _constructor(self):
        return History

    @property
    def stopped(self) -> bool:
        return getattr(self, "status", None) == "stopped"

    def summary(self) -> str:
        """One line: how the run ended and its last metrics."""
        status = getattr(self, "status", "completed")
        text = status if status == "completed" else f"{status}: {self.message}"
        if len(self):
            last = self.iloc[-1]
            text += f" · {int(last['round'])} rounds"
            for col in ("test_accuracy", "test_rmse", "test_r2", "train_loss", "epsilon"):
                if col in self and pd.notna(last[col]):
                    text += f" · {col} {last[col]:.4g}"
        if getattr(self, "attackers", None):
            text += f" · attackers {list(self.attackers)}"
        return text


class Evaluator:
    """Loss and accuracy of a model on every client's train and test rows, in one compiled
    pass over fixed-size blocks (per-client sums by ``segment_sum``)."""

    def __init__(self, model: Model, data, block: int = 8192):
        K = data.num_clients
        x = np.concatenate([data.x_train, data.x_test])
        y = np.concatenate([data.y_train, data.y_test])
        seg = np.concatenate([np.repeat(np.arange(K), data.train_counts),
                              K + np.repeat(np.arange(K), data.test_counts)])
        block = min(block, max(len(y), 1))
        pad = -len(y) % block
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
        y = np.concatenate([y, np.zeros(pad, y.dtype)])
        seg = np.concatenate([seg, np.full(pad, 2 * K)])
        nb = len(y) // block
        # x, y and seg are this evaluator's own new arrays: device_put may share their memory (no copy,
        # nothing else can change them), where engine.to_device would copy every row once more
        self.blocks = jax.device_put((x.reshape((nb, block) + x.shape[1:]), y.reshape(nb, block),
                                      seg.reshape(nb, block).astype(np.int32)))
        self.num_clients, self.num_classes = K, model.num_classes
        self.train_n, self.test_n = data.train_counts, data.test_counts
        self.target_std = float((getattr(data, "target_scale", None) or (0.0, 1.0))[1])
        C = max(model.num_classes, 1)

        def block_sums(params, xb, yb, sb):
            loss = model.example_losses(params, xb, yb)
            if model.num_classes > 0:
                correct = (jnp.argmax(model.apply(params, xb), -1) == yb).astype(jnp.float32)
                columns = [loss, correct]
            else:       # regression: |error|, y and y^2 for MAE and R^2 (loss is 0.5 * error^2)
                correct = jnp.zeros_like(loss)
                columns = [loss, correct, jnp.abs(model.apply(params, xb) - yb), yb, yb * yb]
            by_client = jax.ops.segment_sum(jnp.stack(columns, 1), sb, 2 * K + 1)
            test_class = jnp.where((sb >= K) & (sb < 2 * K), yb.astype(jnp.int32), C)
            by_class = jax.ops.segment_sum(jnp.stack([correct, jnp.ones_like(correct)], 1), test_class, C + 1)
            return by_client, by_class

        def run(params, blocks):
            def body(acc, b):
                c, k = block_sums(params, *b)
                return (acc[0] + c, acc[1] + k), None
            init = (jnp.zeros((2 * K + 1, 2 if model.num_classes > 0 else 5)), jnp.zeros((C + 1, 2)))
            return jax.lax.scan(body, init, blocks)[0]

        self._run = engine.jit(run)
        self._last = ([], None)     # (params' arrays, sums) of the last pass: the run's end reuses it

    def _sums(self, params):
        leaves = jax.tree.leaves(params)    # jax arrays are immutable: the same arrays, the same sums
        if (len(leaves) != len(self._last[0]) or any(a is not b for a, b in zip(leaves, self._last[0]))
                or not all(isinstance(a, jax.Array) for a in leaves)):
            self._last = (leaves, jax.device_get(self._run(params, self.blocks)))
        return self._last[1]

    def per_client(self, params, names) -> pd.DataFrame:
        """One row per client: its name, train/test examples, mean losses and test accuracy."""
        by_client = self._sums(params)[0]
        K = self.num_clients
        train, test = by_client[:K], by_client[K:2 * K]
        with np.errstate(invalid="ignore", divide="ignore"):
            table = pd.DataFrame({"client": list(names), "train_examples": self.train_n,
                                  "test_examples": self.test_n, "train_loss": train[:, 0] / self.train_n,
                                  "test_loss": test[:, 0] / self.test_n})
            if self.num_classes > 0:
                table["test_accuracy"] = test[:, 1] / self.test_n
        return table

    def __call__(self, params) -> dict:
        by_client, by_class = self._sums(params)
        K = self.num_clients
        train, test = by_client[:K], by_client[K:2 * K]
        with np.errstate(invalid="ignore", divide="ignore"):     # kept for History.client_rounds
            self.client_values = np.where(self.test_n > 0, (test[:, 1] / self.test_n) if self.num_classes > 0
                                          else np.sqrt(2 * test[:, 0] / self.test_n) * self.target_std, np.nan)
        m = {"train_loss": train[:, 0].sum() / max(self.train_n.sum(), 1),
             "test_loss": test[:, 0].sum() / self.test_n.sum() if self.test_n.sum() else np.nan}
        if self.num_classes > 0 and self.test_n.sum():
            m["test_accuracy"] = test[:, 1].sum() / self.test_n.sum()
            seen = by_class[:-1, 1] > 0
            m["test_balanced_accuracy"] = np.mean(by_class[:-1, 0][seen] / by_class[:-1, 1][seen])
            has = self.test_n > 0
            acc = test[has, 1] / self.test_n[has]
            m.update(client_acc_mean=acc.mean(), client_acc_std=acc.std(), client_acc_min=acc.min(),
                     client_acc_p10=np.percentile(acc, 10), client_acc_p50=np.percentile(acc, 50),
                     client_acc_p90=np.percentile(acc, 90), client_acc_max=acc.max())
        if self.num_classes == 0 and self.test_n.sum():
            m.update(regression_metrics(test, self.test_n, self.target_std))
        return {k: float(v) for k, v in m.items()}


def regression_metrics(test_sums: np.ndarray, test_n: np.ndarray, target_std: float = 1.0) -> dict:
    """test_rmse, test_mae (in the target's own units: ``target_std`` undoes its standardisation),
    test_r2 (1 - SSE / total sum of squares about the test mean) and client_rmse_{mean,std,min,p10,
    p50,p90,max} from per-client test sums [K, (0.5 * error^2, 0, |error|, y, y^2)]."""
    n = test_n.sum()
    sse = 2 * test_sums[:, 0]
    sst = test_sums[:, 4].sum() - test_sums[:, 3].sum() ** 2 / n
    has = test_n > 0
    rmse = np.sqrt(sse[has] / test_n[has]) * target_std
    return dict(test_rmse=np.sqrt(sse.sum() / n) * target_std, test_mae=test_sums[:, 2].sum() / n * target_std,
                test_r2=1 - sse.sum() / sst if sst > 0 else np.nan,
                client_rmse_mean=rmse.mean(), client_rmse_std=rmse.std(), client_rmse_min=rmse.min(),
                client_rmse_p10=np.percentile(rmse, 10), client_rmse_p50=np.percentile(rmse, 50),
                client_rmse_p90=np.percentile(rmse, 90), client_rmse_max=rmse.max())


_COLUMNS = ["round", "clients", "participants", "local_loss", "train_loss", "test_loss", "test_accuracy",
            "test_balanced_accuracy", "client_acc_mean", "client_acc_std", "client_acc_min",
            "client_acc_p10", "client_acc_p50", "client_acc_p90", "client_acc_max",
            "personal_acc_mean", "personal_acc_p10", "personal_acc_p50", "personal_acc_p90",
            "new_client_accuracy", "test_rmse", "test_mae",
            "test_r2", "client_rmse_mean", "client_rmse_std", "client_rmse_min", "client_rmse_p10",
            "client_rmse_p50", "client_rmse_p90", "client_rmse_max"]


def resolve_strategy(strategy, knobs: dict) -> Strategy:
    if isinstance(strategy, Strategy):
        if knobs:
            raise ValueError(f"options {sorted(knobs)} apply only when the strategy is given by name")
        return strategy
    entry = ALGORITHMS[strategy]
    unknown = set(knobs) - set(entry.knobs())
    if unknown:
        raise ValueError(f"algorithm {strategy!r} has no option(s) {sorted(unknown)}; "
                         f"it takes {sorted(entry.knobs())}")
    return entry.factory(**knobs)


def resolve_model(model, data, options: dict | None) -> Model:
    if isinstance(model, Model):
        built = model
    else:
        built = MODELS[model].factory(data.input_shape, data.num_classes, **(options or {}))
    if built.num_classes != data.num_classes:
        raise ValueError(f"model has {built.num_classes} outputs but the dataset has {data.num_classes} classes")
    return built


def simulate(strategy: Strategy | str, model: Model | str, data, *, rounds: int,
             clients_per_round: int | None = None, local_steps: int | None = None,
             local_epochs: int | None = None, batch_size: int = 32, sampling: str = "fixed",
             stragglers: float = 0.0, seed: int = 0, eval_every: int = 1,
             chunk_size: int | str = "auto", callbacks: Sequence[Callable[[RoundEvent], Any]] = (),
             progress: bool = True, init_params=None, model_options: dict | None = None,
             start: RunState | None = None, checkpoint: Callable[[RunState], Any] | None = None,
             checkpoint_every: int | None = None, finetune_steps: int = 0, finetune_lr: float | None = None,
             new_clients=None, adapt_steps: int = 0, devices: int | str = "auto", eval_clients: int | None = None,
             extra_eval: Callable[[Any], dict] | None = None,
             **strategy_options) -> History:
    """Train ``strategy`` on the federated ``data`` up to round ``rounds``; return the History.

    strategy: a Strategy or a registered name (then ``strategy_options`` go to its factory,
    e.g. ``simulate("fedprox", "logreg", data, mu=1.0, client_lr=0.01, ...)``); model: a
    Model or a registered name. Each round samples ``clients_per_round`` clients (default:
    all) uniformly without replacement (``sampling="fixed"``) or each client independently
    with rate clients_per_round / num_clients (``"poisson"``); each does ``local_steps``
    mini-batch steps (batches drawn with replacement) or ``local_epochs`` passes over its
    own data (default 1 epoch). ``stragglers``: the fraction of sampled clients that do a
    random 1..full-1 part of the work (FedProx paper). Evaluation every ``eval_every`` rounds
    and always at the last. Callbacks get a RoundEvent after each round and may raise
    StopTraining. Same seed, same History (up to the wall-time columns).

    start: a RunState to continue from (rounds start.round + 1 .. rounds; a run continued
    from round k gives the rows and parameters the uninterrupted run has after round k).
    checkpoint(state) is called every ``checkpoint_every`` rounds and when the run ends for
    any reason (completed, stopped, Ctrl-C, diverged: with the last finite state, failed).
    extra_eval(params) -> dict: more History columns on evaluated rounds (e.g. backdoor_accuracy).

    Every evaluated row has personal_acc_{mean,p10,p50,p90}: each client's test accuracy with
    the model it uses (``fedlab.core.personal``), after ``finetune_steps`` steps of fine-tuning
    on its own rows (SGD at ``finetune_lr``, default the strategy's client_lr or 0.01, unless
    the strategy has its own ``adapt``). ``new_clients``: a FederatedDataset of held-out clients
    that never train; each evaluated row then has their ``new_client_accuracy`` after
    ``adapt_steps`` steps on their own training rows.

    A run never lies: a round with a non-finite loss or non-finite parameters ends the run with
    status "diverged" (its row is not kept, the model is the last finite one); an exception in
    a round (a host aggregator below its threshold, ...) ends it with status "failed" and
    the rows done; Ctrl-C ends it with status "interrupted" (after the checkpoint, the
    KeyboardInterrupt is raised again).

    devices: shard each round's sampled clients across a Mesh of this many devices (one SPMD
    program; the History equals the one-device run up to float summation order); "auto" (the
    default): every device that splits the round evenly (``engine.auto_devices``; on CPU fedlab
    makes one device per core when it is imported, ``engine.use_cpu_cores``, and a round of little
    work stays on one device). eval_clients:
    evaluate on a fixed random sample of this many clients (a generated population, from
    ``fedlab.data.population``, always evaluates on its own sample). A dataset on disk
    (``fedlab.data.disk.DiskDataset``, anything with ``stage``) has each round's sampled clients drawn
    on the host with the in-program sampler's keys and only their rows staged to the device; it
    evaluates on the eval_clients sample read from disk (every client when None). ``History.attrs`` says how
    many clients were evaluated ("evaluated_clients") and the memory of the per-client states
    ("client_state_bytes").
    """
    # ---- validate everything before any work ----
    K = data.num_clients
    check_int("rounds", rounds, 1)
    clients_per_round = K if clients_per_round is None else clients_per_round
    check_int("clients_per_round", clients_per_round, 1, K)
    if local_steps is not None and local_epochs is not None:
        raise ValueError("give local_steps or local_epochs, not both")
    if local_steps is None and local_epochs is None:
        local_epochs = 1
    if local_steps is not None:
        check_int("local_steps", local_steps, 1)
    else:
        check_int("local_epochs", local_epochs, 1)
    check_int("batch_size", batch_size, 1)
    check_int("eval_every", eval_every, 1)
    check_int("seed", seed, 0)
    if sampling not in ("fixed", "poisson"):
        raise ValueError(f"sampling must be 'fixed' or 'poisson', got {sampling!r}")
    check_number("stragglers", stragglers, 0, 1, high_open=True)
    if chunk_size != "auto":
        check_int("chunk_size", chunk_size, 1, clients_per_round)
    if checkpoint_every is not None:
        check_int("checkpoint_every", checkpoint_every, 1)
    check_int("finetune_steps", finetune_steps, 0)
    check_int("adapt_steps", adapt_steps, 0)
    mesh = None
    if devices != "auto":
        check_int("devices", devices, 1)
        if sampling == "fixed" and clients_per_round % devices:
            raise ValueError(f"devices must divide clients_per_round={clients_per_round} (each device runs an "
                             f"equal share of the round's clients), got {devices}")
        if chunk_size != "auto" and chunk_size > clients_per_round // devices:
            check_int("chunk_size", chunk_size, 1, max(clients_per_round // devices, 1))
        mesh = engine.client_mesh(devices) if devices > 1 else None
    if start is not None and not 0 <= start.round < rounds:
        raise ValueError(f"rounds must be more than the {start.round} rounds already done, got {rounds}")
    data.validate()
    generated = hasattr(data, "device_data")        # a population generated on demand (fedlab.data.population)
    staged = hasattr(data, "stage")                 # rows read from disk each round (fedlab.data.disk)
    if generated and local_epochs is not None:
        raise ValueError(f"local_epochs: a generated population trains by local_steps (its clients have up to "
                         f"{int(data.train_counts.max())} rows); give local_steps")
    strategy = resolve_strategy(strategy, strategy_options)     # checks its own options (client_lr > 0)
    finetune_lr = strategy_options.get("client_lr", 0.01) if finetune_lr is None else finetune_lr
    check_number("finetune_lr", finetune_lr, 0, low_open=True)
    actual = dict(clients_per_round=clients_per_round, num_clients=K, sampling=sampling)
    for name, wanted in (strategy.requires or {}).items():
        if actual.get(name, wanted) != wanted:
            raise ValueError(f"{strategy.name} was built for {name}={wanted!r}, but simulate got "
                             f"{name}={actual[name]!r}; build it with the run's value")
    model = resolve_model(model, data, model_options)

    k_run = jax.random.split(jax.random.key(seed))[1]
    # CPU devices share the host's memory: every device holds the client states (auto keeps the
    # extra copies under 1 GiB itself)
    replicas = devices if devices != "auto" and jax.default_backend() == "cpu" else 1
    state_bytes = check_client_state_memory(strategy, model, K, seed, init_params, replicas=replicas)
    if devices == "auto":       # every device that splits the round evenly; data and states are replicated
        in_memory = not (generated or staged)
        steps = local_steps or local_epochs * math.ceil(float(np.mean(data.train_counts)) / batch_size)
        devices = engine.auto_devices(clients_per_round, sampling == "fixed", state_bytes + (
            data.x_train.nbytes + data.y_train.nbytes if in_memory else 0),
            None if chunk_size == "auto" else chunk_size,
            lambda: engine.round_flops(model, param_shapes(model, seed, init_params), data.input_shape, batch_size,
                                       steps, clients_per_round))
        mesh = engine.client_mesh(devices) if devices > 1 else None
    _, server_state, client_states = initial_state(strategy, model, K, seed, init_params)
    params = server_state.params
    first_round = 1
    if start is not None:
        _check_same_structure("start.server_state", start.server_state, server_state)
        _check_same_structure("start.client_states", start.client_states, client_states)
        server_state, client_states, first_round = start.server_state, start.client_states, start.round + 1

    num_params = tree_nbytes(params) // 4
    per_device = max(clients_per_round // devices, 1)
    chunk = (engine.auto_chunk(per_device, num_params, jax.default_backend()) if chunk_size == "auto"
             else chunk_size)
    if sampling == "fixed":
        slots = math.ceil(per_device / chunk) * chunk * devices
    else:
        slots = engine.poisson_slots(clients_per_round, K, chunk * devices)
    plan = engine.Plan(K, clients_per_round, slots, chunk, batch_size, local_steps, local_epochs,
                       int(data.train_counts.max()), sampling, float(stragglers), devices)
    in_program = sampling == "fixed" and not staged     # else the clients are drawn on the host
    if staged:      # only the round's clients' rows reach the device (read, standardized, copied)
        def inputs(r):
            ids, valid, keys = engine.round_inputs(plan, k_run, r)
            return ids, valid, keys, data.stage(ids[valid])

        first_inputs = {first_round: inputs(first_round)}    # staged in the setup; its shapes size the messages
        dev = first_inputs[first_round][3]
    else:
        dev = data.device_data() if generated else engine.device_data(data)
        first_inputs = {}

        def inputs(r):      # Poisson sampling: every round on the same (replicated) data
            return (*engine.round_inputs(plan, k_run, r), dev)
    round_fn = (engine.make_sampling_round(plan, strategy, model) if in_program
                else engine.make_host_sampled_round(plan, strategy, model))
    if mesh is not None:
        round_fn = engine.shard_round(round_fn, mesh)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        dev, server_state, client_states = jax.device_put((dev, server_state, client_states), replicated)
    # client states are not donated: a diverged round must leave the last finite ones intact
    round_fn = engine.jit(round_fn)
    server_update = engine.jit(strategy.server_update)
    up_bytes, down_bytes = engine.update_nbytes(plan, strategy, model, dev, server_state, client_states)
    if eval_clients is not None:
        check_int("eval_clients", eval_clients, 1)
    if generated:
        eval_data = data.evaluation_data()
    elif staged:
        eval_data = data.evaluation_data(eval_clients, seed)
    else:
        eval_data = client_sample(data, eval_clients, seed)
    evaluate = Evaluator(model, eval_data)
    # personal models are per client: evaluated when every client of the data is (no sample)
    every_client = eval_data is data or (staged and eval_data.num_clients == K)
    personal = None if not every_client else PersonalEvaluator(
        strategy, model, eval_data, steps=strategy.adapt_steps + finetune_steps, lr=finetune_lr,
        batch_size=batch_size, seed=seed)
    curves = ClientCurves(eval_data.names(), "test_accuracy" if model.num_classes > 0 else "test_rmse")
    new = None if new_clients is None else NewClientEvaluator(strategy, model, new_clients, steps=adapt_steps,
                                                               lr=finetune_lr, batch_size=batch_size, seed=seed)
    settings = dict(algorithm=strategy.name, model=model.name, dataset=data.name, rounds=rounds,
                    clients=K, clients_per_round=clients_per_round, local_steps=local_steps,
                    local_epochs=local_epochs, batch_size=batch_size, sampling=sampling,
                    stragglers=stragglers, seed=seed, chunk_size=chunk, devices=devices, **strategy_options)
    if finetune_steps or new_clients is not None:
        settings.update(finetune_steps=finetune_steps, finetune_lr=finetune_lr,
                        new_clients=None if new_clients is None else new_clients.num_clients, adapt_steps=adapt_steps)

    def one_round(r, server_state, client_states):
        """Run round r; returns (RoundOutput, sampled clients, seconds)."""
        t0 = time.perf_counter()
        if in_program:      # fixed sampling: clients drawn inside the compiled round
            num_sampled = clients_per_round
            out = round_fn(server_state, client_states, dev, k_run, np.int32(r))
        else:
            ids, valid, keys, round_data = first_inputs.pop(r, None) or inputs(r)
            num_sampled = int(valid.sum())
            out = round_fn(server_state, client_states, round_data, ids, valid, keys)
        if out.pending is not None:
            out = engine.finish_on_host(strategy, server_update, out)
        out = out._replace(**dict(zip(("server_state", "client_states"),
                                      jax.block_until_ready((out.server_state, out.client_states)))))
        return out, num_sampled, time.perf_counter() - t0

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=rounds, initial=first_round - 1, desc=strategy.name, unit="round", leave=False)
    state = RunState(first_round - 1, server_state, client_states)
    rows, status, message, began = [], "completed", "", time.perf_counter()
    try:
        for r in range(first_round, rounds + 1):
            curve = None
            try:
                out, num_sampled, seconds = one_round(r, state.server_state, state.client_states)
                metrics = {k: float(v) for k, v in jax.device_get(out.metrics).items()}
                participants = metrics.pop("participants")
                finite_params = metrics.pop("params_finite", 1.0) == 1.0
                row = {"round": r, "clients": num_sampled, "participants": int(participants),
                       "local_loss": metrics.pop("local_loss")}
                bad = _non_finite(row["local_loss"], finite_params)
                if bad is None and (r % eval_every == 0 or r == rounds):
                    row.update(evaluate(out.server_state.params))
                    if extra_eval is not None:
                        row.update(extra_eval(out.server_state.params))
                    bad = _non_finite(row["train_loss"], True) if strategy.global_model else None
                    if not strategy.global_model:       # no global model (islands): nothing to report
                        row.update({c: math.nan for c in _COLUMNS[4:15] if c in row})
                    if personal is not None:
                        row.update(personal(out.server_state, out.client_states, r, row))
                    curve = (evaluate.client_values if strategy.global_model else evaluate.client_values * np.nan,
                             None if personal is None else personal.client_values)
                    if new is not None:
                        row.update(new(out.server_state, r))
                    if row.pop("personal_finite", 1.0) != 1.0:
                        bad = "non-finite personal model"
            except Exception as err:    # noqa: BLE001 - reported as the run's status, rows kept
                status, message = "failed", f"round {r}: {type(err).__name__}: {err}"
                break
            if bad is not None:
                status, message = "diverged", f"diverged at round {r} ({bad})"
                break
            row.update(metrics)
            if strategy.report is not None:
                row.update(strategy.report(r))
            row.update(bytes_up=int(participants) * up_bytes, bytes_down=num_sampled * down_bytes,
                       seconds=seconds, elapsed=time.perf_counter() - began)
            rows.append(row)
            if curve is not None:
                curves.add(r, *curve)
            state = RunState(r, out.server_state, out.client_states)
            if bar is not None:
                if "test_accuracy" in row:
                    bar.set_postfix(acc=f"{row['test_accuracy']:.3f}", refresh=False)
                elif "test_rmse" in row:
                    bar.set_postfix(rmse=f"{row['test_rmse']:.4g}", refresh=False)
                bar.update(1)
            try:
                event = RoundEvent(r, rounds, row, row["elapsed"], state.server_state.params)
                for callback in callbacks:
                    callback(event)
            except StopTraining:
                status, message = "stopped", f"stopped after round {r} of {rounds}"
                break
            if checkpoint is not None and checkpoint_every and r % checkpoint_every == 0 and r < rounds:
                checkpoint(state)
    except KeyboardInterrupt:
        status, message = "interrupted", f"interrupted after round {state.round} of {rounds}"
        if checkpoint is not None:
            checkpoint(state)
        raise
    finally:
        if bar is not None:
            bar.close()
    if checkpoint is not None:
        checkpoint(state)
    table = pd.DataFrame(rows)
    first = [c for c in _COLUMNS if c in table or (c == "test_accuracy" and model.num_classes > 0)
             or (c == "test_rmse" and model.num_classes == 0)]
    last = ["bytes_up", "bytes_down", "seconds", "elapsed"]
    history = History(table.reindex(columns=first + [c for c in table if c not in first + last] + last))
    history.params, history.settings, history.state = state.server_state.params, settings, state
    history.status, history.message = status, message
    history.per_client = evaluate.per_client(state.server_state.params, eval_data.names())
    history.client_rounds = curves.frame()
    history.attrs.update(evaluated_clients=eval_data.num_clients, client_state_bytes=state_bytes)
    if status in ("diverged", "failed"):
        warnings.warn(f"{strategy.name}: {message}", RunEndedWarning, stacklevel=2)
    return history


def initial_state(strategy: Strategy, model: Model, num_clients: int, seed: int, init_params=None) -> RunState:
    """The state before round 1: the model from the seed (or ``init_params``), the server's and
    every client's initial state."""
    k_init = jax.random.split(jax.random.key(seed))[0]
    params = model.init(k_init) if init_params is None else init_params
    one_state = strategy.client_state_init(params)
    client_states = jax.tree.map(lambda s: jnp.broadcast_to(s, (num_clients,) + jnp.shape(s)).copy(), one_state)
    return RunState(0, strategy.server_init(params), client_states)


def param_shapes(model: Model, seed: int, init_params=None):
    """The model's parameters as shapes (``init_params`` when given, else what the seed would
    initialize), without computing them."""
    return jax.eval_shape(lambda: model.init(jax.random.key(seed))) if init_params is None else init_params


def check_client_state_memory(strategy: Strategy, model: Model, num_clients: int, seed: int = 0,
                              init_params=None, limit: int | None = None, replicas: int = 1) -> int:
    """Bytes of every client's persistent state (SCAFFOLD's control variates: one model per client);
    ValueError with the needed size when twice that (the state and the round's new copy), on each
    of ``replicas`` devices that share the memory, exceeds ``limit`` (default: half of this
    machine's memory, or of the accelerator's)."""
    one = tree_nbytes(jax.eval_shape(strategy.client_state_init, param_shapes(model, seed, init_params)))
    needed = num_clients * one
    if limit is None:
        limit = memory_limit()
    if needed and 2 * replicas * needed > limit:
        copies = "twice that with the round's copy" + (f", on each of {replicas} CPU devices" if replicas > 1 else "")
        fix = "fewer devices, " if replicas > 1 else ""
        raise ValueError(f"{strategy.name} keeps a state per client: {num_clients} clients x {one / 2**10:.1f} KiB = "
                         f"{needed / 2**30:.2f} GiB, {copies}, but the limit is {limit / 2**30:.2f} GiB (half of "
                         f"the memory); use {fix}fewer clients, a smaller model or a strategy without client state")
    return needed


def memory_limit() -> int:
    """Half of the default device's memory (an accelerator's bytes_limit, else the host's RAM)."""
    import os

    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def client_sample(data, eval_clients: int | None, seed: int):
    """``data`` itself, or a FederatedDataset of a fixed random sample of ``eval_clients`` of its
    clients (for evaluation at scale)."""
    if eval_clients is None or eval_clients >= data.num_clients:
        return data
    ids = sample_client_ids(data.num_clients, eval_clients, seed)
    return type(data).from_clients(f"{data.name}, evaluated on {len(ids)} sampled clients",
                                   [data.client(k, "train") for k in ids], [data.client(k, "test") for k in ids],
                                   data.num_classes)


def sample_client_ids(num_clients: int, eval_clients: int | None, seed: int) -> np.ndarray:
    """[min(eval_clients, num_clients)] increasing client ids, a random sample drawn from ``seed``
    (every client when eval_clients is None)."""
    if eval_clients is None or eval_clients >= num_clients:
        return np.arange(num_clients)
    u = np.asarray(jax.random.uniform(jax.random.fold_in(jax.random.key(seed), 7), (num_clients,)))
    return np.sort(np.argsort(u, kind="stable")[:eval_clients])


def _non_finite(loss: float, params_finite: bool) -> str | None:
    """Why a round counts as diverged, or None."""
    if not params_finite:
        return "non-finite model parameters"
    if not math.isfinite(loss):
        return "non-finite training loss"
    return None


def _check_same_structure(name: str, given, expected) -> None:
    """A state to continue from must have the run's pytree structure, shapes and dtypes."""
    def sig(tree):
        leaves, treedef = jax.tree.flatten(tree)
        return treedef, [(jnp.shape(x), jnp.result_type(x)) for x in leaves]

    if sig(given) != sig(expected):
        raise ValueError(f"{name} does not match this run's strategy and model (structure, shapes or dtypes differ)")
