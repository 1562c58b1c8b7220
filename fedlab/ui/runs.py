"""The kept runs: their names, the comparison table, the exports, and each run as code.

Every kept run is a ``fedlab.History`` whose ``settings`` are its ``Experiment.to_dict()``, so
its name, its row of the table, its Python code and its command line all come from that one
value (``Experiment.from_dict(history.settings)``).
"""
from __future__ import annotations

import html
import math
from collections import OrderedDict
from typing import Callable

import ipywidgets as W
import pandas as pd

from fedlab.core.experiment import Experiment, settable_knobs
from fedlab.core.registry import ALGORITHMS
from fedlab.report import PALETTE, final_metrics, write_report

CONTROLS = "the controls (next run)"    # the code view's entry for the current settings
SHOWN = ("algorithm", "dataset", "partition", "status", "rounds_done", "test_accuracy", "client_acc_std",
         "train_loss", "MB_sent", "train_seconds", "epsilon")


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


def code_of(experiment: Experiment, data_name: str | None = None) -> tuple[str, str]:
    """(Python code, command line) that run ``experiment`` again."""
    code, command = experiment.to_code(), experiment.to_command()
    if data_name:
        end = "history = experiment.run()"
        fix = "history = experiment.run(data=data)    # data: the FederatedDataset given to the Workbench"
        code = code[:-len(end)] + fix if code.endswith(end) else code
        command = (f"# no command line: this run trains on {data_name}, a dataset given in Python "
                   "(a file of it runs as --dataset csv:PATH or npz:PATH)")
    return code, command


def progress_text(event, rounds_now: int) -> str:
    """'round 12 of 40 · 0.05 s/round · ETA 1 s · accuracy 0.812' while training."""
    per_round = event.elapsed / max(rounds_now, 1)
    return (f"round <b>{event.round}</b> of {event.rounds} · {per_round:.2f} s/round · "
            f"ETA {per_round * (event.rounds - event.round):.0f} s{_accuracy(event.metrics)}")


def outcome(history) -> str:
    """How a run ended: 'done: round 40 of 40 ...', 'stopped: round 7 of 40 ...', 'diverged at
    round 9 (non-finite training loss) · 8 rounds kept', 'failed: round 3: ...'."""
    status, asked = history.status, history.settings["rounds"]
    if status in ("completed", "stopped") and len(history):
        last = history.iloc[-1]
        r = int(last["round"])
        return (f"<b>{'done' if status == 'completed' else 'stopped'}</b>: round {r} of {asked} · "
                f"{last['elapsed']:.1f} s ({last['elapsed'] / max(r, 1):.2f} s/round){_accuracy(last)}")
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


class RunList:
    """``runs`` (name -> History), the overlay selection, the table, exports and the code view.
    ``current()`` gives (the controls' Experiment or the error they raise, given data name)."""

    def __init__(self, current: Callable[[], tuple]):
        self.current = current
        self.runs: "OrderedDict[str, pd.DataFrame]" = OrderedDict()
        self.given: dict[str, str] = {}           # run name -> name of the data given in code
        self.count = 0                            # runs started, for run names
        style = {"description_width": "initial"}
        self.overlay = W.SelectMultiple(description="show runs", rows=4, style=style, layout=W.Layout(width="420px"))
        self.table_html = W.HTML("<i>no runs yet</i>")
        self.export_path = W.Text(value="fedlab-runs", description="export to", style=style)
        self.csv_button = W.Button(description="CSV", icon="download")
        self.html_button = W.Button(description="HTML report", icon="file")
        self.export_message = W.HTML()
        self.chosen = W.Dropdown(options=[CONTROLS], value=CONTROLS, description="as code:", style=style,
                                 layout=W.Layout(width="520px"))
        self.load_button = W.Button(description="Load settings", icon="upload",
                                    tooltip="set the controls to this run's settings")
        self.code = W.Textarea(rows=5, layout=W.Layout(width="100%"))
        self.command = W.Textarea(rows=2, layout=W.Layout(width="100%"))
        self.csv_button.on_click(lambda _: self._export("csv"))
        self.html_button.on_click(lambda _: self._export("html"))
        self.chosen.observe(lambda _: self.show_code(), "value")
        self.widget = W.VBox([
            W.HTML("<b>Runs</b>"), self.overlay, self.table_html,
            W.HBox([self.export_path, self.csv_button, self.html_button]), self.export_message,
            W.HBox([self.chosen, self.load_button]), W.HTML("<small>Python</small>"), self.code,
            W.HTML("<small>command line</small>"), self.command])

    # -- names and colours ------------------------------------------------------------------------
    def new_name(self, experiment: Experiment, data_name: str | None) -> str:
        self.count += 1
        return f"#{self.count} {run_label(experiment, data_name)}"

    def color(self, name: str) -> str:
        """The run's colour: by its place among the kept runs (the next place for a new one)."""
        place = list(self.runs).index(name) if name in self.runs else len(self.runs)
        return PALETTE[place % len(PALETTE)]

    def shown(self) -> dict:
        """{name: (history, colour)} of the runs selected for the chart."""
        return {n: (self.runs[n], self.color(n)) for n in self.overlay.value if n in self.runs}

    # -- keeping runs -----------------------------------------------------------------------------
    def keep(self, name: str, history, data_name: str | None) -> None:
        """Add the run (or replace it, when it was continued), show it and choose it."""
        self.runs[name] = history
        if data_name:
            self.given[name] = data_name
        names, shown = list(self.runs), self.overlay.value
        self.overlay.options = names                      # (this clears the selection)
        self.overlay.value = tuple(n for n in dict.fromkeys([*shown, name]) if n in names)[-len(PALETTE):]
        self.chosen.options = [*names, CONTROLS]
        self.chosen.value = name
        self.show_code()                                  # (the same name chosen again: not observed)
        self.show_table()

    @property
    def chosen_run(self) -> str | None:
        """The run chosen in the code view, else the last run (None: no runs)."""
        if self.chosen.value in self.runs:
            return self.chosen.value
        return next(reversed(self.runs), None)

    def reset(self) -> None:
        self.runs.clear()
        self.given.clear()
        self.overlay.options = []
        self.chosen.options = [CONTROLS]
        self.export_message.value = ""
        self.show_table()
        self.show_code()

    # -- as code ----------------------------------------------------------------------------------
    def show_code(self) -> None:
        """Show the chosen run (or the controls) as Python and as a command line."""
        name = self.chosen.value
        if name in self.runs:
            experiment, data_name = experiment_of(self.runs[name]), self.given.get(name)
        else:
            experiment, data_name = self.current()
        if isinstance(experiment, Exception):
            self.code.value, self.command.value = f"# {experiment}", ""
        else:
            self.code.value, self.command.value = code_of(experiment, data_name)
        self.load_button.disabled = name not in self.runs

    # -- comparison -------------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """One row per kept run: its settings, how it ended, its final metrics."""
        rows = {name: {**settings_row(experiment_of(h), self.given.get(name)), "status": h.status,
                       **final_metrics(h)} for name, h in self.runs.items()}
        return pd.DataFrame.from_dict(rows, orient="index")

    def show_table(self) -> None:
        t = self.table()
        if t.empty:
            self.table_html.value = "<i>no runs yet</i>"
            return
        shown = t[[c for c in SHOWN if c in t]].assign(partition=t["partition"].fillna("default"))
        self.table_html.value = shown.to_html(float_format=lambda v: f"{v:.4g}", na_rep="")

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

    def _export(self, what: str) -> None:
        try:
            path = self.export_csv() if what == "csv" else self.export_html()
            self.export_message.value = f"saved <code>{html.escape(path)}</code>"
        except Exception as err:       # noqa: BLE001 - shown next to the buttons
            self.export_message.value = f"<span style='color:#a00'>{html.escape(str(err))}</span>"

    @property
    def disabled(self) -> bool:
        return self.overlay.disabled

    @disabled.setter
    def disabled(self, busy: bool) -> None:
        for w in (self.overlay, self.csv_button, self.html_button, self.chosen, self.load_button):
            w.disabled = busy
        if not busy:
            self.load_button.disabled = self.chosen.value not in self.runs
