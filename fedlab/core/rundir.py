"""A run directory: what ``Experiment.run(out=DIR)`` writes and ``resume(DIR, rounds=R)`` continues.

    DIR/experiment.json   the Experiment (``python -m fedlab run --config`` takes it)
    DIR/history.csv       one row per round done
    DIR/run.json          status ("completed", "stopped", "interrupted", "diverged", "failed"), message
    DIR/checkpoint.npz    the complete state after the last round kept (RunState)

The checkpoint is one ``.npz`` (NumPy's own format: no new dependency, readable anywhere) of the
state's leaves in ``jax.tree`` order, plus a JSON header (round, leaf paths, shapes, dtypes, a
fingerprint of the training data). Its structure is not pickled: ``load_checkpoint`` rebuilds
the state from the pytree a fresh run of the same Experiment starts with, and refuses a file
whose leaves do not match it. It is written to a temporary file and renamed over the old one, so
a crash leaves the previous checkpoint whole. Random streams need nothing stored: round r's keys
are derived from (seed, r). orbax-checkpoint was not chosen: asynchronous, sharded saving
brings tensorstore and much machinery that a single-process simulation does not need.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile

import jax
import numpy as np
import pandas as pd

from fedlab.core.simulate import History, RunState, initial_state, simulate

FORMAT = "fedlab-checkpoint/1"


def data_fingerprint(data) -> str:
    """A short hash of the training and test arrays (a changed CSV must not resume silently)."""
    if hasattr(data, "fingerprint"):        # a population generated on demand
        return data.fingerprint()
    h = hashlib.sha256()
    for a in (data.x_train, data.y_train, data.train_offsets, data.x_test, data.y_test):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _leaves(state: RunState):
    leaves = jax.tree_util.tree_flatten_with_path((state.server_state, state.client_states))[0]
    return [(jax.tree_util.keystr(path), np.asarray(leaf)) for path, leaf in leaves]


def save_checkpoint(path, state: RunState, **header) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, then rename)."""
    path = pathlib.Path(path)
    leaves = _leaves(state)
    meta = {"format": FORMAT, "round": int(state.round), **header,
            "leaves": [[name, list(a.shape), str(a.dtype)] for name, a in leaves]}
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **{f"leaf_{i}": a for i, (_, a) in enumerate(leaves)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_header(path) -> dict:
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
    if meta.get("format") != FORMAT:
        raise ValueError(f"resume: {path} is not a fedlab checkpoint ({meta.get('format')!r})")
    return meta


def load_checkpoint(path, template: RunState) -> RunState:
    """The RunState in ``path``, built on ``template`` (the state a fresh run starts with)."""
    meta = read_header(path)
    expected = [[name, list(a.shape), str(a.dtype)] for name, a in _leaves(template)]
    if meta["leaves"] != expected:
        raise ValueError(f"resume: the checkpoint in {path} does not match this experiment's strategy and "
                         "model (its state has other leaves, shapes or dtypes)")
    treedef = jax.tree.structure((template.server_state, template.client_states))
    with np.load(path) as f:
        leaves = [jax.numpy.asarray(f[f"leaf_{i}"]) for i in range(len(expected))]
    server_state, client_states = jax.tree.unflatten(treedef, leaves)
    return RunState(meta["round"], server_state, client_states)


class RunWriter:
    """Writes one run directory. Construction checks that ``out`` can be written (before any
    work); ``discard`` removes a directory it created if the run never started."""

    def __init__(self, out, experiment):
        self.path = pathlib.Path(out)
        self.experiment = experiment
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"out: {str(out)!r} is a file, not a directory")
        self.created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.path).close()
        except OSError as err:
            raise ValueError(f"out: cannot write to {str(out)!r} ({err.strerror or err})") from None
        self.header: dict = {}

    def discard(self) -> None:
        if self.created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def _write_text(self, name: str, text: str) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.path / name)

    def start(self, built, previous: pd.DataFrame | None = None) -> None:
        self.previous = previous
        self.header = {"data": data_fingerprint(built.data)}
        self._write_text("experiment.json", self.experiment.to_json() + "\n")

    def checkpoint(self, state: RunState, rows: list[dict]) -> None:
        """history.csv with the rows up to ``state.round``, then the checkpoint of that state."""
        table = pd.DataFrame([r for r in rows if r["round"] <= state.round])
        self.write_history(table)
        save_checkpoint(self.path / "checkpoint.npz", state, **self.header)

    def write_history(self, table: pd.DataFrame) -> None:
        if self.previous is not None:
            table = pd.concat([self.previous, table], ignore_index=True)
        fd, tmp = tempfile.mkstemp(prefix=".history-", suffix=".csv", dir=self.path)
        with os.fdopen(fd, "w") as f:
            table.to_csv(f, index=False)
        os.replace(tmp, self.path / "history.csv")

    def finish(self, status: str, message: str, rounds_done: int, **extra) -> None:
        self._write_text("run.json", json.dumps({"status": status, "message": message,
                                                 "rounds_done": rounds_done, **extra}, indent=2) + "\n")


def execute(experiment, built, writer: RunWriter | None, *, callbacks=(), progress=True,
            checkpoint_every=None, start: RunState | None = None,
            previous: pd.DataFrame | None = None) -> History:
    """Run ``built`` (from ``experiment.build``) through ``simulate``; write the run directory if
    ``writer``; continue from ``start`` after the rows ``previous`` when resuming."""
    rows: list[dict] = []
    if writer is not None:
        writer.start(built, previous)
    history = None
    try:
        history = simulate(built.strategy, built.model, built.data, **experiment.simulate_kwargs(built),
                           callbacks=[lambda event: rows.append(event.metrics), *callbacks],
                           progress=progress, start=start, checkpoint_every=checkpoint_every,
                           checkpoint=None if writer is None else (lambda state: writer.checkpoint(state, rows)))
    except KeyboardInterrupt:
        if writer is not None:
            done = rows[-1]["round"] if rows else (start.round if start else 0)
            writer.finish("interrupted", f"interrupted after round {done} of {experiment.rounds}", done)
        raise
    if previous is not None and len(previous):
        offset = float(previous["elapsed"].iloc[-1])
        new = pd.DataFrame(history).assign(elapsed=history["elapsed"] + offset)
        table = History(pd.concat([previous, new], ignore_index=True).reindex(
            columns=list(dict.fromkeys([*history.columns, *previous.columns]))))
        for name in History._metadata:
            setattr(table, name, getattr(history, name))
        history = table
    history.settings = experiment.to_dict()
    history.attackers = list(built.attackers) if experiment.attack is not None else None
    if writer is not None:
        writer.finish(history.status, history.message, history.state.round,
                      **({"attackers": history.attackers} if history.attackers is not None else {}))
    return history


def resume(out, rounds: int, *, callbacks=(), progress: bool = True, checkpoint_every: int | None = None) -> History:
    """Continue the run in directory ``out`` up to ``rounds`` rounds in total; append to its
    history.csv. The result equals the run done in one go (timing columns aside): same rows,
    same parameters, epsilon continuing. A run planned with a target epsilon for fewer rounds
    keeps its noise multiplier, so its epsilon column then shows the budget spent beyond the target."""
    from fedlab.core.experiment import Experiment

    path = pathlib.Path(out)
    if (path / "run.json").is_file() and json.loads((path / "run.json").read_text()).get("resumable") is False:
        raise ValueError(f"resume: {str(out)!r} holds a FedMD run; FedMD runs cannot be resumed (they write no "
                         "checkpoint): run them again with more rounds")
    for name in ("experiment.json", "checkpoint.npz", "history.csv"):
        if not (path / name).is_file():
            raise ValueError(f"resume: {str(path / name)!r} not found (is {str(out)!r} a fedlab run directory?)")
    experiment = Experiment.from_json((path / "experiment.json").read_text())
    header = read_header(path / "checkpoint.npz")
    done = header["round"]
    if not (isinstance(rounds, int) and rounds > done):
        raise ValueError(f"rounds must be more than the {done} rounds already done in {out}, got {rounds!r}")
    previous = pd.read_csv(path / "history.csv")
    previous = previous[previous["round"] <= done].reset_index(drop=True)
    privacy = experiment.privacy
    if privacy is not None and privacy.target_epsilon is not None and rounds != experiment.rounds:
        z = float(previous["noise_multiplier"].iloc[-1])      # keep the noise of the original plan
        privacy = dataclasses.replace(privacy, target_epsilon=None, noise_multiplier=z)
    experiment = experiment.replace(rounds=rounds, privacy=privacy)
    built = experiment.build()
    if data_fingerprint(built.data) != header.get("data"):
        raise ValueError(f"resume: the data of {out} changed since the checkpoint (fingerprint differs)")
    template = initial_state(built.strategy, built.model, built.data.num_clients, experiment.seed)
    state = load_checkpoint(path / "checkpoint.npz", template)
    return execute(experiment, built, RunWriter(path, experiment), callbacks=callbacks, progress=progress,
                   checkpoint_every=checkpoint_every, start=state, previous=previous)
