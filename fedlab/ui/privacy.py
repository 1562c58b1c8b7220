"""Privacy in the workbench: the noise multiplier calibrated once per setting, off the main thread,
and what the numbers mean in plain words.

Calibrating a target epsilon (a root search over the accountant) takes seconds to tens of seconds
on a busy machine. ``Calibrations`` computes it once per (epsilon, delta, rounds, clients per
round, clients, sampling, accountant) and keeps it; a second caller of the same setting waits for
the first instead of computing again. ``for_build`` turns an Experiment with a target epsilon into
the same Experiment with that noise multiplier, which ``Experiment.build`` then takes as given: the
Run reuses the calibration the Privacy tab made (``experiment.run(built=...)`` keeps the
original Experiment, target epsilon and all, as the run's settings).
"""
from __future__ import annotations

import dataclasses
import html
import math
import threading

import jax
import numpy as np

from fedlab.ui.runner import first_line


def clients_per_round(experiment, num_clients: int) -> int:
    """The clients a round samples, as ``Experiment.build`` resolves it."""
    return min(10, num_clients) if experiment.clients_per_round is None else experiment.clients_per_round


def calibration_key(experiment, num_clients: int) -> tuple | None:
    """What the calibrated noise multiplier depends on (None: nothing to calibrate)."""
    p = experiment.privacy
    if p is None or p.target_epsilon is None:
        return None
    return (p.target_epsilon, p.delta, experiment.rounds, clients_per_round(experiment, num_clients), num_clients,
            experiment.resolved_sampling, p.accountant)


class Calibrations:
    """Noise multipliers by calibration key, each computed once (thread-safe)."""

    def __init__(self):
        self._z: dict[tuple, float] = {}
        self._busy: dict[tuple, threading.Event] = {}
        self._lock = threading.Lock()
        self.computed = 0                       # calibrations run (each key once)

    def cached(self, key: tuple) -> float | None:
        return self._z.get(key)

    def noise(self, key: tuple) -> float:
        """The noise multiplier of ``key`` (computed here, or by the thread already computing it)."""
        from fedlab.privacy import accounting

        while True:
            with self._lock:
                if key in self._z:
                    return self._z[key]
                event = self._busy.get(key)
                mine = event is None
                if mine:
                    event = self._busy[key] = threading.Event()
            if not mine:
                event.wait()
                continue                        # computed (or failed: then this thread tries)
            try:
                epsilon, delta, rounds, m, k, sampling, accountant = key
                z = accounting.calibrate(epsilon, delta, rounds, m / k, accountant=accountant, sampling=sampling,
                                         num_clients=k)
                with self._lock:
                    self._z[key] = z
                    self.computed += 1
                return z
            finally:
                with self._lock:
                    self._busy.pop(key, None)
                event.set()


def for_build(experiment, num_clients: int, calibrations: Calibrations):
    """``experiment`` with its target epsilon replaced by the calibrated noise multiplier (computed
    once per setting); unchanged without a target epsilon."""
    key = calibration_key(experiment, num_clients)
    if key is None:
        return experiment
    z = calibrations.noise(key)
    return experiment.replace(privacy=dataclasses.replace(experiment.privacy, target_epsilon=None, noise_multiplier=z))


def num_params(model) -> int:
    """Parameters of ``model`` (shapes only, nothing computed)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def explain(experiment, built, spent: dict) -> str:
    """The Privacy tab's text: the epsilon spent, what it means, and how loud the noise is next to
    the signal (with a warning when the noise swamps learning)."""
    p, data = experiment.privacy, built.data
    z, m, C = spent["noise_multiplier"], built.clients_per_round, p.clip
    epsilon = spent["epsilon"]
    d = num_params(built.model)
    ratio = z * math.sqrt(d) / m                 # noise norm on the mean update / the largest signal (C)
    odds = math.exp(epsilon) if epsilon < 50 else math.inf
    odds_text = f"{odds:.3g}" if odds < 1000 else f"{odds:,.0f}" if odds < 1e9 else "more than a billion"
    text = (f"This run will spend <b>ε = {epsilon:.3g}</b> at δ = {p.delta:g} over {experiment.rounds} rounds "
            f"(noise multiplier z = {z:.3g}, {m} of {data.num_clients} clients a round, {built.sampling} sampling)."
            f"<br><small><b>What ε means:</b> whatever anyone concludes from the trained model, the conclusion "
            f"is at most e<sup>ε</sup> = {odds_text}× more likely with any one client's data than without it "
            f"(except with probability δ). ε ≤ 1 is a strong guarantee, 1-10 is common in practice, "
            f"above 10 is weak.</small>"
            f"<br><small><b>Noise:</b> each round the server adds Gaussian noise of std z·C = {z * C:.3g} to the sum "
            f"of the clipped updates (norm ≤ C = {C:g}), so the averaged update carries noise of std "
            f"z·C/m = {z * C / m:.3g} per parameter: a noise norm of about z·C·√d/m = {ratio * C:.3g} over the "
            f"{d} parameters, against a signal of at most C = {C:g}.</small>")
    if ratio > 1:
        needed = math.ceil(z * math.sqrt(d))
        text += (f"<div class='fedlab-dp-warning' style='color:#8a5a00;background:#fff4d6;padding:4px 8px;"
                 f"border-radius:4px'>⚠ The noise is {_amount(ratio)}× the largest possible signal: this model will "
                 f"barely learn. DP-FedAvg needs many clients per round (here about z·√d ≈ {needed} or more, "
                 f"from at least as many clients), a larger ε, or fewer rounds. The preset "
                 f"<i>DP at scale</i> learns under DP.</div>")
    return text


def _amount(x: float) -> str:
    return f"{x:.2g}" if x < 100 else f"{x:,.0f}"


def error_text(err: BaseException) -> str:
    return f"<span style='color:#b00'>{html.escape(first_line(err))}</span>"
