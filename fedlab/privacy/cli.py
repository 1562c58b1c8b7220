"""The command line's privacy flags: ``--dp-clip C`` with ``--dp-epsilon E [--dp-delta D]`` (the
noise multiplier calibrated for the whole run) or ``--dp-noise-multiplier Z`` (epsilon reported)."""
from __future__ import annotations

import argparse

#: library parameter -> flag, for the CLI's error messages
FLAGS = {"clip": "--dp-clip", "target_epsilon": "--dp-epsilon", "delta": "--dp-delta",
         "noise_multiplier": "--dp-noise-multiplier", "accountant": "--dp-accountant"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("differential privacy (central, user-level DP-FedAvg)")
    budget = g.add_mutually_exclusive_group()
    budget.add_argument("--dp-epsilon", type=float, default=None,
                        help="privacy budget for the whole run; the noise multiplier is calibrated to it")
    budget.add_argument("--dp-noise-multiplier", type=float, default=None,
                        help="noise std / clip; the epsilon spent is reported each round")
    g.add_argument("--dp-delta", type=float, default=1e-5, help="delta of (epsilon, delta)-DP")
    g.add_argument("--dp-clip", type=float, default=None, help="L2 clip norm of each client's update")
    g.add_argument("--dp-accountant", default="rdp", help="rdp or pld (pld needs --sampling poisson)")


def requested(args) -> bool:
    """Whether any DP flag was given."""
    return any(v is not None for v in (args.dp_epsilon, args.dp_noise_multiplier, args.dp_clip))


def check(args) -> None:
    """Validate the DP flags (before any data is loaded); ValueError names the parameter."""
    if not requested(args):
        return
    from fedlab.privacy import accounting

    if args.dp_epsilon is None and args.dp_noise_multiplier is None:
        raise ValueError("--dp-clip needs --dp-epsilon or --dp-noise-multiplier")
    if args.dp_clip is None:
        raise ValueError("--dp-epsilon / --dp-noise-multiplier need --dp-clip (the clip norm C)")
    accounting.check_clip(args.dp_clip)
    accounting.check_delta(args.dp_delta)
    if args.dp_epsilon is not None:
        accounting.check_epsilon(args.dp_epsilon)
    else:
        accounting.check_noise(args.dp_noise_multiplier)
    if args.dp_accountant not in accounting.ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {accounting.ACCOUNTANTS}, got {args.dp_accountant!r}")


def wrap(strategy, args, *, clients_per_round: int, num_clients: int):
    """``strategy`` wrapped in ``dp(...)`` as the DP flags ask (``check`` them first)."""
    from fedlab.privacy.dp import dp

    return dp(strategy, clip=args.dp_clip, clients_per_round=clients_per_round, num_clients=num_clients,
              sampling=args.sampling, noise_multiplier=args.dp_noise_multiplier,
              target_epsilon=args.dp_epsilon, delta=args.dp_delta,
              rounds=args.rounds if args.dp_epsilon is not None else None, accountant=args.dp_accountant)
