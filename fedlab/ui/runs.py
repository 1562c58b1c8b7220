"""The kept runs: their names, the comparison table, the exports, and each run as code.

Every kept run is a ``fedlab.History`` whose ``settings`` are its ``Experiment.to_dict()``, so
its name, its row of the table, its Python code and its command line all come from that one
value (``Experiment.from_dict(history.settings)``).
"""
from __future__ import annotations

import base64
import datetime
import html
import math
import os
import re
from collections import OrderedDict
from typing import Callable

import ipywidgets as W
import pandas as pd

from fedlab.core.experiment import Experiment, settable_knobs
from fedlab.core.registry import ALGORITHMS
from fedlab.report import color, final_metrics, write_report

CONTROLS = "the controls (next run)"    # the code view's entry for the current settings
# the runs table: what tells runs apart, then how they ended
IDENTITY = ("dataset", "partition", "model", "algorithm", "options", "clients", "per round", "local work",
            "batch", "stragglers", "rounds", "seed", "privacy")
RESULTS = ("status", "rounds_done", "test_accuracy", "client_acc_std", "train_loss", "MB_sent", "train_seconds",
           "epsilon")
MAX_SHOWN = 12                          # runs drawn at once (the chart stays readable)


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def identity(experiment: Experiment, data_name: str | None = None) -> dict:
    """What tells a run apart, as short texts: dataset, partition, model, algorithm and its options,
    clients, clients per round, local work, batch, stragglers, rounds, seed, privacy (ε or z)."""
    e, p = experiment, experiment.privacy
    model = e.model + "".join(f" {k}={_text(v)}" for k, v in e.model_options.items())
    return {"dataset": f"{data_name} (given)" if data_name else e.dataset_spec,
            "partition": "" if data_name else e.partition_spec or "default",
            "model": model, "algorithm": e.algorithm,
            "options": " ".join(f"{k}={_text(v)}" for k, v in e.algorithm_options.items()),
            "clients": "" if data_name else _text(e.num_clients or "default"),
            "per round": _text(e.clients_per_round or "default"),
            "local work": (f"{e.local_steps} steps" if e.local_steps else
                           f"{e.local_epochs or 1} epoch{'s' * ((e.local_epochs or 1) > 1)}"),
            "batch": _text(e.batch_size), "stragglers": _text(e.stragglers), "rounds": _text(e.rounds),
            "seed": _text(e.seed),
            "privacy": "off" if p is None else (f"ε={_text(p.target_epsilon)}" if p.target_epsilon is not None
                                                else f"z={_text(p.noise_multiplier)}")}


LABEL = {"clients": "clients={}", "per round": "m={}", "batch": "batch={}", "stragglers": "stragglers={}",
         "rounds": "rounds={}", "seed": "seed={}", "model": "{}", "local work": "{}", "dataset": "{}",
         "partition": "{}", "privacy": "DP {}"}


def describe(experiment: Experiment, data_name: str | None, others: list[dict]) -> str:
    """The run's label: its algorithm (and options), then each setting that differs from the other
    runs ``others`` (their ``identity``): 'fedprox mu=0.5 · dirichlet:0.1 · seed=1'. Alone: the
    algorithm and the data."""
    me = identity(experiment, data_name)
    parts = [" ".join(x for x in (me["algorithm"], me["options"]) if x)]
    if not others:
        keys = ["dataset", "partition"] + (["privacy"] if me["privacy"] != "off" else [])
    else:
        keys = [k for k in IDENTITY if k not in ("algorithm", "options")
                and any(o.get(k) != me[k] for o in others)]
    parts += [LABEL[k].format(me[k]) for k in keys if me[k] != ""]
    return " · ".join(parts)


def run_identity(history, data_name: str | None = None) -> dict:
    """``identity`` of a kept run; a pooled baseline's algorithm is "pooled (centralized)"."""
    me = identity(experiment_of(history), data_name)
    if history.attrs.get("baseline") == "pooled":
        me.update(algorithm="pooled (centralized)", options="", privacy="off")
    return me


def run_number(name: str) -> int:
    match = re.match(r"#(\d+)", name)
    return int(match.group(1)) if match else 0


def experiment_of(history) -> Experiment:
    return Experiment.from_dict(history.settings)


def run_label(experiment: Experiment, data_name: str | None = None) -> str:
    """'fedprox mu=0.5 +DP · synthetic/dirichlet:0.3' (options at their defaults left out)."""
    options = "".join(f" {k}={v:g}" if isinstance(v, float) else f" {k}={v}"
                      for k, v in experiment.algorithm_options.items())
    data = data_name or experiment.dataset_spec + (f"/{experiment.partition_spec}" if experiment.partition else "")
    return f"{experiment.algorithm}{options}{' +DP' if experiment.privacy else ''} · {data}"


def settings_row(experiment: Experiment, data_name: str | None = None) -> dict:
    """One flat row of a run's settings: the algorithm's options with their defaults filled in,
    privacy as dp_* columns; with data given in code, its name as the dataset."""
    s = experiment.to_dict()
    row = {"algorithm": experiment.algorithm,
           "dataset": f"{data_name} (given)" if data_name else experiment.dataset_spec,
           "partition": None if data_name else experiment.partition_spec, "model": experiment.model}
    if experiment.algorithm in ALGORITHMS:
        row.update(settable_knobs(ALGORITHMS[experiment.algorithm]))
    row.update(experiment.algorithm_options)
    row.update({f"model_{k}": v for k, v in experiment.model_options.items()})
    skip = {"dataset", "dataset_options", "partition", "partition_options", "model", "model_options",
            "algorithm", "algorithm_options", "privacy", *(("num_clients", "test_fraction") if data_name else ())}
    row.update({k: v for k, v in s.items() if k not in skip})
    row.update({f"dp_{k}": v for k, v in (s["privacy"] or {}).items()})
    return row


def code_of(experiment: Experiment, data_name: str | None = None, baseline: str | None = None) -> tuple[str, str]:
    """(Python code, command line) that run ``experiment`` again (``baseline="pooled"``: its
    centralized baseline, ``fedlab.transfer.pooled``, which has no command line)."""
    code, command = experiment.to_code(), experiment.to_command()
    end = "history = experiment.run()"
    if data_name:
        fix = "history = experiment.run(data=data)    # data: the FederatedDataset given to the Workbench"
        code = code[:-len(end)] + fix if code.endswith(end) else code
        command = (f"# no command line: this run trains on {data_name}, a dataset given in Python "
                   "(a file of it runs as --dataset csv:PATH or npz:PATH)")
    if baseline == "pooled" and code.startswith("import fedlab"):
        data = ", data" if data_name else ""
        code = (code[:code.rindex("history = ")] + f"pooled = fedlab.transfer.pooled(experiment{data})    "
                "# the centralized baseline: final test_accuracy, client_acc_*"
                + ("    # data: the FederatedDataset given to the Workbench" if data_name else ""))
        command = "# no command line: the pooled baseline is fedlab.transfer.pooled(experiment) in Python"
    return code, command


def progress_text(event, rounds_now: int, first_seconds: float | None = None) -> str:
    """'round 12 of 40 · first round 3.1 s (compiling) · 0.05 s/round (20 rounds/s) · ETA 1 s ·
    accuracy 0.812' while training. first_seconds: the first round's time (with the compile):
    the rate and the ETA are those of the rounds after it."""
    if first_seconds is None or rounds_now < 2:
        per_round = event.elapsed / max(rounds_now, 1)
        timing = f"{per_round:.2f} s/round (compiling included)"
    else:
        per_round = max(event.elapsed - first_seconds, 1e-9) / (rounds_now - 1)
        timing = (f"first round {first_seconds:.1f} s (compiling) · {_rate(per_round)}")
    return (f"round <b>{event.round}</b> of {event.rounds} · {timing} · "
            f"ETA {_duration(per_round * (event.rounds - event.round))}{_accuracy(event.metrics)}")


def _rate(per_round: float) -> str:
    return f"{per_round:.3g} s/round ({1 / per_round:.3g} rounds/s)"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def outcome(history) -> str:
    """How a run ended: 'done: round 40 of 40 ...', 'stopped: round 7 of 40 ...', 'diverged at
    round 9 (non-finite training loss) · 8 rounds kept', 'failed: round 3: ...'."""
    status, asked = history.status, history.settings["rounds"]
    if status in ("completed", "stopped") and len(history):
        last = history.iloc[-1]
        r = int(last["round"])
        rate = ""
        if len(history) > 1 and "seconds" in history:
            rate = f", then {_rate(max(float(history['seconds'].iloc[1:].mean()), 1e-9))}"
        first = float(history["seconds"].iloc[0]) if "seconds" in history else float("nan")
        return (f"<b>{'done' if status == 'completed' else 'stopped'}</b>: round {r} of {asked} · "
                f"{last['elapsed']:.1f} s (first round {first:.2f} s{rate}){_accuracy(last)}")
    message = history.message
    text = message[len(status):] if message.startswith(status) else f": {message}"
    return f"<b>{status}</b>{html.escape(text)} · {len(history)} round{'s' * (len(history) != 1)} kept"


def _accuracy(row) -> str:
    acc = row.get("test_accuracy")
    return f" · accuracy {acc:.3f}" if acc is not None and not math.isnan(acc) else ""


def can_continue(history, rounds: int | None = None) -> bool:
    """Whether the run can go on to ``rounds`` (default: the rounds it asked for): it stopped, or
    completed and is given more rounds."""
    rounds = history.settings["rounds"] if rounds is None else rounds
    return history.status in ("stopped", "completed") and history.state.round < rounds


def _stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def download_link(payload: bytes, filename: str, mime: str, text: str) -> str:
    """An <a download> link with the file in a data: URL: clicking it is a real browser download
    (JupyterLab and Voila alike), nothing is written on the server."""
    url = f"data:{mime};base64,{base64.b64encode(payload).decode()}"
    return (f"<a class='fedlab-download' download='{html.escape(filename)}' href='{url}' "
            f"style='text-decoration:underline;color:#1f5fbf'>⬇ {html.escape(filename)}</a> "
            f"<small>{text}</small>")


def _free_path(path: str, overwrite: bool) -> str:
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; give another path, or overwrite=True to replace it")
    return path


class RunList:
    """``runs`` (name -> History), the overlay selection, the table (sorted by a column), rename and
    delete, the exports (browser downloads) and the code view. ``current()`` gives (the controls'
    Experiment or the error they raise, given data name)."""

    def __init__(self, current: Callable[[], tuple]):
        self.current = current
        self.runs: "OrderedDict[str, pd.DataFrame]" = OrderedDict()
        self.given: dict[str, str] = {}           # run name -> name of the data given in code
        self.colors: dict[str, str] = {}          # run name -> its colour, for good
        self.extra: dict[str, object] = {}        # run name -> what the workbench keeps with it (clients)
        self._colors_used = 0
        self.picked: set[str] = set()             # runs the user selected in the overlay
        self._by_code = False                     # the overlay is being set by code, not by the user
        self._next_color: str | None = None       # the colour of the run in progress
        style = {"description_width": "initial"}
        self.overlay = W.SelectMultiple(description="show runs", rows=5, style=style, layout=W.Layout(width="560px"),
                                        tooltip="the runs drawn in the charts (ctrl/shift-click for several)")
        self.table_html = W.HTML("<i>no runs yet</i>")
        self.sort_by = W.Dropdown(options=["run", *IDENTITY, *RESULTS], value="run", description="sort by",
                                  style=style, layout=W.Layout(width="220px"), tooltip="order the table by a column")
        self.descending = W.Checkbox(value=False, description="descending", indent=False,
                                     layout=W.Layout(width="110px"))
        self.csv_link = W.HTML()
        self.html_button = W.Button(description="HTML report", icon="file",
                                    tooltip="make a self-contained HTML report (charts + settings) of the runs shown, "
                                            "to download")
        self.html_link = W.HTML()
        self.export_message = W.HTML()
        self.chosen = W.Dropdown(options=[CONTROLS], value=CONTROLS, description="run:", style=style,
                                 layout=W.Layout(width="560px"),
                                 tooltip="the run to show as code, load, continue, rename or delete")
        self.load_button = W.Button(description="Load settings", icon="upload",
                                    tooltip="set the controls to this run's settings")
        self.new_label = W.Text(placeholder="new name", layout=W.Layout(width="220px"),
                                tooltip="a new name for the chosen run (its number stays)")
        self.rename_button = W.Button(description="Rename", icon="pencil", tooltip="give the chosen run this name")
        self.delete_button = W.Button(description="Delete", icon="trash", tooltip="forget the chosen run")
        self.code = W.Textarea(rows=5, layout=W.Layout(width="100%"))
        self.command = W.Textarea(rows=2, layout=W.Layout(width="100%"))
        self.html_button.on_click(lambda _: self._export_html_link())
        self.chosen.observe(lambda _: self.show_code(), "value")
        self.overlay.observe(self._overlay_changed, "value")
        self.sort_by.observe(lambda _: self.show_table(), "value")
        self.descending.observe(lambda _: self.show_table(), "value")
        self.rename_button.on_click(lambda _: self._rename_clicked())
        self.delete_button.on_click(lambda _: self._delete_clicked())
        self.widget = W.VBox([
            W.HTML("<b>Runs</b>"), self.overlay, W.HBox([self.sort_by, self.descending]), self.table_html,
            W.HBox([W.HTML("download:"), self.csv_link], layout=W.Layout(align_items="center")),
            W.HBox([self.html_button, self.html_link], layout=W.Layout(align_items="center")), self.export_message,
            W.HBox([self.chosen, self.load_button]),
            W.HBox([self.new_label, self.rename_button, self.delete_button]),
            W.HTML("<small>Python</small>"), self.code,
            W.HTML("<small>command line</small>"), self.command])
        self._update_buttons()
        self.show_downloads()

    # -- names and colours ------------------------------------------------------------------------
    def new_name(self, experiment: Experiment, data_name: str | None, label: str | None = None) -> str:
        """'#3 fedprox mu=0.5 · dirichlet:0.1': the next number (a run that failed gave its number
        back) and what differs from the kept runs; ``label`` in place of the algorithm and its
        options ('#4 islands (local) · seed=1')."""
        number = max((run_number(n) for n in self.runs), default=0) + 1
        others = [run_identity(h, self.given.get(n)) for n, h in self.runs.items()]
        text = describe(experiment, data_name, others)
        if label is not None:
            text = " · ".join([label, *text.split(" · ")[1:]])
        return f"#{number} {text}"

    def color(self, name: str) -> str:
        """The run's colour: its own for good (a new run: the next one, never one in use)."""
        if name in self.colors:
            return self.colors[name]
        if self._next_color is None:
            self._next_color = color(self._colors_used)
            self._colors_used += 1
        return self._next_color

    def shown(self) -> dict:
        """{name: (history, colour)} of the runs selected for the chart."""
        return {n: (self.runs[n], self.color(n)) for n in self.overlay.value if n in self.runs}

    # -- keeping runs -----------------------------------------------------------------------------
    def keep(self, name: str, history, data_name: str | None, extra=None) -> None:
        """Add the run (or replace it, when it was continued), show it and choose it."""
        if name not in self.colors:
            self.colors[name] = self.color(name)
            self._next_color = None
        self.runs[name] = history
        if data_name:
            self.given[name] = data_name
        if extra is not None:
            self.extra[name] = extra
        self._update_lists(show=name, choose=name)

    def _overlay_changed(self, change) -> None:
        if not self._by_code:
            self.picked = set(change.new)

    def _update_lists(self, show: str | None = None, choose: str | None = None, renamed: dict | None = None) -> None:
        """Refresh the overlay, the run chooser, the table and the downloads. The overlay shows the
        runs the user picked and the run just kept (``show``), not every run ever made."""
        renamed = renamed or {}
        names = list(self.runs)
        self.picked = {renamed.get(n, n) for n in self.picked if renamed.get(n, n) in names}
        shown = [renamed.get(n, n) for n in self.overlay.value]
        if show is not None:
            shown = [n for n in shown if n in self.picked]       # a run shown only as the last one made
        chosen = renamed.get(self.chosen.value, self.chosen.value)
        self._by_code = True
        try:
            self.overlay.options = names                  # (this clears the selection)
            self.overlay.value = tuple(n for n in dict.fromkeys([*shown, *([show] if show else [])])
                                       if n in names)[-MAX_SHOWN:]
        finally:
            self._by_code = False
        self.chosen.options = [*names, CONTROLS]
        self.chosen.value = choose or (chosen if chosen in names else CONTROLS)
        self.show_code()                                  # (the same name chosen again: not observed)
        self.show_table()
        self.show_downloads()

    @property
    def chosen_run(self) -> str | None:
        """The run chosen in the code view, else the last run (None: no runs)."""
        if self.chosen.value in self.runs:
            return self.chosen.value
        return next(reversed(self.runs), None)

    def rename(self, name: str, label: str) -> str:
        """Give run ``name`` the label ``label`` (its number stays: '#3 label'); returns the new name."""
        label = label.strip()
        if name not in self.runs:
            raise ValueError(f"no run {name!r}; the runs are {list(self.runs)}")
        if not label:
            raise ValueError("a run's new name must not be empty")
        new = f"#{run_number(name)} {label}" if not label.startswith("#") else label
        if new in self.runs and new != name:
            raise ValueError(f"a run is already called {new!r}")
        items = [(new if n == name else n, h) for n, h in self.runs.items()]
        self.runs.clear()                       # in place: the workbench holds this dict
        self.runs.update(items)
        for table in (self.given, self.colors, self.extra):
            if name in table:
                table[new] = table.pop(name)
        self._update_lists(renamed={name: new})
        return new

    def delete(self, name: str) -> None:
        """Forget run ``name``."""
        if name not in self.runs:
            raise ValueError(f"no run {name!r}; the runs are {list(self.runs)}")
        del self.runs[name]
        for table in (self.given, self.colors, self.extra):
            table.pop(name, None)
        self._update_lists()

    def _rename_clicked(self) -> None:
        try:
            self.rename(self.chosen.value, self.new_label.value)
            self.new_label.value = ""
            self.export_message.value = ""
        except ValueError as err:
            self.export_message.value = f"<span style='color:#a00'>{html.escape(str(err))}</span>"

    def _delete_clicked(self) -> None:
        if self.chosen.value in self.runs:
            self.delete(self.chosen.value)

    def reset(self) -> None:
        self.runs.clear()
        self.given.clear()
        self.colors.clear()
        self.extra.clear()
        self.picked.clear()
        self._by_code = True
        self.overlay.options = []
        self._by_code = False
        self.chosen.options = [CONTROLS]
        self.export_message.value = self.html_link.value = ""
        self.show_table()
        self.show_code()
        self.show_downloads()

    # -- as code ----------------------------------------------------------------------------------
    def show_code(self) -> None:
        """Show the chosen run (or the controls) as Python and as a command line."""
        name = self.chosen.value
        baseline = None
        if name in self.runs:
            experiment, data_name = experiment_of(self.runs[name]), self.given.get(name)
            baseline = self.runs[name].attrs.get("baseline")
        else:
            experiment, data_name = self.current()
        if isinstance(experiment, Exception):
            self.code.value, self.command.value = f"# {experiment}", ""
        else:
            self.code.value, self.command.value = code_of(experiment, data_name, baseline)
        self._update_buttons()

    def _update_buttons(self, busy: bool = False) -> None:
        none = self.chosen.value not in self.runs
        for button in (self.load_button, self.rename_button, self.delete_button):
            button.disabled = busy or none
        self.html_button.disabled = busy or not self.runs

    # -- comparison -------------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """One row per kept run: its settings, how it ended, its final metrics."""
        rows = {name: {**settings_row(experiment_of(h), self.given.get(name)), "status": h.status,
                       **({"algorithm": "pooled (centralized)"} if h.attrs.get("baseline") == "pooled" else {}),
                       **final_metrics(h)} for name, h in self.runs.items()}
        return pd.DataFrame.from_dict(rows, orient="index")

    def overview(self) -> pd.DataFrame:
        """The table shown: per run what tells it apart (IDENTITY) and how it ended (RESULTS),
        sorted by the chosen column."""
        rows = {name: {**run_identity(h, self.given.get(name)), "status": h.status, **final_metrics(h)}
                for name, h in self.runs.items()}
        table = pd.DataFrame.from_dict(rows, orient="index")
        if table.empty:
            return table
        table = table[[c for c in (*IDENTITY, *RESULTS) if c in table]]
        key = self.sort_by.value
        if key == "run":
            order = sorted(table.index, key=run_number, reverse=self.descending.value)
            return table.loc[order]
        if key in table:
            return table.sort_values(key, ascending=not self.descending.value, na_position="last", kind="stable")
        return table

    def show_table(self) -> None:
        t = self.overview()
        if t.empty:
            self.table_html.value = "<i>no runs yet</i>"
            return
        varying = [c for c in IDENTITY if c in t and t[c].nunique() > 1]
        same = {c: t[c].iloc[0] for c in IDENTITY if c in t and c not in varying and t[c].iloc[0] != ""}
        shown = t[varying + [c for c in RESULTS if c in t]]
        note = ("<small>all runs: " + html.escape(" · ".join(f"{k} {v}" for k, v in same.items())) + "</small>"
                if same and len(t) > 1 else "")
        self.table_html.value = (note + shown.to_html(float_format=lambda v: f"{v:.4g}", na_rep="",
                                                      classes="fedlab-runs-table"))

    # -- exports ----------------------------------------------------------------------------------
    def show_downloads(self) -> None:
        """The CSV of the runs table as a download link (made afresh whenever the runs change);
        the HTML report's link is made on request (it embeds plotly.js, 4 MB)."""
        self.html_link.value = ""
        if not self.runs:
            self.csv_link.value = "<i>the runs table as CSV, once there are runs</i>"
            return
        names = list(self.runs)
        self.csv_link.value = download_link(self.table().to_csv().encode(), f"fedlab-runs-{_stamp()}.csv", "text/csv",
                                            f"the runs table: {self._which(names)}")

    @staticmethod
    def _which(names: list[str]) -> str:
        return f"{len(names)} run{'s' * (len(names) != 1)} (" + ", ".join(f"#{run_number(n)}" for n in names) + ")"

    def _report_runs(self) -> list[str]:
        return [n for n in self.overlay.value if n in self.runs] or list(self.runs)

    def _export_html_link(self) -> None:
        try:
            if not self.runs:
                raise ValueError("no runs to export yet")
            import tempfile

            names = self._report_runs()
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "report.html")
                write_report({n: self.runs[n] for n in names}, path, title="fedlab workbench runs")
                with open(path, "rb") as f:
                    payload = f.read()
            self.html_link.value = download_link(payload, f"fedlab-report-{_stamp()}.html", "text/html",
                                                 f"charts and settings of {self._which(names)}")
            self.export_message.value = ""
        except Exception as err:       # noqa: BLE001 - shown next to the buttons
            self.export_message.value = f"<span style='color:#a00'>{html.escape(str(err))}</span>"

    def export_csv(self, path: str | None = None, overwrite: bool = False) -> str:
        """Write the runs table (settings + final metrics) as CSV; returns the path (default:
        fedlab-runs-<date>-<time>.csv here). An existing file is kept: FileExistsError unless
        ``overwrite``."""
        if not self.runs:
            raise ValueError("no runs to export yet")
        path = _free_path(path or f"fedlab-runs-{_stamp()}.csv", overwrite)
        self.table().to_csv(path)
        return path

    def export_html(self, path: str | None = None, overwrite: bool = False) -> str:
        """Write a self-contained HTML report of the runs shown (all if none is selected); the
        path as for ``export_csv``."""
        if not self.runs:
            raise ValueError("no runs to export yet")
        path = _free_path(path or f"fedlab-report-{_stamp()}.html", overwrite)
        names = self._report_runs()
        write_report({n: self.runs[n] for n in names}, path, title="fedlab workbench runs")
        return path

    @property
    def disabled(self) -> bool:
        return self.overlay.disabled

    @disabled.setter
    def disabled(self, busy: bool) -> None:
        for w in (self.overlay, self.chosen, self.new_label, self.sort_by, self.descending):
            w.disabled = busy
        self._update_buttons(busy)
