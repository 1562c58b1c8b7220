"""``python -m fedlab run ...`` and ``python -m fedlab list`` (a stable, scripted contract).

Algorithm options (``--mu``, ``--server-lr``, ...) are made from the registered strategies'
keyword arguments, so a newly registered strategy is usable from the command line at once.
Bad values end the program with one line naming the flag and the accepted range, exit code 2.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from fedlab.privacy import cli as privacy_cli

#: library parameter -> command-line flag, for error messages
FLAGS = {"rounds": "--rounds", "clients_per_round": "--clients-per-round", "local_steps": "--local-steps",
         "local_epochs": "--local-epochs", "batch_size": "--batch-size", "client_lr": "--lr",
         "stragglers": "--stragglers", "sampling": "--sampling", "seed": "--seed",
         "eval_every": "--eval-every", "chunk_size": "--chunk-size", "num_clients": "--clients",
         "dataset": "--dataset", "partition": "--partition", "target": "--target", "model": "--model",
         "algorithm": "--algorithm"}
FLAGS.update(privacy_cli.FLAGS)

_SKIP_KNOBS = {"client_lr", "client_optimizer"}


class CliError(Exception):
    pass


def _algorithm_knobs() -> dict[str, object]:
    """Every scalar option of every registered strategy, with its first-seen default."""
    from fedlab.core.registry import ALGORITHMS

    knobs = {}
    for entry in ALGORITHMS.entries():
        for name, default in entry.knobs().items():
            if name not in _SKIP_KNOBS and isinstance(default, (int, float, str)) and name not in knobs:
                knobs[name] = default
    return knobs


def _chunk(value: str):
    return value if value == "auto" else int(value)


def build_parser() -> argparse.ArgumentParser:
    import fedlab  # noqa: F401  (registers everything)

    parser = argparse.ArgumentParser(prog="python -m fedlab", description="fedlab: federated learning on JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the registered algorithms, models, datasets and partitions")
    run = sub.add_parser("run", help="train one federated run; writes DIR/history.csv and DIR/report.html",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = run.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic:1,1",
                   help="synthetic:ALPHA,BETA | digits | lending_club | caravan | npz:PATH | csv:PATH")
    g.add_argument("--partition", default=None,
                   help="natural | iid | dirichlet:ALPHA | shards[:N] | quantity[:EXP] | feature_shift[:STD] "
                        "| column:COL (default: the dataset's natural clients, else iid)")
    g.add_argument("--target", default=None, help="target column (csv datasets)")
    g.add_argument("--clients", type=int, default=None,
                   help="number of clients (default: implied by the dataset or 30)")
    g = run.add_argument_group("training")
    g.add_argument("--algorithm", default="fedavg", help="a registered strategy (see `list`)")
    g.add_argument("--model", default="logreg", help="a registered model (see `list`)")
    g.add_argument("--rounds", type=int, default=20)
    g.add_argument("--clients-per-round", type=int, default=None, help="default: min(10, clients)")
    g.add_argument("--sampling", default="fixed", help="fixed (without replacement) or poisson")
    work = g.add_mutually_exclusive_group()
    work.add_argument("--local-epochs", type=int, default=None, help="passes over each client's data (default 1)")
    work.add_argument("--local-steps", type=int, default=None, help="mini-batch steps per client")
    g.add_argument("--batch-size", type=int, default=10)
    g.add_argument("--lr", type=float, default=0.01, help="client learning rate (SGD)")
    g.add_argument("--stragglers", type=float, default=0.0, help="fraction of clients doing partial work")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--eval-every", type=int, default=1)
    g.add_argument("--chunk-size", type=_chunk, default="auto", help="clients per vmapped chunk")
    g = run.add_argument_group("algorithm options (each applies to the algorithms that take it)")
    for name, default in _algorithm_knobs().items():
        g.add_argument("--" + name.replace("_", "-"), type=type(default) if default is not None else float,
                       default=None, help=f"default {default!r}")
    privacy_cli.add_arguments(run)
    g = run.add_argument_group("output")
    g.add_argument("--out", default="fedlab-run", help="output directory")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--compilation-cache", action="store_true",
                   help="keep compiled rounds on disk ($FEDLAB_CACHE or ~/.cache/fedlab/jax): repeat runs start fast")
    return parser


def _flag_message(exc: Exception) -> str:
    """Rewrite a library error's leading parameter name as the flag the user typed."""
    msg = str(exc).strip().splitlines()[0]
    m = re.match(r"([a-z_]+)(:| must| has|\b)", msg)
    if m and m.group(1) in FLAGS:
        return FLAGS[m.group(1)] + msg[len(m.group(1)):]
    if m and m.group(1) in _algorithm_knobs():
        return "--" + m.group(1).replace("_", "-") + msg[len(m.group(1)):]
    return msg


def run(args) -> int:
    import fedlab
    from fedlab.core.registry import ALGORITHMS
    from fedlab.report import write_report

    entry = ALGORITHMS[args.algorithm]
    options = {"client_lr": args.lr} if "client_lr" in entry.knobs() else {}
    for name in _algorithm_knobs():
        value = getattr(args, name)
        if value is None:
            continue
        if name not in entry.knobs():
            raise CliError(f"--{name.replace('_', '-')} does not apply to --algorithm {args.algorithm} "
                           f"(it takes: {', '.join(sorted(k for k in entry.knobs() if k not in _SKIP_KNOBS)) or 'nothing'})")
        options[name] = value
    fedlab.MODELS[args.model]     # unknown names fail before the data is loaded
    privacy_cli.check(args)
    data = fedlab.data.load_federated(args.dataset, partition=args.partition, num_clients=args.clients,
                                      seed=args.seed, target=args.target)
    clients_per_round = args.clients_per_round or min(10, data.num_clients)
    if args.compilation_cache:
        fedlab.enable_compilation_cache()
    algorithm = args.algorithm
    if privacy_cli.requested(args):
        algorithm = privacy_cli.wrap(entry.factory(**options), args, clients_per_round=clients_per_round,
                                     num_clients=data.num_clients)
        options = {}
    history = fedlab.simulate(algorithm, args.model, data, rounds=args.rounds,
                              clients_per_round=clients_per_round,
                              local_steps=args.local_steps, local_epochs=args.local_epochs,
                              batch_size=args.batch_size, sampling=args.sampling, stragglers=args.stragglers,
                              seed=args.seed, eval_every=args.eval_every, chunk_size=args.chunk_size,
                              progress=not args.no_progress, **options)
    os.makedirs(args.out, exist_ok=True)
    history.to_csv(os.path.join(args.out, "history.csv"), index=False)
    write_report(history, os.path.join(args.out, "report.html"),
                 title=f"fedlab: {args.algorithm} on {data.name}")
    last = history.iloc[-1]
    print(f"{args.algorithm} on {data.name}: {len(history)} rounds, test accuracy "
          f"{last.get('test_accuracy', float('nan')):.4f}, train loss {last['train_loss']:.4f}, "
          f"{history['seconds'].sum():.2f} s training"
          + (f", epsilon {last['epsilon']:.4g} (delta {args.dp_delta:g})" if "epsilon" in history else "")
          + f"; wrote {args.out}/history.csv and report.html")
    return 0


def list_registered() -> int:
    from fedlab.core.registry import ALGORITHMS, DATASETS, MODELS, PARTITIONS

    for title, registry in (("algorithms", ALGORITHMS), ("models", MODELS), ("datasets", DATASETS),
                            ("partitions", PARTITIONS)):
        print(f"{title}:")
        for e in registry.entries():
            knobs = {k: v for k, v in e.knobs().items() if k not in _SKIP_KNOBS | {"key", "num_clients"}}
            opts = " ".join(f"{k}={v!r}" for k, v in knobs.items())
            print(f"  {e.name:<18} {e.description}" + (f"  [{opts}]" if opts else ""))
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return list_registered() if args.command == "list" else run(args)
    except (ValueError, CliError, FileNotFoundError) as exc:
        print(f"fedlab: error: {_flag_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
