"""The workbench: one widget to set up, run, stop and compare federated runs in Jupyter.

    from fedlab.ui import Workbench
    wb = Workbench()          # controls, Run / Stop / Reset, live charts, the table of runs
    wb                        # (last line of a cell) shows it
    history = wb.run(algorithm="fedprox", mu=1.0, partition="dirichlet:0.3")   # blocking, for scripts

Lists of datasets, partitions, algorithms and models come from fedlab's registries, and every
scalar keyword of a factory becomes a control, so a strategy registered in a notebook cell shows
up (with its own options) after that cell runs. Training runs in a background thread; Stop sets a
``threading.Event`` that the round callback turns into ``StopTraining``, so a stopped run keeps
the rounds it finished. Charts redraw at most once per ``redraw_interval`` seconds.
"""
from __future__ import annotations

import atexit
import html
import importlib.util
import inspect
import math
import threading
import time
import traceback
import weakref
from collections import OrderedDict
from typing import Any

import ipywidgets as W
import jax
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

import fedlab
from fedlab.core.registry import ALGORITHMS, DATASETS, MODELS, PARTITIONS
from fedlab.report import EPSILON_PANEL, PALETTE, PANELS, final_metrics, run_traces, write_report


HIDDEN_DATASETS = ("csv", "npz")        # need a path: pass ``data=`` to the Workbench instead
DEFAULT_PARTITION = "default"           # the dataset's natural clients if it has them, else IID
LOG_KNOBS = {"client_lr": (-4, 0), "server_lr": (-3, 1), "lr": (-4, 0)}   # log10 ranges
MAX_POINTS = 400                        # longer histories are thinned before they are sent


def dp_available() -> bool:
    """Whether fedlab.privacy (the ``dp`` wrapper and its accountant) is installed."""
    try:
        return importlib.util.find_spec("fedlab.privacy.accounting") is not None
    except ImportError:                 # pragma: no cover
        return False


def _privacy():
    """(the dp wrapper, the accounting module); imported on first use (dp_accounting is slow to load)."""
    from fedlab.privacy import accounting, dp

    return dp, accounting


# ---- registry -> widgets --------------------------------------------------------------------
def _scalar_knobs(entry) -> dict[str, Any]:
    """The registry entry's knobs whose defaults are scalars (these become controls)."""
    return {k: v for k, v in entry.knobs().items() if isinstance(v, (bool, int, float, str))}


def _spec_knobs(factory) -> list[str]:
    """All keyword-only parameter names in order (the order a 'name:a,b' spec fills them)."""
    return [p.name for p in inspect.signature(factory).parameters.values() if p.kind is p.KEYWORD_ONLY]


def _knob_widget(kind: str, entry: str, name: str, default):
    label = name.replace("_", " ")
    style = {"description_width": "initial"}
    if isinstance(default, bool):
        return W.Checkbox(value=default, description=label, indent=False)
    if isinstance(default, int):
        return W.IntText(value=default, description=label, style=style, layout=W.Layout(width="180px"))
    if isinstance(default, float):
        if kind == "partition" and entry in ("dirichlet", "quantity_dirichlet") and name in ("alpha", "beta"):
            return W.FloatLogSlider(value=default, base=10, min=-2, max=2, step=0.05,
                                    description=f"{name} (heterogeneity)", style=style, readout_format=".3g")
        if name in LOG_KNOBS and default > 0:
            lo, hi = LOG_KNOBS[name]
            return W.FloatLogSlider(value=default, base=10, min=lo, max=hi, step=0.1, description=label,
                                    style=style, readout_format=".3g")
        return W.FloatText(value=default, description=label, style=style, layout=W.Layout(width="180px"))
    return W.Text(value=default, description=label, style=style)


def _bounds(widget) -> tuple[float, float]:
    """The range a widget accepts (a log slider's min/max are exponents)."""
    if isinstance(widget, W.FloatLogSlider):
        return widget.base ** widget.min, widget.base ** widget.max
    if isinstance(widget, (W.BoundedIntText, W.BoundedFloatText, W.IntSlider, W.FloatSlider)):
        return widget.min, widget.max
    return -math.inf, math.inf


def _spec_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def empty_figure(panels) -> go.FigureWidget:
    """A FigureWidget with one subplot per panel, laid out like the HTML report."""
    rows = -(-len(panels) // 2)
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[t for _, t in panels],
                        horizontal_spacing=0.08, vertical_spacing=0.14 if rows > 2 else 0.18)
    fig.update_xaxes(title_text="round")
    fig.update_layout(height=280 * rows + 60, margin=dict(l=50, r=20, t=50, b=40), template="plotly_white",
                      legend=dict(orientation="h", y=-0.12))
    return go.FigureWidget(fig)


class RunError(RuntimeError):
    """A run ended by an exception; the workbench shows the message and keeps it here."""


_exiting = threading.Event()            # set at interpreter exit: the warm-up skips what is left
_warm_ups: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()


@atexit.register                        # registered after jax's own hooks, so it runs before them
def _end_background_threads():
    """A daemon thread still inside JAX (compiling) when the interpreter tears JAX down aborts the
    process ("terminate called ...", exit code 134): end the warm-up and any training (after its
    current round) and wait for them first."""
    _exiting.set()
    for wb in list(Workbench._running):
        wb._stop.set()
    for wb in list(Workbench._running):
        wb.wait()
    for thread in list(_warm_ups):
        thread.join()


# ---- the workbench --------------------------------------------------------------------------
class Workbench:
    """Controls, Run / Stop / Reset, live charts and a comparison table of federated runs.

    data: an optional FederatedDataset of your own (shown as the dataset '(given)');
    redraw_interval: minimum seconds between chart redraws while training (default 0.25);
    compilation_cache: directory for JAX's persistent compilation cache (None: do not set one);
    warm_up: load the data and compile the initial settings' round in the background (needs the
    compilation cache);
    settings: initial values by control name (as :meth:`run` takes them).
    """

    _running: "weakref.WeakSet[Workbench]" = weakref.WeakSet()    # at most one training thread

    def __init__(self, data=None, *, redraw_interval: float = 0.25,
                 compilation_cache: str | None = "~/.cache/fedlab/jax", warm_up: bool = True, **settings):
        if not (isinstance(redraw_interval, (int, float)) and redraw_interval >= 0):
            raise ValueError(f"redraw_interval must be a number of seconds >= 0, got {redraw_interval!r}")
        self.given_data = data
        if compilation_cache and not jax.config.jax_compilation_cache_dir:   # keep a cache already set
            fedlab.enable_compilation_cache(compilation_cache, min_compile_seconds=0.2)
        self.redraw_interval = float(redraw_interval)
        self.runs: "OrderedDict[str, fedlab.History]" = OrderedDict()
        self.last_error: BaseException | None = None
        self.last_traceback = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._data_cache: "OrderedDict[tuple, Any]" = OrderedDict()
        self._knob_widgets: dict[tuple, W.Widget] = {}
        self._panels = PANELS
        self._live: tuple[str, list] | None = None    # (run name, rows so far) during a run
        self._last_draw = 0.0
        self._count = 0                                  # runs started, for run names
        self._build()
        self.refresh()
        if settings:
            self._apply(settings)
        self._update_dp_info()
        self._hook_ipython()
        self._warm: threading.Thread | None = None
        if warm_up and compilation_cache:
            self._warm = threading.Thread(target=self._warm_up, name="fedlab-warm-up", daemon=True)
            _warm_ups.add(self._warm)
            self.progress.value = "<i>warming up (loading data, compiling)...</i>"   # never 'ready' before
            self._warm.start()

    def _warm_up(self):
        """Load the data and compile one round of the current settings into the persistent cache
        while the user reads the controls, so the first Run shows its first point sooner."""
        try:
            s = self.settings()
            data = None if _exiting.is_set() else self._load(s)
            if data is not None and not _exiting.is_set():
                fedlab.simulate(self._strategy(s, data), s["model"], data, rounds=1,
                                clients_per_round=min(s["clients_per_round"], data.num_clients),
                                local_steps=s["local_steps"], local_epochs=s["local_epochs"],
                                batch_size=s["batch_size"], sampling=s["sampling"], stragglers=s["stragglers"],
                                seed=s["seed"], progress=False, model_options=s["model_options"] or None)
        except Exception:               # noqa: BLE001 - a real run reports the same problem
            pass
        finally:
            if not self.running:
                self.progress.value = "<i>ready</i>"

    # -- layout ------------------------------------------------------------------------------
    def _build(self):
        s = {"description_width": "initial"}
        def small():                    # one Layout per widget: a shared one would hide them together
            return W.Layout(width="200px")
        c = self.controls = {}
        c["dataset"] = W.Dropdown(description="dataset", style=s)
        c["partition"] = W.Dropdown(description="partition", style=s)
        c["num_clients"] = W.BoundedIntText(value=30, min=0, max=100000, description="clients (0: dataset's)",
                                            style=s, layout=W.Layout(width="220px"))
        c["stragglers"] = W.FloatSlider(value=0.0, min=0.0, max=0.9, step=0.05, description="stragglers", style=s)
        c["algorithm"] = W.Dropdown(description="algorithm", style=s)
        c["model"] = W.Dropdown(description="model", style=s)
        c["rounds"] = W.BoundedIntText(value=40, min=1, max=100000, description="rounds", style=s, layout=small())
        c["clients_per_round"] = W.BoundedIntText(value=10, min=1, max=100000, description="clients per round",
                                                  style=s, layout=small())
        c["work"] = W.Dropdown(options=["local steps", "local epochs"], value="local steps",
                               description="local work", style=s, layout=W.Layout(width="220px"))
        c["work_amount"] = W.BoundedIntText(value=20, min=1, max=100000, description="", layout=W.Layout(width="80px"))
        c["batch_size"] = W.BoundedIntText(value=10, min=1, max=100000, description="batch size", style=s,
                                           layout=small())
        c["sampling"] = W.Dropdown(options=["fixed", "poisson"], value="fixed", description="sampling", style=s,
                                   layout=small())
        c["seed"] = W.BoundedIntText(value=0, min=0, max=2**31 - 1, description="seed", style=s, layout=small())
        c["eval_every"] = W.BoundedIntText(value=1, min=1, max=100000, description="eval every", style=s,
                                           layout=small())
        c["dp"] = W.ToggleButtons(options=["off", "target epsilon", "noise multiplier"], value="off",
                                  description="DP", style={"button_width": "120px"})
        c["target_epsilon"] = W.FloatText(value=4.0, description="target ε", style=s, layout=small())
        c["delta"] = W.FloatText(value=1e-5, description="δ", style=s, layout=small())
        c["noise_multiplier"] = W.FloatText(value=1.0, description="noise multiplier", style=s, layout=small())
        c["clip"] = W.FloatText(value=1.0, description="clip norm", style=s, layout=small())

        self.dataset_knobs, self.partition_knobs, self.algorithm_knobs, self.model_knobs = (
            W.HBox(), W.HBox(layout=W.Layout(flex_flow="row wrap")), W.HBox(layout=W.Layout(flex_flow="row wrap")),
            W.HBox(layout=W.Layout(flex_flow="row wrap")))
        self.dp_info = W.HTML()
        self.algorithm_info = W.HTML()
        self.run_button = W.Button(description="Run", button_style="success", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.reset_button = W.Button(description="Reset", icon="refresh", tooltip="forget all runs, clear the charts")
        self.progress = W.HTML(value="<i>ready</i>")
        self.message = W.HTML()
        self.figure = empty_figure(self._panels)
        self.figure_box = W.Box([self.figure])
        self.overlay = W.SelectMultiple(description="show runs", rows=4, style=s, layout=W.Layout(width="420px"))
        self.table_html = W.HTML()
        self.export_path = W.Text(value="fedlab-runs", description="export to", style=s)
        self.csv_button = W.Button(description="CSV", icon="download")
        self.html_button = W.Button(description="HTML report", icon="file")
        self.export_message = W.HTML()

        c["dataset"].observe(lambda _: self._show_knobs("dataset"), "value")
        c["partition"].observe(lambda _: self._show_knobs("partition"), "value")
        c["algorithm"].observe(lambda _: self._show_knobs("algorithm"), "value")
        c["model"].observe(lambda _: self._show_knobs("model"), "value")
        for name in ("dp", "target_epsilon", "delta", "noise_multiplier", "rounds", "clients_per_round",
                     "num_clients", "sampling"):
            c[name].observe(lambda _: self._update_dp_info(), "value")
        self.run_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.reset_button.on_click(lambda _: self.reset())
        self.overlay.observe(lambda _: self._redraw_static(), "value")
        self.csv_button.on_click(lambda _: self._export("csv"))
        self.html_button.on_click(lambda _: self._export("html"))

        data_tab = W.VBox([W.HBox([c["dataset"], self.dataset_knobs]), W.HBox([c["partition"], self.partition_knobs]),
                           W.HBox([c["num_clients"], c["stragglers"]])])
        algo_tab = W.VBox([W.HBox([c["algorithm"], c["model"]]), self.algorithm_info, self.algorithm_knobs,
                           self.model_knobs])
        train_tab = W.VBox([W.HBox([c["rounds"], c["clients_per_round"], c["sampling"]]),
                            W.HBox([c["work"], c["work_amount"], c["batch_size"]]),
                            W.HBox([c["seed"], c["eval_every"]])])
        if dp_available():
            dp_tab = W.VBox([c["dp"], W.HBox([c["target_epsilon"], c["delta"]]),
                             W.HBox([c["noise_multiplier"], c["clip"]]), self.dp_info])
        else:
            c["dp"].disabled = True
            dp_tab = W.VBox([c["dp"], W.HTML("<i>Differential privacy needs <code>fedlab.privacy</code>, "
                                             "which this installation does not have.</i>")])
        self.tabs = W.Tab([data_tab, algo_tab, train_tab, dp_tab])
        for i, title in enumerate(["Data", "Algorithm", "Training", "Privacy"]):
            self.tabs.set_title(i, title)
        buttons = W.HBox([self.run_button, self.stop_button, self.reset_button, self.progress],
                         layout=W.Layout(align_items="center"))
        runs_box = W.VBox([W.HTML("<b>Runs</b>"), W.HBox([self.overlay]), self.table_html,
                           W.HBox([self.export_path, self.csv_button, self.html_button]), self.export_message])
        self.widget = W.VBox([self.tabs, buttons, self.message, self.figure_box, runs_box])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- registries --------------------------------------------------------------------------
    def refresh(self):
        """Re-read the registries (a strategy registered since shows up); keeps the selections."""
        lists = {"dataset": [n for n in DATASETS.names() if n not in HIDDEN_DATASETS],
                 "partition": [DEFAULT_PARTITION] + PARTITIONS.names(),
                 "algorithm": ALGORITHMS.names(), "model": MODELS.names()}
        if self.given_data is not None:
            lists["dataset"] = ["(given)"] + lists["dataset"]
        preferred = {"dataset": "(given)" if self.given_data is not None else "synthetic",
                     "partition": DEFAULT_PARTITION, "algorithm": "fedavg", "model": "logreg"}
        for kind, names in lists.items():
            box = self.controls[kind]
            if list(box.options) != names:
                current = box.value
                box.options = names
                box.value = current if current in names else (preferred[kind] if preferred[kind] in names
                                                              else names[0])
            self._show_knobs(kind)

    @property
    def algorithm_names(self) -> list[str]:
        return list(self.controls["algorithm"].options)

    def _hook_ipython(self):
        """Refresh after every notebook cell, so registering a strategy needs no other step."""
        try:
            from IPython import get_ipython
        except ImportError:                     # pragma: no cover
            return
        ip = get_ipython()
        if ip is None:
            return
        me = weakref.ref(self)

        def after_cell(*_):
            wb = me()
            if wb is None:
                ip.events.unregister("post_run_cell", after_cell)
            elif not wb.running:
                wb.refresh()

        ip.events.register("post_run_cell", after_cell)

    def _entry(self, kind):
        name = self.controls[kind].value
        if kind == "dataset" and name == "(given)":
            return None
        if kind == "partition" and name == DEFAULT_PARTITION:
            return None
        return {"dataset": DATASETS, "partition": PARTITIONS, "algorithm": ALGORITHMS, "model": MODELS}[kind][name]

    def _knobs_of(self, kind) -> dict[str, W.Widget]:
        entry = self._entry(kind)
        if entry is None:
            return {}
        out = {}
        for name, default in _scalar_knobs(entry).items():
            # algorithm knobs share widgets by name (client_lr keeps its value across algorithms)
            key = (kind, None if kind == "algorithm" else entry.name, name)
            if key not in self._knob_widgets:
                self._knob_widgets[key] = _knob_widget(kind, entry.name, name, default)
            out[name] = self._knob_widgets[key]
        return out

    def _show_knobs(self, kind):
        box = {"dataset": self.dataset_knobs, "partition": self.partition_knobs,
               "algorithm": self.algorithm_knobs, "model": self.model_knobs}[kind]
        knobs = self._knobs_of(kind)
        box.children = tuple(knobs.values())
        if kind == "algorithm":
            entry = self._entry("algorithm")
            self.algorithm_info.value = f"<small>{html.escape(entry.description)}</small>" if entry else ""

    # -- settings ----------------------------------------------------------------------------
    def _spec(self, kind) -> str | None:
        entry = self._entry(kind)
        if entry is None:
            return None
        knobs, defaults = self._knobs_of(kind), _scalar_knobs(entry)
        values = []
        for name in _spec_knobs(entry.factory):    # a spec fills keyword knobs in order: stop at a gap
            if name not in knobs:
                break
            values.append((knobs[name].value, defaults[name]))
        while values and values[-1][0] == values[-1][1]:
            values.pop()                        # drop trailing defaults: 'dirichlet:0.3', not 'dirichlet:0.3,10'
        values = [_spec_value(v) for v, _ in values]
        return entry.name + (":" + ",".join(values) if values else "")

    def settings(self) -> dict:
        """The current controls as plain values (what a run will use)."""
        c = self.controls
        out = {"dataset": c["dataset"].value if self._entry("dataset") is None else self._spec("dataset"),
               "partition": self._spec("partition"),
               "num_clients": c["num_clients"].value or None, "stragglers": float(c["stragglers"].value),
               "algorithm": c["algorithm"].value, "model": c["model"].value,
               "rounds": c["rounds"].value, "clients_per_round": c["clients_per_round"].value,
               "local_steps": c["work_amount"].value if c["work"].value == "local steps" else None,
               "local_epochs": c["work_amount"].value if c["work"].value == "local epochs" else None,
               "batch_size": c["batch_size"].value, "sampling": c["sampling"].value, "seed": c["seed"].value,
               "eval_every": c["eval_every"].value,
               "algorithm_options": {k: w.value for k, w in self._knobs_of("algorithm").items()},
               "model_options": {k: w.value for k, w in self._knobs_of("model").items()},
               "dp": c["dp"].value}
        if out["dp"] != "off":
            out.update(clip=c["clip"].value, delta=c["delta"].value)
            if out["dp"] == "target epsilon":
                out["target_epsilon"] = c["target_epsilon"].value
            else:
                out["noise_multiplier"] = c["noise_multiplier"].value
        return out

    def _apply(self, overrides: dict):
        """Set controls from keyword values: control names, 'dataset'/'partition' specs such as
        'dirichlet:0.3', 'local_steps'/'local_epochs', algorithm and model options by name."""
        from fedlab.data.partition import parse_spec

        overrides = dict(overrides)
        c = self.controls
        for kind, registry in (("dataset", DATASETS), ("partition", PARTITIONS)):
            if kind not in overrides:
                continue
            spec = overrides.pop(kind)
            if kind == "partition" and spec in (None, DEFAULT_PARTITION):
                c["partition"].value = DEFAULT_PARTITION
                continue
            entry, values = parse_spec(spec, registry, kind, whole_rest=("column", "csv", "npz"))
            if entry.name not in c[kind].options:
                raise ValueError(f"{kind}: {entry.name!r} is not offered here; choose one of {list(c[kind].options)}")
            c[kind].value = entry.name
            knobs = self._knobs_of(kind)
            for name, value in values.items():
                knobs[name].value = value
        for kind in ("algorithm", "model"):
            if kind in overrides:
                name = overrides.pop(kind)
                if name not in c[kind].options:
                    self.refresh()
                if name not in c[kind].options:
                    raise ValueError(f"{kind}: unknown {kind} {name!r}; choose one of {list(c[kind].options)}")
                c[kind].value = name
        for work in ("local_steps", "local_epochs"):
            if overrides.get(work) is not None:
                c["work"].value = work.replace("_", " ")
                c["work_amount"].value = overrides.pop(work)
            overrides.pop(work, None)
        if "num_clients" in overrides:
            c["num_clients"].value = overrides.pop("num_clients") or 0
        if "dp" in overrides:
            c["dp"].value = overrides.pop("dp")
        knobs = {**self._knobs_of("model"), **self._knobs_of("algorithm")}
        for name, value in overrides.items():
            widget = c.get(name) if name not in ("work", "work_amount", "dataset", "partition") else None
            widget = widget or knobs.get(name)
            if widget is None:
                raise ValueError(f"unknown setting {name!r}; settings are {sorted(set(c) | set(knobs))}")
            low, high = _bounds(widget)
            if isinstance(value, (int, float)) and not low <= value <= high:
                raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")
            widget.value = value

    # -- differential privacy -----------------------------------------------------------------
    def _dp_numbers(self, s: dict, num_clients: int) -> tuple[float, float]:
        """(noise multiplier, epsilon the whole run spends) for settings ``s``."""
        _, accounting = _privacy()
        q = s["clients_per_round"] / num_clients
        kw = dict(sampling=s["sampling"], num_clients=num_clients)
        if s["dp"] == "target epsilon":
            z = accounting.calibrate(s["target_epsilon"], s["delta"], s["rounds"], q, **kw)
        else:
            z = s["noise_multiplier"]
        return z, accounting.epsilon(z, q, s["rounds"], s["delta"], **kw)

    def _known_clients(self, s: dict) -> int | None:
        for key, data in self._data_cache.items():
            if key[:3] == (s["dataset"], s["partition"], s["num_clients"]):
                return data.num_clients
        if self.given_data is not None and s["dataset"] == "(given)":
            return self.given_data.num_clients
        return s["num_clients"]

    def _update_dp_info(self):
        if not dp_available():
            return
        mode, c = self.controls["dp"].value, self.controls
        for name, shown in (("target_epsilon", mode == "target epsilon"), ("noise_multiplier", mode == "noise multiplier"),
                            ("delta", mode != "off"), ("clip", mode != "off")):
            c[name].layout.display = None if shown else "none"
        s = self.settings()
        if s["dp"] == "off":
            self.dp_info.value = "<i>no privacy guarantee</i>"
            return
        k = self._known_clients(s)
        if not k:
            self.dp_info.value = "<i>set the number of clients to see the privacy this run spends</i>"
            return
        try:
            if s["clients_per_round"] > k:
                raise ValueError(f"clients per round must be <= clients ({k})")
            z, eps = self._dp_numbers(s, k)
            self.dp_info.value = (f"This run will spend <b>ε = {eps:.3g}</b> at δ = {s['delta']:g} over "
                                  f"{s['rounds']} rounds (noise multiplier {z:.3g}, {s['clients_per_round']} "
                                  f"of {k} clients a round, {s['sampling']} sampling).")
        except ValueError as err:
            self.dp_info.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"

    # -- running -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _set_busy(self, busy: bool):
        for w in [*self.controls.values(), *self._knob_widgets.values(), self.run_button, self.reset_button,
                  self.overlay, self.csv_button, self.html_button]:
            w.disabled = busy
        if not dp_available():
            self.controls["dp"].disabled = True
        self.stop_button.disabled = not busy

    def start(self) -> bool:
        """Start a run in a background thread with the current controls (what Run does).
        Returns False (and shows why) if nothing started."""
        if self.running:
            return False
        for other in list(Workbench._running):  # one training thread per kernel: end the older one
            if other is not self and other.running:
                other.stop()
                other.wait()
        self.refresh()
        self.message.value = ""
        self.last_error, self.last_traceback = None, ""
        try:
            s = self.settings()
            self._check(s)
        except ValueError as err:
            self._show_error(err)
            return False
        self._stop.clear()
        name = self._run_name(s)
        self._live = (name, [])
        self._last_draw = 0.0
        panels = PANELS + ((EPSILON_PANEL,) if s["dp"] != "off" or self._overlaid_has_epsilon() else ())
        self._set_figure(panels)
        self._redraw()
        self.progress.value = "<i>loading data and compiling...</i>"
        self._set_busy(True)
        Workbench._running.add(self)
        self._thread = threading.Thread(target=self._work, args=(s, name), name="fedlab-workbench", daemon=True)
        self._thread.start()
        return True

    def stop(self):
        """Ask the running training to end after the current round (what Stop does)."""
        self._stop.set()
        if self.running:
            self.progress.value += " <i>stopping...</i>"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run ends; True if none is running any more."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def run(self, **settings) -> "fedlab.History":
        """Set the given controls, run to the end (blocking) and return the History.

        Takes control names (rounds=20, clients_per_round=10, local_steps=20, seed=1, dp='noise
        multiplier', clip=1.0, ...), specs (dataset='synthetic:0.5,0.5', partition='dirichlet:0.3')
        and algorithm/model options by name (mu=1.0, client_lr=0.05). Raises RunError on failure
        (the message is also shown in the widget); bad settings raise their ValueError.
        """
        if self.running:
            raise RuntimeError("a run is in progress; stop it or wait() first")
        try:
            self._apply(settings)
        except ValueError as err:
            self._show_error(err)
            raise
        if self.start():
            self.wait()
        if isinstance(self.last_error, ValueError):     # bad settings: the message names the setting
            raise self.last_error
        if self.last_error is not None:
            raise RunError(f"{type(self.last_error).__name__}: {self.last_error}") from self.last_error
        return next(reversed(self.runs.values()))

    def _check(self, s: dict):
        """Checks the controls cannot express; the engine validates the rest in the thread."""
        if s["dp"] != "off":
            if s["clip"] <= 0:
                raise ValueError(f"clip norm must be > 0, got {s['clip']}")
            if not 0 < s["delta"] < 1:
                raise ValueError(f"δ (delta) must be in (0, 1), got {s['delta']}")
            if s["dp"] == "target epsilon" and not s["target_epsilon"] > 0:
                raise ValueError(f"target ε must be > 0, got {s['target_epsilon']}")
            if s["dp"] == "noise multiplier" and not s["noise_multiplier"] >= 0:
                raise ValueError(f"noise multiplier must be >= 0, got {s['noise_multiplier']}")

    def _run_name(self, s: dict) -> str:
        opts = {k: v for k, v in s["algorithm_options"].items()
                if v != _scalar_knobs(ALGORITHMS[s["algorithm"]]).get(k)}
        label = s["algorithm"] + "".join(f" {k}={v:g}" if isinstance(v, float) else f" {k}={v}"
                                          for k, v in opts.items())
        if s["dp"] != "off":
            label += " +DP"
        part = s["partition"] or "natural/iid"
        self._count += 1
        return f"#{self._count} {label} · {part}"

    def _load(self, s: dict):
        if s["dataset"] == "(given)":
            return self.given_data
        key = (s["dataset"], s["partition"], s["num_clients"], s["seed"])
        if key not in self._data_cache:
            self._data_cache[key] = fedlab.data.load_federated(s["dataset"], partition=s["partition"],
                                                               num_clients=s["num_clients"], seed=s["seed"])
            while len(self._data_cache) > 4:
                self._data_cache.popitem(last=False)
        return self._data_cache[key]

    def _strategy(self, s: dict, data):
        strategy = ALGORITHMS[s["algorithm"]].factory(**s["algorithm_options"])
        if s["dp"] == "off":
            return strategy
        dp_kw = dict(clip=s["clip"], clients_per_round=s["clients_per_round"], num_clients=data.num_clients,
                     sampling=s["sampling"], delta=s["delta"], rounds=s["rounds"])
        if s["dp"] == "target epsilon":
            dp_kw["target_epsilon"] = s["target_epsilon"]
        else:
            dp_kw["noise_multiplier"] = s["noise_multiplier"]
        return _privacy()[0](strategy, **dp_kw)

    def _work(self, s: dict, name: str):
        final = None                    # the last row's status, shown after the last redraw
        try:
            if self._warm is not None:
                self._warm.join()
            data = self._load(s)
            if self._stop.is_set():
                self.progress.value = "<i>stopped before the first round</i>"
                return
            if s["clients_per_round"] > data.num_clients:
                raise ValueError(f"clients per round must be at most the number of clients "
                                 f"({data.num_clients}), got {s['clients_per_round']}")
            strategy = self._strategy(s, data)
            self._t_start = time.perf_counter()
            history = fedlab.simulate(strategy, s["model"], data, rounds=s["rounds"],
                                      clients_per_round=s["clients_per_round"], local_steps=s["local_steps"],
                                      local_epochs=s["local_epochs"], batch_size=s["batch_size"],
                                      sampling=s["sampling"], stragglers=s["stragglers"], seed=s["seed"],
                                      eval_every=s["eval_every"], callbacks=[self._on_round], progress=False,
                                      model_options=s["model_options"] or None)
            history.settings.update(dataset=data.name, partition=s["partition"] or "natural/iid",
                                    **{k: v for k, v in s["algorithm_options"].items()},
                                    **{k: s[k] for k in ("dp", "clip", "delta", "target_epsilon",
                                                         "noise_multiplier") if k in s})
            if s["dp"] != "off" and "noise_multiplier" in history:
                history.settings["noise_multiplier"] = float(history["noise_multiplier"].iloc[-1])
            self.runs[name] = history
            self._live = (name, history.to_dict("records"))
            final = (history.to_dict("records")[-1], s["rounds"], history.stopped)
        except Exception as err:       # noqa: BLE001 - every failure is shown in the UI
            self.last_error, self.last_traceback = err, traceback.format_exc()
            self._show_error(err)
            self.progress.value = "<i>failed</i>"
        finally:
            self._live = None
            Workbench._running.discard(self)
            try:
                self._after_run()
            finally:
                if final is not None:   # 'done' / 'stopped' only once the chart shows the last round
                    self._progress(final[0], final[1], final=True, stopped=final[2])
                self._set_busy(False)

    def _after_run(self):
        names, shown = list(self.runs), self.overlay.value
        self.overlay.options = names                  # (this clears the selection)
        if names:
            self.overlay.value = tuple(n for n in dict.fromkeys([*shown, names[-1]]) if n in names)[-len(PALETTE):]
        self._redraw_static(force=True)
        self._update_table()

    def _on_round(self, event):
        """Round callback (in the training thread): collect, redraw if due, honour Stop."""
        name, rows = self._live
        rows.append(event.metrics)
        now = time.perf_counter()
        if now - self._last_draw >= self.redraw_interval:
            self._last_draw = now
            self._redraw()
            self._progress(event.metrics, event.rounds)
        if self._stop.is_set():
            raise fedlab.StopTraining

    def _progress(self, row: dict, rounds: int, final: bool = False, stopped: bool = False):
        r = int(row["round"])
        per_round = row["elapsed"] / max(r, 1)
        acc = row.get("test_accuracy")
        acc_text = f" · accuracy {acc:.3f}" if acc is not None and not math.isnan(acc) else ""
        if final:
            state = "stopped" if stopped else "done"
            self.progress.value = (f"<b>{state}</b>: round {r} of {rounds} · {row['elapsed']:.1f} s "
                                   f"({per_round:.2f} s/round){acc_text}")
        else:
            eta = per_round * (rounds - r)
            self.progress.value = (f"round <b>{r}</b> of {rounds} · {per_round:.2f} s/round · "
                                   f"ETA {eta:.0f} s{acc_text}")

    def _show_error(self, err: BaseException):
        self.last_error = err
        text = str(err).strip() or type(err).__name__
        first = text.splitlines()[0]
        kind = "Invalid setting" if isinstance(err, ValueError) else type(err).__name__
        hint = "" if isinstance(err, ValueError) else " <small>(full traceback: <code>wb.last_traceback</code>)</small>"
        self.message.value = (f"<div style='color:#a00;background:#fee;padding:4px 8px;border-radius:4px'>"
                              f"<b>{html.escape(kind)}</b>: {html.escape(first)}{hint}</div>")

    # -- charts --------------------------------------------------------------------------------
    def _overlaid_has_epsilon(self) -> bool:
        return any("epsilon" in self.runs[n] for n in self.overlay.value if n in self.runs)

    def _set_figure(self, panels):
        if tuple(panels) != tuple(self._panels):
            self._panels = tuple(panels)
            self.figure = empty_figure(self._panels)
            self.figure_box.children = (self.figure,)

    def _traces(self) -> list[dict]:
        traces = []
        if self._live is not None:
            name, rows = self._live
            traces += run_traces(pd.DataFrame(rows), name, PALETTE[len(self.runs) % len(PALETTE)], self._panels,
                                 MAX_POINTS)
        for name in self.overlay.value:
            if name in self.runs and (self._live is None or name != self._live[0]):
                color = PALETTE[list(self.runs).index(name) % len(PALETTE)]
                traces += run_traces(self.runs[name], name, color, self._panels, MAX_POINTS)
        return traces

    def _redraw(self):
        """Push the current traces to the figure: in place when the set of traces is unchanged."""
        traces = self._traces()
        fig = self.figure
        same = len(fig.data) == len(traces) and all(
            t.name == n["name"] and t.xaxis == n["xaxis"] and (t.fill or None) == n.get("fill")
            for t, n in zip(fig.data, traces))
        if same:
            live = self._live[0] if self._live is not None else None
            with fig.batch_update():
                for t, n in zip(fig.data, traces):
                    if live is None or t.name == live:      # finished runs do not change: not resent
                        t.x, t.y = n["x"], n["y"]
        else:
            with fig.batch_update():
                fig.data = ()
                fig.add_traces([go.Scatter(**{k: v for k, v in n.items() if k != "type"}) for n in traces])

    def _redraw_static(self, force: bool = False):
        """Redraw the selected finished runs (skipped while training unless forced)."""
        if self.running and not force:
            return
        panels = PANELS + ((EPSILON_PANEL,) if self._overlaid_has_epsilon() else ())
        self._set_figure(panels)
        self._redraw()

    # -- comparison --------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """One row per kept run: its settings and final metrics."""
        rows = {}
        keys = ("algorithm", "dataset", "partition", "model", "rounds", "clients", "clients_per_round",
                "local_steps", "local_epochs", "batch_size", "stragglers", "seed")
        for name, h in self.runs.items():
            s = h.settings
            row = {k: s.get(k) for k in keys}
            row.update({k: v for k, v in s.items() if k not in keys and k not in ("chunk_size", "eval_every",
                                                                                  "sampling")})
            row.update(final_metrics(h), stopped=h.stopped)
            rows[name] = row
        return pd.DataFrame.from_dict(rows, orient="index")

    def _update_table(self):
        t = self.table()
        if t.empty:
            self.table_html.value = "<i>no runs yet</i>"
            return
        show = [c for c in ("algorithm", "partition", "rounds_done", "test_accuracy", "client_acc_std",
                            "train_loss", "MB_sent", "train_seconds", "epsilon", "stopped") if c in t]
        self.table_html.value = t[show].to_html(float_format=lambda v: f"{v:.4g}", na_rep="")

    def _export(self, what: str):
        try:
            path = self.export_csv() if what == "csv" else self.export_html()
            self.export_message.value = f"saved <code>{html.escape(path)}</code>"
        except Exception as err:       # noqa: BLE001
            self.export_message.value = f"<span style='color:#a00'>{html.escape(str(err))}</span>"

    def export_csv(self, path: str | None = None) -> str:
        """Write the runs table (settings + final metrics) as CSV; returns the path."""
        if not self.runs:
            raise ValueError("no runs to export yet")
        path = path or self.export_path.value + ".csv"
        self.table().to_csv(path)
        return path

    def export_html(self, path: str | None = None) -> str:
        """Write a self-contained HTML report of the runs shown (all if none is selected)."""
        if not self.runs:
            raise ValueError("no runs to export yet")
        path = path or self.export_path.value + ".html"
        names = [n for n in self.overlay.value if n in self.runs] or list(self.runs)
        write_report({n: self.runs[n] for n in names}, path, title="fedlab workbench runs")
        return path

    def reset(self):
        """Forget all runs and clear the charts, the table and messages (settings stay)."""
        if self.running:
            return
        self.runs.clear()
        self.overlay.options = []
        self._set_figure(PANELS)
        self._redraw()
        self.table_html.value = "<i>no runs yet</i>"
        self.progress.value = "<i>ready</i>"
        self.message.value = self.export_message.value = ""
        self.last_error, self.last_traceback = None, ""
