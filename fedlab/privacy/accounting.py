"""Privacy accounting for user-level DP-FedAvg with Google's ``dp_accounting``.

One round releases the clients' clipped updates summed plus Gaussian noise of standard deviation
``noise_multiplier * clip``. Client sampling amplifies privacy:

- ``sampling="poisson"``: each client joins independently with probability q. Event:
  ``PoissonSampled(q, Gaussian(z))``, add-or-remove-one neighbouring (sensitivity C).
- ``sampling="fixed"``: exactly m of N clients, without replacement. Event:
  ``SampledWithoutReplacement(N, m, Gaussian(z / 2))``, replace-one neighbouring: swapping one
  client's data moves the sum by up to 2C, so the noise-to-sensitivity ratio is z / 2. Only the
  RDP accountant handles this event.

Both self-compose over the rounds. ``epsilon`` and ``calibrate`` are inverses of each other.
"""
from __future__ import annotations

import contextlib
import logging
import math

from fedlab.core.checks import check_int, check_number

ACCOUNTANTS = ("rdp", "pld")
SAMPLINGS = ("poisson", "fixed")
# dp_accounting is imported where it is used: it takes seconds to import, and ``import fedlab``
# (the CLI, the notebooks) should not pay that unless it accounts privacy.


class _DropNonConvergence(logging.Filter):
    def filter(self, record):
        return "failed to converge" not in record.getMessage()


@contextlib.contextmanager
def _quiet():
    """Silence dp_accounting's per-order "failed to converge ... excluding this order" warnings
    (dozens per call at fractional RDP orders). Epsilon is the minimum over the orders left, so it
    stays a valid bound; other warnings still show."""
    logger, drop = logging.getLogger("absl"), _DropNonConvergence()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def check_delta(delta: float) -> None:
    check_number("delta", delta, 0, 1, low_open=True, high_open=True)


def check_epsilon(epsilon: float) -> None:
    check_number("target_epsilon", epsilon, 0, low_open=True)


def check_clip(clip: float) -> None:
    check_number("clip", clip, 0, low_open=True)


def check_noise(noise_multiplier: float) -> None:
    check_number("noise_multiplier", noise_multiplier, 0)


def check_sampling(sampling_rate, rounds, accountant, sampling, num_clients):
    check_number("sampling_rate", sampling_rate, 0, 1, low_open=True)
    check_int("rounds", rounds, 0)
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if sampling == "fixed":
        if accountant != "rdp":
            raise ValueError("accountant must be 'rdp' for sampling='fixed' (dp_accounting's PLD "
                             "accountant has no sampling-without-replacement event)")
        if not (isinstance(num_clients, int) and num_clients >= 1):
            raise ValueError(f"num_clients must be an int >= 1 for sampling='fixed', got {num_clients!r}")
        if not 1 <= round(sampling_rate * num_clients) <= num_clients:
            raise ValueError(f"sampling_rate * num_clients must be a client count in [1, num_clients], "
                             f"got {sampling_rate} * {num_clients}")


def dp_event(noise_multiplier: float, sampling_rate: float, rounds: int, *, sampling: str = "poisson",
             num_clients: int | None = None):
    """The ``dp_accounting.DpEvent`` of ``rounds`` rounds of DP-FedAvg (see the module docstring)."""
    import dp_accounting

    if sampling == "poisson":
        one_round = dp_accounting.PoissonSampledDpEvent(
            sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    else:
        one_round = dp_accounting.SampledWithoutReplacementDpEvent(
            num_clients, round(sampling_rate * num_clients), dp_accounting.GaussianDpEvent(noise_multiplier / 2))
    return dp_accounting.SelfComposedDpEvent(one_round, rounds)


def _fresh_accountant(accountant: str, sampling: str):
    from dp_accounting import pld, rdp
    from dp_accounting.privacy_accountant import NeighboringRelation as NeighborRel

    if accountant == "pld":
        return pld.PLDAccountant(NeighborRel.ADD_OR_REMOVE_ONE)
    relation = NeighborRel.ADD_OR_REMOVE_ONE if sampling == "poisson" else NeighborRel.REPLACE_ONE
    return rdp.RdpAccountant(neighboring_relation=relation)


def epsilon_tracker(noise_multiplier: float, sampling_rate: float, delta: float, *, accountant: str = "rdp",
                    sampling: str = "poisson", num_clients: int | None = None):
    """A function rounds -> epsilon spent after that many rounds, for reporting round after round.

    With RDP the one-round RDP curve is computed once and scaled by the rounds (as dp_accounting
    composes a ``SelfComposedDpEvent``), so each call is cheap; PLD composes afresh each call.
    """
    check_noise(noise_multiplier)
    check_delta(delta)
    check_sampling(sampling_rate, 1, accountant, sampling, num_clients)
    one_round = None
    if accountant == "rdp" and noise_multiplier > 0:
        acc = _fresh_accountant(accountant, sampling)
        with _quiet():
            acc.compose(dp_event(noise_multiplier, sampling_rate, 1, sampling=sampling, num_clients=num_clients))
        one_round = acc.rdp

    def spent(rounds: int) -> float:
        check_int("rounds", rounds, 0)
        if rounds == 0:
            return 0.0
        if noise_multiplier == 0:
            return math.inf
        if one_round is not None:
            from dp_accounting import rdp

            return float(rdp.compute_epsilon(acc.orders, rounds * one_round, delta)[0])
        return epsilon(noise_multiplier, sampling_rate, rounds, delta, accountant=accountant,
                       sampling=sampling, num_clients=num_clients)

    return spent


def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float, *,
            accountant: str = "rdp", sampling: str = "poisson", num_clients: int | None = None) -> float:
    """Epsilon spent after ``rounds`` rounds at ``delta`` (``inf`` for noise_multiplier 0).

    sampling_rate: q = clients_per_round / num_clients; ``num_clients`` is needed for fixed sampling.
    """
    check_noise(noise_multiplier)
    check_delta(delta)
    check_sampling(sampling_rate, rounds, accountant, sampling, num_clients)
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = _fresh_accountant(accountant, sampling)
    with _quiet():
        acc.compose(dp_event(noise_multiplier, sampling_rate, rounds, sampling=sampling, num_clients=num_clients))
        return float(acc.get_epsilon(delta))


def calibrate(target_epsilon: float, delta: float, rounds: int, sampling_rate: float, *,
              accountant: str = "rdp", sampling: str = "poisson", num_clients: int | None = None,
              tol: float = 1e-3) -> float:
    """The smallest noise multiplier whose epsilon after ``rounds`` rounds is <= target_epsilon.

    Brent's search of ``dp_accounting.calibrate_dp_mechanism``; the result is exact to ``tol``.
    """
    check_epsilon(target_epsilon)
    check_delta(delta)
    check_sampling(sampling_rate, rounds, accountant, sampling, num_clients)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1 to calibrate, got {rounds}")
    import dp_accounting

    def calibrate_with(acc_name, bracket):
        with _quiet():
            return float(dp_accounting.calibrate_dp_mechanism(
                lambda: _fresh_accountant(acc_name, sampling),
                lambda z: dp_event(z, sampling_rate, rounds, sampling=sampling, num_clients=num_clients),
                target_epsilon, delta, bracket, tol=tol))

    z_rdp = calibrate_with("rdp", dp_accounting.LowerEndpointAndGuess(0.01, 1.0))
    if accountant == "rdp":
        return z_rdp
    # PLD is tighter than RDP (z_pld <= z_rdp), but a PLD at a tiny z needs a huge grid: search
    # down from the RDP answer instead of from near zero.
    lower = z_rdp / 2
    while epsilon(lower, sampling_rate, rounds, delta, accountant="pld") <= target_epsilon:
        lower /= 2
    return calibrate_with("pld", dp_accounting.ExplicitBracketInterval(lower, z_rdp))
