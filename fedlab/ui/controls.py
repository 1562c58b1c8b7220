"""The controls: one widget per setting of ``fedlab.Experiment``, and the Experiment they describe.

    controls = Controls()
    controls.show(fedlab.Experiment(algorithm="fedprox", rounds=50))   # widgets <- Experiment
    experiment = controls.experiment()                                  # widgets -> Experiment

The widgets are made from the Experiment's fields (and ``fedlab.Privacy``'s): a field's tab is its
group, its tooltip its help, so a field added to the Experiment appears here by itself. The
registered datasets, partitions, algorithms and models are listed from the registries, each with
one widget per option it takes (``settable_knobs``, made when first shown): a strategy
registered in a notebook cell appears after ``refresh``. Values are checked by the Experiment,
not here: ``experiment()`` raises the Experiment's ValueError, which names the setting.
"""
from __future__ import annotations

import contextlib
import dataclasses
import html
import importlib.util

import ipywidgets as W
from traitlets import TraitError

from fedlab.core.experiment import Experiment, Privacy, parse_spec, settable_knobs
from fedlab.core.registry import ALGORITHMS, DATASETS, MODELS, PARTITIONS

REGISTRIES = {"dataset": DATASETS, "partition": PARTITIONS, "algorithm": ALGORITHMS, "model": MODELS}
HIDDEN_DATASETS = ("csv", "parquet", "npz")        # need a path: pass ``data=`` to the Workbench instead
GIVEN = "(given)"                       # the dataset given to the Workbench
DEFAULT = "default"                     # a setting left to the Experiment's default (None)
DP_MODES = ("off", "target epsilon", "noise multiplier")
LOG_KNOBS = {"client_lr": (-4, 2), "server_lr": (-3, 2), "lr": (-4, 2)}   # log10 ranges of the sliders
DATA_FIELDS = ("dataset", "dataset_options", "partition", "partition_options", "num_clients", "test_fraction")
QUALITY_FIELDS = ("corrupt", "corrupt_clients", "quality_threshold")     # the Data tab's quality heatmap
TABS = (("Data", ("data",)), ("Algorithm", ("algorithm", "model")), ("Training", ("schedule",)),
        ("Adversaries & communication", ("adversaries", "communication")), ("Privacy", ("privacy",)))
STYLE = {"description_width": "initial"}
# the unit each setting's help (from the Experiment) leaves implicit
FIELD_UNITS = {"num_clients": "clients; 0: the default", "test_fraction": "a share, 0 to 1", "rounds": "rounds",
               "clients_per_round": "clients; 0: the default", "batch_size": "examples per mini-batch",
               "stragglers": "a share of each round's clients, 0 to 0.95", "eval_every": "rounds",
               "seed": "an integer", "chunk_size": "clients, or auto", "devices": "a number, or auto", "clip": "L2 norm of the update",
               "target_epsilon": "ε; smaller = more private", "noise_multiplier": "noise std / clip norm",
               "delta": "a probability, well below 1/clients", "dataset": "", "partition": "", "model": "",
               "algorithm": "", "sampling": "", "accountant": "", "adaptive_clipping": ""}


def _help(field) -> str:
    unit = FIELD_UNITS.get(field.name, "")
    return field.metadata["help"] + (f" ({unit})" if unit else "")


# tooltips of the registered factories' options: meaning and unit
KNOB_HELP = {
    "client_lr": "each client's SGD step size (learning rate; parameter change per unit gradient)",
    "server_lr": "the server's step size on the averaged update (1: take the mean as is)",
    "lr": "step size (learning rate)",
    "mu": "FedProx proximal weight: pulls each client's model toward the global one (0: FedAvg)",
    "alpha": "Dirichlet concentration of each class over clients: small (0.01-0.1) = each client sees "
             "few classes (non-IID), large (10-100) = every client sees every class (IID)",
    "beta": "Dirichlet concentration of client sizes: small = very unequal sizes, large = equal sizes",
    "min_size": "fewest training rows a client may get (rows)",
    "shards_per_client": "label-sorted shards per client (fewer = fewer classes per client)",
    "exponent": "power-law exponent of client sizes (larger = more unequal)",
    "sigma": "std of the Gaussian noise added to each client's features (feature units)",
    "column": "the raw column whose values become the clients",
    "hidden": "sizes of the hidden layers (units per layer, comma separated)",
    "channels": "convolution channels per layer (comma separated)",
    "dense": "units of the dense layer",
    "balance": "weigh classes so a rare class counts as much as a common one",
    "beta1": "first-moment decay of the server optimizer (0-1)",
    "beta2": "second-moment decay of the server optimizer (0-1)",
    "tau": "adaptivity of the server optimizer (epsilon in the denominator)",
    "momentum": "server momentum (0: none, 0.9: typical)",
    "q": "q-FFL fairness: 0 = FedAvg, larger = more weight on clients with a high loss",
}


def dp_available() -> bool:
    """Whether fedlab.privacy (the ``dp`` wrapper and its accountant) is installed."""
    try:
        return importlib.util.find_spec("fedlab.privacy.accounting") is not None
    except ImportError:                 # pragma: no cover
        return False


def _label(name: str) -> str:
    return name.replace("_", " ")


def _width(px: int) -> W.Layout:        # one Layout per widget: a shared one would hide them together
    return W.Layout(width=f"{px}px")


# ---- one setting <-> one widget --------------------------------------------------------------
class Control:
    """A widget and the conversions between its value and the setting's."""

    def __init__(self, name: str, widget: W.Widget, get=None, put=None):
        self.name, self.widget = name, widget
        self._get, self._put = get or (lambda v: v), put or (lambda v: v)

    def get(self):
        return self._get(self.widget.value)

    def set(self, value) -> None:
        shown = self._put(value)
        low, high = _bounds(self.widget)
        if isinstance(shown, (int, float)) and not isinstance(shown, bool) and not low <= shown <= high:
            raise ValueError(f"{self.name} must be in [{low:g}, {high:g}] here (the slider's range), got {value!r}")
        try:
            self.widget.value = shown
            ok = self.widget.value == shown     # an IntText casts 2.5 to 2: refuse that too
        except TraitError:
            ok = False
        if not ok:
            options = getattr(self.widget, "options", None)
            kind = (f"one of {list(options)}" if options is not None else
                    {bool: "true or false", int: "an integer", float: "a number"}.get(type(self.widget.value), "a text"))
            raise ValueError(f"{self.name} must be {kind} here, got {value!r}")


def _bounds(widget) -> tuple[float, float]:
    """The range a slider accepts (it would clamp other values); text boxes take any."""
    if isinstance(widget, W.FloatLogSlider):
        return widget.base ** widget.min, widget.base ** widget.max
    if isinstance(widget, (W.FloatSlider, W.IntSlider)):
        return widget.min, widget.max
    return float("-inf"), float("inf")


def _typed(name: str, default, tooltip: str = "", optional: bool = False, label: str | None = None) -> Control:
    """A text box or checkbox for a value of ``default``'s type; ``optional``: 0 stands for None."""
    label = (label or _label(name)) + (" (0: default)" if optional else "")
    kw = dict(description=label, style=STYLE, tooltip=tooltip)
    if isinstance(default, bool):
        return Control(name, W.Checkbox(value=default, description=label, indent=False, tooltip=tooltip))
    if isinstance(default, int) or optional:
        widget = W.IntText(value=default or 0, layout=_width(280 if optional else 200), **kw)
        return Control(name, widget, (lambda v: v or None) if optional else None,
                       (lambda v: v or 0) if optional else None)
    if isinstance(default, float):
        return Control(name, W.FloatText(value=default, layout=_width(200), **kw))
    if isinstance(default, tuple):      # e.g. hidden=(200, 200): "200,200"
        return Control(name, W.Text(value=",".join(map(str, default)), layout=_width(220), **kw),
                       _int_tuple, lambda v: ",".join(map(str, v)) if isinstance(v, (tuple, list)) else v)
    return Control(name, W.Text(value="" if default is None else str(default), layout=_width(260), **kw),
                   lambda v: v.strip() or (None if default is None else ""),
                   lambda v: "" if v is None else ",".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v))


def _int_tuple(text: str):
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        return text                     # the Experiment names the option and what it takes


def _choice(name: str, options, default, tooltip: str = "") -> Control:
    """A dropdown; the entry DEFAULT stands for None."""
    widget = W.Dropdown(options=list(options), value=DEFAULT if default is None else default,
                        description=_label(name), style=STYLE, tooltip=tooltip, layout=_width(220))
    return Control(name, widget, lambda v: None if v == DEFAULT else v, lambda v: DEFAULT if v is None else v)


def _int_or_auto(text: str):
    text = text.strip()
    return int(text) if text.isdigit() else text


def _special(field: dataclasses.Field, tooltip: str) -> Control | None:
    """The fields that are not a plain number or text box."""
    name = field.name
    if name in REGISTRIES:             # options and value: from the registry, by ``refresh``
        return Control(name, W.Dropdown(description=name, style=STYLE, tooltip=tooltip),
                       lambda v: None if v == DEFAULT else v, lambda v: DEFAULT if v is None else v)
    if field.metadata.get("choices"):
        return _choice(name, [DEFAULT] * (field.default is None) + list(field.metadata["choices"]), field.default,
                       tooltip)
    if name in ("num_clients", "clients_per_round"):
        return _typed(name, field.default, tooltip, optional=True, label="clients" if name == "num_clients" else None)
    if name == "stragglers":
        return Control(name, W.FloatSlider(value=field.default, min=0.0, max=0.95, step=0.05, description=name,
                                           style=STYLE, tooltip=tooltip))
    if name in ("chunk_size", "devices"):       # a number or "auto"
        return Control(name, W.Text(value=str(field.default), description=name.replace("_", " "), style=STYLE,
                                    tooltip=tooltip, layout=_width(200)), _int_or_auto, str)
    return None


def _round(value: float, digits: int = 2) -> float:
    """``value`` to ``digits`` significant digits: a log slider's 0.5011872336272722 is 0.5."""
    return float(f"{value:.{digits}g}")


class LogControl(Control):
    """A log slider whose value is read rounded to 2 significant digits (its positions are powers
    of 10 such as 10**-0.3 = 0.501...), except a value set exactly (``set(0.123)`` gives 0.123)."""

    def __init__(self, name: str, widget: W.FloatLogSlider):
        super().__init__(name, widget)
        self._exact: float | None = None

    def get(self):
        value = self.widget.value
        return self._exact if self._exact is not None and value == self._exact else _round(value)

    def set(self, value) -> None:
        super().set(value)
        self._exact = self.widget.value


def _knob(kind: str, entry: str, name: str, default) -> Control:
    """The widget of one option of a registered factory: learning rates and dirichlet's alpha on
    log sliders, other numbers in text boxes."""
    tooltip = KNOB_HELP.get(name, f"{_label(name)}: an option of the {kind} {entry!r} (default {default!r})")
    if isinstance(default, float) and not isinstance(default, bool):
        if kind == "partition" and entry in ("dirichlet", "quantity_dirichlet") and name in ("alpha", "beta"):
            return LogControl(name, W.FloatLogSlider(value=default, base=10, min=-2, max=2, step=0.05, style=STYLE,
                                                     description=f"{name} (heterogeneity)", readout_format=".2g",
                                                     tooltip=tooltip, layout=_width(420)))
        if name in LOG_KNOBS and default > 0:
            lo, hi = LOG_KNOBS[name]
            return LogControl(name, W.FloatLogSlider(value=default, base=10, min=lo, max=hi, step=0.1, style=STYLE,
                                                     description=_label(name), readout_format=".2g",
                                                     tooltip=tooltip, layout=_width(380)))
    return _typed(name, default, tooltip)


# ---- the controls ----------------------------------------------------------------------------
class Controls:
    """The widgets of every setting (``widgets``: name -> widget, ``tabs``: the Tab to show);
    ``experiment()`` / ``show(experiment)`` / ``apply(settings)``; ``on_change(fn)``: call ``fn()``
    after any setting changes. ``given``: the name of a dataset given in code, offered as GIVEN."""

    def __init__(self, given: str | None = None):
        self.given = given
        self.fields: dict[str, Control] = {}
        for f in dataclasses.fields(Experiment):
            if f.name.endswith("_options") or f.name in ("privacy", "local_steps", "local_epochs"):
                continue
            optional = f.default is None and str(f.type).startswith("int")     # e.g. eval_clients: 0 = None
            self.fields[f.name] = _special(f, _help(f)) or _typed(f.name, f.default, _help(f), optional=optional)
        self._make_work_widgets()
        self._make_privacy_widgets()
        self._knobs: dict[tuple, Control] = {}
        self.knob_boxes = {kind: W.HBox(layout=W.Layout(flex_flow="row wrap")) for kind in REGISTRIES}
        self.algorithm_info = W.HTML()
        self._listeners: list = []
        self.offered: dict[str, set | None] = {kind: None for kind in REGISTRIES}   # None: all registered
        self._batch = 0                     # > 0 inside show / apply: listeners are called once, after
        self.widgets = {**{n: c.widget for n, c in self.fields.items()}, **self.work, **self.dp}
        for widget in self.widgets.values():
            widget.observe(self._changed, "value")
        for kind in REGISTRIES:
            self.widgets[kind].observe(lambda _, kind=kind: self._show_knobs(kind), "value")
        self.widgets["dp"].observe(lambda _: self._show_privacy_fields(), "value")
        self.refresh()
        self._show_privacy_fields()
        self.tabs = self._layout()

    def _make_work_widgets(self):
        """local_steps / local_epochs: one dropdown (which one, or the default) and an amount."""
        self.work = {"work": W.Dropdown(options=["1 local epoch (default)", "local steps", "local epochs"],
                                        description="local work", style=STYLE, layout=_width(260),
                                        tooltip="mini-batch steps or passes over its data per client per round"),
                     "work_amount": W.IntText(value=1, layout=_width(80),
                                              tooltip="how many local steps (mini-batches) or epochs (passes)")}
        amount = self.work["work_amount"]
        self.work["work"].observe(lambda c: setattr(amount.layout, "display", "none" if c.new.startswith("1 ") else None),
                                  "value")
        amount.layout.display = "none"

    def _work_get(self, name: str):
        return self.work["work_amount"].value if self.work["work"].value == _label(name) else None

    def _work_set(self, name: str, value) -> None:
        if value is not None:
            Control(name, self.work["work_amount"]).set(value)
            self.work["work"].value = _label(name)
        elif self.work["work"].value == _label(name):
            self.work["work"].index = 0

    def _make_privacy_widgets(self):
        """The DP mode ("off" / "target epsilon" / "noise multiplier") and one widget per field of
        fedlab.Privacy (epsilon and noise multiplier start at values worth trying)."""
        self.dp = {"dp": W.ToggleButtons(
            options=DP_MODES, value="off", description="DP", style={"button_width": "130px"},
            tooltips=["no differential privacy",
                      "give the privacy budget ε for the whole run; the noise is calibrated to it",
                      "give the noise (std / clip norm); the ε spent is reported each round"],
            tooltip="user-level differential privacy of the clients' updates (DP-FedAvg)")}
        start = {"target_epsilon": 4.0, "noise_multiplier": 1.0}
        self.privacy_fields = {}
        for f in dataclasses.fields(Privacy):
            help_ = _help(f)
            if f.name == "accountant":
                control = _choice(f.name, list(f.metadata.get("choices") or ("rdp", "pld")), f.default, help_)
            else:
                control = _typed(f.name, start.get(f.name, f.default), help_)
            control.widget.description = {"target_epsilon": "target ε", "delta": "δ"}.get(f.name, _label(f.name))
            self.privacy_fields[f.name] = control
            self.dp[f.name] = control.widget
        if not dp_available():
            self.dp["dp"].disabled = True

    def _show_privacy_fields(self):
        hidden = {"off": set(self.privacy_fields), "target epsilon": {"noise_multiplier"},
                  "noise multiplier": {"target_epsilon"}}[self.dp["dp"].value]
        for name, control in self.privacy_fields.items():
            control.widget.layout.display = "none" if name in hidden else None

    def _layout(self) -> W.Tab:
        w = self.widgets
        rows = {"data": [W.HBox([w["dataset"], self.knob_boxes["dataset"]]),
                         W.HBox([w["partition"], self.knob_boxes["partition"]])],
                "algorithm": [W.HBox([w["algorithm"], w["model"]]), self.algorithm_info, self.knob_boxes["algorithm"],
                              self.knob_boxes["model"]],
                "privacy": [w["dp"]]}
        placed = {"dataset", "partition", "algorithm", "model"}
        by_group: dict[str, list] = {}
        for f in dataclasses.fields(Experiment):
            if f.name in self.fields and f.name not in placed:
                by_group.setdefault(f.metadata["group"], []).append(w[f.name])
            if f.name == "local_steps":
                by_group.setdefault("schedule", []).append(W.HBox([self.work["work"], self.work["work_amount"]]))
        by_group["privacy"] = [c.widget for c in self.privacy_fields.values()]
        for group, widgets in by_group.items():
            rows.setdefault(group, []).append(W.HBox(widgets, layout=W.Layout(flex_flow="row wrap")))
        if dp_available():
            self.dp_info = W.HTML()
            self.dp_info.add_class("fedlab-dp-info")
            rows["privacy"].append(self.dp_info)
        else:
            self.dp_info = W.HTML("<i>Differential privacy needs <code>fedlab.privacy</code>, which this "
                                  "installation does not have.</i>")
            rows["privacy"] = [w["dp"], self.dp_info]
        tabs = W.Tab([W.VBox([row for g in groups for row in rows.get(g, [])]) for _, groups in TABS])
        for i, (title, _) in enumerate(TABS):
            tabs.set_title(i, title)
        return tabs

    # -- registries ------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the registries (a strategy registered since shows up); keeps the selections."""
        for kind, registry in REGISTRIES.items():
            names = registry.names()
            if kind == "dataset":
                names = ([GIVEN] if self.given else []) + [n for n in names if n not in HIDDEN_DATASETS]
            if kind == "partition":
                names = [DEFAULT] + names
            if self.offered.get(kind) is not None:
                names = [n for n in names if n in self.offered[kind]]
            box = self.widgets[kind]
            if list(box.options) != names:
                current = box.value
                preferred = GIVEN if kind == "dataset" and self.given else getattr(Experiment, kind) or DEFAULT
                box.options = names
                box.value = current if current in names else preferred if preferred in names else names[0]
            self._show_knobs(kind)

    def offer(self, kind: str, names: set | None) -> None:
        """Offer only ``names`` of ``kind`` (None: all registered), e.g. only the models that fit
        the data; a selection no longer offered falls back to the default."""
        if names != self.offered.get(kind):
            self.offered[kind] = None if names is None else set(names)
            self.refresh()

    def names(self, kind: str) -> list[str]:
        return list(self.widgets[kind].options)

    @property
    def uses_given(self) -> bool:
        return self.widgets["dataset"].value == GIVEN

    def _entry(self, kind: str):
        name = self.widgets[kind].value
        return None if name in (GIVEN, DEFAULT, None) else REGISTRIES[kind][name]

    def knobs(self, kind: str) -> dict[str, Control]:
        """The option controls of the selected dataset / partition / algorithm / model. Options of
        two algorithms with the same name and default share a widget (client_lr keeps its value)."""
        entry = self._entry(kind)
        out = {}
        for name, default in (settable_knobs(entry) if entry else {}).items():
            key = (kind, name, repr(default)) if kind == "algorithm" else (kind, entry.name, name)
            if key not in self._knobs:
                self._knobs[key] = control = _knob(kind, entry.name, name, default)
                control.widget.observe(self._changed, "value")
            out[name] = self._knobs[key]
        return out

    def _show_knobs(self, kind: str) -> None:
        self.knob_boxes[kind].children = tuple(c.widget for c in self.knobs(kind).values())
        if kind == "algorithm":
            entry = self._entry("algorithm")
            self.algorithm_info.value = f"<small>{html.escape(entry.description)}</small>" if entry else ""

    # -- widgets <-> Experiment ---------------------------------------------------------------
    def experiment(self) -> Experiment:
        """The Experiment the widgets describe (with a given dataset: its data settings stay at
        their defaults, they do not apply). ValueError names a bad setting."""
        values = {name: control.get() for name, control in self.fields.items()}
        values.update(local_steps=self._work_get("local_steps"), local_epochs=self._work_get("local_epochs"),
                      privacy=self.privacy())
        for kind in REGISTRIES:
            values[f"{kind}_options"] = {name: c.get() for name, c in self.knobs(kind).items()}
        if self.uses_given:
            for name in DATA_FIELDS:
                values.pop(name)
        return Experiment(**values)

    def data_experiment(self) -> Experiment:
        """An Experiment of the data settings alone (and the seed), the rest at its defaults: what
        the Data tab draws, valid even while another tab holds an invalid value."""
        if self.uses_given:
            return Experiment(seed=self.fields["seed"].get())
        values = {name: self.fields[name].get() for name in (*DATA_FIELDS, "seed") if name in self.fields}
        for kind in ("dataset", "partition"):
            values[f"{kind}_options"] = {name: c.get() for name, c in self.knobs(kind).items()}
        quality = {name: self.fields[name].get() for name in QUALITY_FIELDS if name in self.fields}
        try:                        # the corruption (Data tab) and the quality threshold, when valid
            return Experiment(**values, **quality)
        except ValueError:
            if quality.get("corrupt"):
                raise               # a bad corruption is the Data tab's own invalid setting
            return Experiment(**values)

    def privacy(self) -> Privacy | None:
        mode = self.dp["dp"].value
        if mode == "off":
            return None
        values = {name: c.get() for name, c in self.privacy_fields.items()}
        values["target_epsilon" if mode == "noise multiplier" else "noise_multiplier"] = None
        return Privacy(**values)

    def show(self, experiment: Experiment) -> None:
        """Set every widget from ``experiment`` (options it leaves out: their defaults)."""
        with self._one_change():
            self._show(experiment)

    def _show(self, experiment: Experiment) -> None:
        for kind in REGISTRIES:
            self._choose(kind, getattr(experiment, kind), getattr(experiment, f"{kind}_options"), everything=True)
        for name, control in self.fields.items():
            if name not in REGISTRIES:
                control.set(getattr(experiment, name))
        self._work_set("local_steps", experiment.local_steps)
        self._work_set("local_epochs", experiment.local_epochs)
        self._set_privacy(experiment.privacy)

    def _choose(self, kind: str, name: str | None, options: dict, everything: bool = False) -> None:
        """Select ``name`` (a registered name; None: the default partition) and set its options
        (``everything``: also reset the ones not given to their defaults)."""
        name = DEFAULT if name is None else name
        if name not in self.widgets[kind].options:
            if self.offered.get(kind) is not None and name in REGISTRIES[kind]:
                self.offered[kind] = None       # asked for by name: offered (the data may change too)
            self.refresh()
        if name not in self.widgets[kind].options:
            raise ValueError(f"{kind}: {name!r} is not offered here; choose one of {self.names(kind)}")
        if name not in (DEFAULT, GIVEN) and kind != "algorithm":
            # option widgets not made yet are made with their values: a slider made with its default and
            # set right after can be set back to the default by the browser as it first draws it
            for option, default in settable_knobs(REGISTRIES[kind][name]).items():
                key = (kind, name, option)
                value = options.get(option, default)
                if key not in self._knobs and option in options and type(value) is type(default):
                    self._knobs[key] = control = _knob(kind, name, option, value)
                    control.widget.observe(self._changed, "value")
        self.widgets[kind].value = name
        entry = self._entry(kind)
        defaults = settable_knobs(entry) if entry else {}
        for option, control in self.knobs(kind).items():
            if option in options or everything:
                control.set(options.get(option, defaults[option]))
        unknown = set(options) - set(defaults)
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]} does not apply to {kind} {name!r} (it takes: "
                             f"{', '.join(defaults) or 'nothing'})")

    def _set_privacy(self, privacy: Privacy | dict | None) -> None:
        if isinstance(privacy, dict):
            privacy = Privacy(**privacy)
        if privacy is None:
            self.dp["dp"].value = "off"
            return
        self.dp["dp"].value = "target epsilon" if privacy.target_epsilon is not None else "noise multiplier"
        for name, control in self.privacy_fields.items():
            if getattr(privacy, name) is not None:
                control.set(getattr(privacy, name))

    def apply(self, settings: dict) -> None:
        """Set widgets from keyword values: Experiment fields (dataset and partition as specs such
        as 'dirichlet:0.3', privacy as a fedlab.Privacy), options of the chosen algorithm or model
        by name (mu=1.0), the Privacy tab by name (dp='noise multiplier', clip=1.0, ...)."""
        with self._one_change():
            self._apply(dict(settings))

    def _apply(self, settings: dict) -> None:
        for kind in REGISTRIES:
            if kind in settings or f"{kind}_options" in settings:
                spec = settings.pop(kind, self.widgets[kind].value)
                name, options = (spec, {}) if spec in (None, DEFAULT, GIVEN) else parse_spec(kind, spec)
                self._choose(kind, name, {**options, **settings.pop(f"{kind}_options", {})},
                             everything=kind in ("dataset", "partition"))
        for name in ("local_steps", "local_epochs", "privacy"):
            if name in settings:
                value = settings.pop(name)
                self._set_privacy(value) if name == "privacy" else self._work_set(name, value)
        knobs = {**self.knobs("model"), **self.knobs("algorithm"), **self.privacy_fields, **self.fields}
        if "dp" in settings:
            Control("dp", self.dp["dp"]).set(settings.pop("dp"))
        for name, value in settings.items():
            if name not in knobs:
                raise ValueError(f"unknown setting {name!r}; settings are {sorted(set(knobs) | {'dp', 'local_steps', 'local_epochs', 'privacy'})}")
            knobs[name].set(value)

    @property
    def disabled(self) -> bool:
        return self.widgets["rounds"].disabled

    @disabled.setter
    def disabled(self, busy: bool) -> None:
        for widget in [*self.widgets.values(), *(c.widget for c in self._knobs.values())]:
            widget.disabled = busy
        if not dp_available():
            self.dp["dp"].disabled = True

    def on_change(self, listener) -> None:
        self._listeners.append(listener)

    @contextlib.contextmanager
    def _one_change(self):
        self._batch += 1
        try:
            yield
        finally:
            self._batch -= 1
            self._changed()

    def _changed(self, _=None) -> None:
        if not self._batch:
            for listener in self._listeners:
                listener()
