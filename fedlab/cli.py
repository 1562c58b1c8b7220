"""``python -m fedlab run ...`` and ``python -m fedlab list`` (a stable, scripted contract).

The flags are made from the fields of ``fedlab.Experiment`` and ``fedlab.Privacy`` (their help
and true defaults) and from the registered strategies' and models' options, so a setting added
to the Experiment, or a newly registered strategy, is on the command line at once. The command
line builds one Experiment: ``--config FILE`` (an experiment.json) gives the starting values and
flags given after it override them. Bad values end the program with one line naming the flag and
the accepted range, exit code 2, before any work. A run that diverges exits 3, one that fails
exits 4, Ctrl-C exits 130 (each after writing the rounds done and a checkpoint).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import warnings

from fedlab.core.experiment import Experiment, Privacy, flag_of, option_flag, parse_spec, settable_knobs
from fedlab.core.registry import value_from_text

EXIT = {"completed": 0, "stopped": 0, "interrupted": 130, "diverged": 3, "failed": 4}
OUTPUT_FLAGS = ("out", "no_progress", "compilation_cache", "checkpoint_every", "resume", "rounds")


class CliError(ValueError):
    pass


def _field_flags() -> dict[str, str]:
    """Experiment / Privacy field name -> flag (for error messages)."""
    flags = {f.name: flag_of(f) for cls in (Experiment, Privacy) for f in dataclasses.fields(cls) if flag_of(f)}
    return {**flags, "dataset_options": "--dataset", "partition_options": "--partition", "target": "--target",
            "out": "--out", "checkpoint_every": "--checkpoint-every", "config": "--config", "resume": "--resume"}


def _option_defaults(registry) -> dict[str, dict[str, object]]:
    """option -> {entry name: default} over every registered entry that takes it."""
    out: dict[str, dict[str, object]] = {}
    for entry in registry.entries():
        for name, default in settable_knobs(entry).items():
            out.setdefault(name, {})[entry.name] = default
    return out


def _defaults_text(defaults: dict[str, object]) -> str:
    """'default 0.01 (fedadam, fedopt), 1.0 (fedavgm)': every algorithm's own default."""
    by_value: dict[str, list[str]] = {}
    for entry, value in defaults.items():
        text = ",".join(map(str, value)) if isinstance(value, tuple) else repr(value) if isinstance(value, str) else str(value)
        by_value.setdefault(text, []).append(entry)
    if len(by_value) == 1:
        (text, names), = by_value.items()
        return f"default {text} ({', '.join(names)})"
    return "default " + "; ".join(f"{text} ({', '.join(names)})" for text, names in by_value.items())


def _bool_text(text: str) -> bool:
    if text.lower() not in ("0", "1", "true", "false"):
        raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")
    return text.lower() in ("1", "true")


def _field_type(field: dataclasses.Field):
    if isinstance(field.default, bool):
        return _bool_text
    if field.name in ("chunk_size", "devices"):
        return lambda v: v if v == "auto" else int(v)
    default = field.default
    if field.name in ("num_clients", "clients_per_round", "local_steps", "local_epochs", "eval_clients") or \
            isinstance(default, int):
        return int
    if isinstance(default, float) or field.name in ("target_epsilon", "noise_multiplier"):
        return float
    return str


def _metavar(field: dataclasses.Field) -> str:
    return flag_of(field)[2:].upper().replace("-", "_")


def _help(field: dataclasses.Field) -> str:
    text = field.metadata["help"]
    default = field.default
    if "default" in text or default is None or isinstance(default, bool):
        return text
    return f"{text} (default {default})"


def build_parser() -> argparse.ArgumentParser:
    import fedlab  # noqa: F401  (registers everything)
    from fedlab.core.registry import ALGORITHMS, MODELS

    parser = argparse.ArgumentParser(prog="python -m fedlab", description="fedlab: federated learning on JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the registered algorithms, models, datasets and partitions")
    run = sub.add_parser("run", help="train one federated run; writes DIR/history.csv, DIR/report.html, "
                                     "DIR/experiment.json, DIR/run.json and a checkpoint",
                         argument_default=argparse.SUPPRESS)
    g = run.add_argument_group("experiment file")
    g.add_argument("--config", metavar="FILE", help="an experiment.json (from an earlier run's --out directory); "
                                                    "flags given as well override its settings")
    g.add_argument("--resume", metavar="DIR", help="continue the run in DIR up to --rounds rounds in total, "
                                                   "appending to DIR/history.csv")
    groups = {name: run.add_argument_group(name) for name in ("data", "model", "algorithm", "schedule",
                                                               "adversaries", "communication")}
    for field in dataclasses.fields(Experiment):
        if flag_of(field) and field.metadata["group"] in groups:
            extra = {"nargs": "?", "const": True} if isinstance(field.default, bool) else {}
            groups[field.metadata["group"]].add_argument(flag_of(field), dest=field.name, type=_field_type(field),
                                                         metavar=_metavar(field), help=_help(field),
                                                         choices=field.metadata["choices"], **extra)
    groups["data"].add_argument("--target", help="target column of a csv:PATH or parquet:PATH dataset")
    for title, registry in (("model options (each applies to the models that take it)", MODELS),
                            ("algorithm options (each applies to the algorithms that take it)", ALGORITHMS)):
        g = run.add_argument_group(title)
        for name, defaults in _option_defaults(registry).items():
            if name == "target":
                continue
            g.add_argument(option_flag(name), dest="option:" + name, metavar="VALUE",
                           help=_defaults_text(defaults))
    g = run.add_argument_group("differential privacy (central, user-level DP-FedAvg; on when --dp-epsilon or "
                               "--dp-noise-multiplier is given; sampling then defaults to poisson)")
    for field in dataclasses.fields(Privacy):
        kind = ({"action": "store_true"} if isinstance(field.default, bool)
                else {"type": _field_type(field), "metavar": _metavar(field), "choices": field.metadata["choices"]})
        g.add_argument(flag_of(field), dest="dp:" + field.name, help=_help(field), **kind)
    _add_quality_parser(sub)
    g = run.add_argument_group("output")
    g.add_argument("--out", default="fedlab-run", help="output directory (default fedlab-run)")
    g.add_argument("--checkpoint-every", type=int, metavar="K",
                   help="also write the checkpoint every K rounds (it is always written at the end, on "
                        "Stop, on Ctrl-C and on divergence)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--compilation-cache", action="store_true",
                   help="keep compiled rounds on disk ($FEDLAB_CACHE/jax or ~/.cache/fedlab/jax): repeat runs start fast")
    return parser


QUALITY_FIELDS = ("dataset", "partition", "num_clients", "test_fraction", "seed", "model", "corrupt",
                  "corrupt_clients", "quality_threshold")


def _add_quality_parser(sub) -> None:
    q = sub.add_parser("quality", help="audit each client's data quality from shareable summary statistics; "
                                       "writes DIR/quality.csv and DIR/quality.html (a clients x checks heatmap)",
                       argument_default=argparse.SUPPRESS)
    for field in dataclasses.fields(Experiment):
        if field.name in QUALITY_FIELDS:
            q.add_argument(flag_of(field), dest=field.name, type=_field_type(field), metavar=_metavar(field),
                           help=_help(field))
    q.add_argument("--target", help="target column of a csv:PATH or parquet:PATH dataset")
    q.add_argument("--out", default="fedlab-quality", help="output directory (default fedlab-quality)")


def quality(args) -> int:
    from fedlab.data.quality import detection_scores, write_quality

    given = vars(args)
    values = {name: given[name] for name in QUALITY_FIELDS if name in given}
    if "target" in given:
        values["dataset_options"] = {"target": given["target"]}
    experiment = Experiment.from_dict(values)
    out = given.get("out", "fedlab-quality")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CliError(f"--out: {out!r} is a file, not a directory")
    report = experiment.quality_report()
    write_quality(report, out, experiment.quality_threshold, title=f"fedlab quality: {experiment.dataset_spec}")
    text = f"{int(report['flagged'].sum())} of {len(report)} clients flagged"
    if report["corrupted"].any():
        d = detection_scores(report)
        text += (f" ({int(report['corrupted'].sum())} corrupted; precision {d['precision']:.2f}, "
                 f"recall {d['recall']:.2f})")
    print(f"{text}; wrote {out}/quality.csv, quality.html")
    return 0


def experiment_from_args(args: argparse.Namespace) -> Experiment:
    """The Experiment the flags describe: --config's values, overridden by the flags given."""
    from fedlab.core.registry import ALGORITHMS, MODELS

    given = vars(args)
    values: dict = {}
    if "config" in given:
        try:
            with open(given["config"]) as f:
                values = json.load(f)
        except OSError as err:
            raise CliError(f"--config: cannot read {given['config']!r} ({err.strerror})") from None
        except json.JSONDecodeError as err:
            raise CliError(f"--config: {given['config']!r} is not valid JSON ({err})") from None
        if not isinstance(values, dict):
            raise CliError(f"--config: {given['config']!r} must hold a JSON object of settings")
    for field in dataclasses.fields(Experiment):
        if field.name in given:
            values[field.name] = given[field.name]
    for kind in ("dataset", "partition"):
        if kind in given:
            name, options = parse_spec(kind, given[kind])
            values[kind], values[f"{kind}_options"] = name, options
    if "target" in given:
        values["dataset_options"] = {**values.get("dataset_options", {}), "target": given["target"]}
    for kind, registry in (("model", MODELS), ("algorithm", ALGORITHMS)):
        entry = registry[values.get(kind, getattr(Experiment, kind))]
        knobs = settable_knobs(entry)
        options = dict(values.get(f"{kind}_options", {}))
        for key, text in given.items():
            if not key.startswith("option:") or key[7:] not in _option_defaults(registry):
                continue
            name = key[7:]
            if name not in knobs:
                takes = ", ".join(option_flag(k) for k in knobs) or "nothing"
                raise CliError(f"{option_flag(name)} does not apply to --{kind} {entry.name} (it takes: {takes})")
            options[name] = value_from_text(option_flag(name), text, knobs[name])
        values[f"{kind}_options"] = options
    dp = {key[3:]: value for key, value in given.items() if key.startswith("dp:")}
    if dp:
        privacy = dict(values.get("privacy") or {})
        for pair in (("target_epsilon", "noise_multiplier"), ("noise_multiplier", "target_epsilon")):
            if pair[0] in dp:
                privacy[pair[1]] = None
        values["privacy"] = {**privacy, **dp}
    if values.get("privacy") is not None:
        p = values["privacy"]
        if p.get("target_epsilon") is None and p.get("noise_multiplier") is None:
            raise CliError("--dp-clip and the other --dp-* flags need --dp-epsilon or --dp-noise-multiplier")
    for pair in (("local_steps", "local_epochs"), ("local_epochs", "local_steps")):
        if pair[0] in given and pair[1] not in given:
            values[pair[1]] = None
    return Experiment.from_dict(values)


def _registered_options() -> set[str]:
    """Every option name of a registered algorithm or model (each is a flag of its own)."""
    from fedlab.core.registry import ALGORITHMS, MODELS

    return set(_option_defaults(ALGORITHMS)) | set(_option_defaults(MODELS))


def _flag_message(exc: Exception) -> str:
    """A library error as one line, with setting names written as the flags the user typed."""
    msg = str(exc).strip().splitlines()[0]
    flags = _field_flags()
    m = re.match(r"([a-z][a-z0-9_]*)(\b)", msg)
    if m and m.group(1) in flags:
        msg = flags[m.group(1)] + msg[m.end(1):]
    elif m and ("_" in m.group(1) or m.group(1) in _registered_options()):
        msg = option_flag(m.group(1)) + msg[m.end(1):]
    # other multi-word setting names inside the message
    return re.sub(r"(?<![-\w])([a-z]+_[a-z_]+)(?![\w])",
                  lambda w: flags.get(w.group(1), w.group(1)), msg)


def run(args) -> int:
    import fedlab
    from fedlab.report import write_report

    given = vars(args)
    if "resume" in given:
        extra = sorted(k for k in given if k not in OUTPUT_FLAGS and k != "command")
        if extra:
            raise CliError(f"--resume continues the run as it was: only --rounds and output flags may be given "
                           f"with it, got {', '.join(_field_flags().get(k, '--' + k.split(':')[-1].replace('_', '-')) for k in extra)}")
        if "rounds" not in given:
            raise CliError("--resume needs --rounds R (the total number of rounds to reach)")
        out = given["resume"]
    else:
        experiment = experiment_from_args(args)
        out = args.out
    if "checkpoint_every" in given and args.checkpoint_every < 1:
        raise CliError(f"--checkpoint-every must be an integer >= 1, got {args.checkpoint_every}")
    if "compilation_cache" in given:
        fedlab.enable_compilation_cache()
    progress = "no_progress" not in given
    try:
        if "resume" in given:
            history = fedlab.resume(out, args.rounds, progress=progress, checkpoint_every=given.get("checkpoint_every"))
            experiment = Experiment.from_dict(history.settings)
        else:
            history = experiment.run(out=out, progress=progress, checkpoint_every=given.get("checkpoint_every"))
    except KeyboardInterrupt:
        print(f"fedlab: interrupted; the rounds done and a checkpoint are in {out}; continue with: "
              f"python -m fedlab run --resume {out} --rounds R", file=sys.stderr)
        return EXIT["interrupted"]
    title = f"fedlab: {experiment.algorithm} on {experiment.dataset_spec}"
    if len(history):
        write_report(history, os.path.join(out, "report.html"), title=title)
    if history.status in ("diverged", "failed"):
        hint = "; try a smaller --lr" if history.status == "diverged" else ""
        print(f"fedlab: {history.message}{hint} ({len(history)} rounds kept in {out})", file=sys.stderr)
        return EXIT[history.status]
    last = history.iloc[-1]
    score = (f"test RMSE {last['test_rmse']:.4g}, MAE {last['test_mae']:.4g}, R2 {last['test_r2']:.4f}"
             if "test_rmse" in history else f"test accuracy {last.get('test_accuracy', float('nan')):.4f}")
    if "personal_acc_mean" in history:      # every client evaluated (not a sample of a large population)
        score += f", personal accuracy (mean over clients) {last['personal_acc_mean']:.4f}"
    print(f"{experiment.algorithm} on {experiment.dataset_spec}: {len(history)} rounds, {score}, "
          f"train loss {last['train_loss']:.4f}, "
          f"{history['seconds'].sum():.2f} s training"
          + (f", epsilon {last['epsilon']:.4g} (delta {experiment.privacy.delta:g})" if "epsilon" in history else "")
          + (f", backdoor accuracy {last['backdoor_accuracy']:.4f}" if "backdoor_accuracy" in history else "")
          + (f", attackers {history.attackers}" if history.attackers else "")
          + f"; wrote {out}/history.csv, report.html, experiment.json")
    return EXIT[history.status]


def list_registered() -> int:
    from fedlab.core.registry import ALGORITHMS, DATASETS, MODELS, PARTITIONS

    for title, registry in (("algorithms", ALGORITHMS), ("models", MODELS), ("datasets", DATASETS),
                            ("partitions", PARTITIONS)):
        print(f"{title}:")
        for e in registry.entries():
            opts = " ".join(f"{k}={v!r}" for k, v in settable_knobs(e).items())
            print(f"  {e.name:<18} {e.description}" + (f"  [{opts}]" if opts else ""))
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"fedlab: warning: {str(message).splitlines()[0]}", file=sys.stderr)


def main(argv=None) -> int:
    from fedlab.core.simulate import RunEndedWarning

    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunEndedWarning)    # run() prints how the run ended
        warnings.showwarning = _one_line_warning
        try:
            if args.command == "quality":
                return quality(args)
            return list_registered() if args.command == "list" else run(args)
        except (ValueError, FileNotFoundError) as exc:
            print(f"fedlab: error: {_flag_message(exc)}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
