"""The live chart: a plotly figure with one panel per metric, the run in progress and the
finished runs chosen for comparison drawn in it (shown by ``PlotView``).

Only the training thread calls ``add`` (one thread touches the figure at a time); it redraws at
most once per ``redraw_interval`` seconds, and histories longer than ``MAX_POINTS`` are thinned
before they are sent, so the browser keeps up and Stop stays responsive. The traces are
``fedlab.report.run_traces``, the same as in the HTML report.
"""
from __future__ import annotations

import time

import ipywidgets as W
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fedlab.report import EPSILON_PANEL, PANELS, REGRESSION_PANELS, run_traces
from fedlab.ui.plot import PlotView

MAX_POINTS = 400                        # longer histories are thinned before they are sent
# the y axis of each panel: what is measured, in which unit
UNITS = {"test_accuracy": "share of test rows correct", "train_loss": "mean loss per example",
         "client_acc_p50": "accuracy (share correct)", "bytes_up": "MB (10⁶ bytes, up + down)",
         "epsilon": "ε (at the run's δ)", "test_rmse": "RMSE (target units)",
         "client_rmse_p50": "RMSE (target units)", "test_r2": "R² (1 = exact, 0 = the mean)",
         "backdoor_accuracy": "share of triggered rows → target"}
BACKDOOR_PANEL = ("backdoor_accuracy", "backdoor accuracy (attack success)")
R2_PANEL = ("test_r2", "test R² (regression)")
LOG_PANELS = ("train_loss", "bytes_up")  # the panels the log-scale toggle switches
EMPTY_TEXT = "Press <b>Run</b>: the charts fill in round by round."


def panels_for(columns) -> tuple:
    """The panels for runs with these History columns: accuracy, loss, client spread and MB sent
    (RMSE in place of accuracy when no run has an accuracy), then backdoor accuracy (a backdoor
    attack), R² (regression) and ε (differential privacy) when a run has them."""
    columns = set(columns)
    regression = "test_rmse" in columns and "test_accuracy" not in columns
    extra = tuple(p for p in (BACKDOOR_PANEL, R2_PANEL, EPSILON_PANEL) if p[0] in columns)
    return (REGRESSION_PANELS if regression else PANELS) + extra


def empty_figure(panels) -> go.Figure:
    """A figure with one subplot per panel, laid out like the HTML report; the axes stay
    hidden until there is something to draw."""
    rows = -(-len(panels) // 2)
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[t for _, t in panels],
                        horizontal_spacing=0.09, vertical_spacing=0.14 if rows > 2 else 0.18)
    fig.update_xaxes(title_text="round", visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(visible=False)
    for j, (col, _) in enumerate(panels):
        fig.update_yaxes(title_text=UNITS.get(col, col), row=j // 2 + 1, col=j % 2 + 1)
    fig.update_layout(height=60, margin=dict(l=60, r=20, t=50, b=40), template="plotly_white",
                      legend=dict(orientation="h", y=-0.12), autosize=True)
    return fig


class LiveChart:
    """``box``: the widget to show. ``begin`` a run, ``add`` its rounds, ``end`` it; ``compare``
    sets the finished runs drawn alongside ({name: (history, colour)})."""

    def __init__(self, redraw_interval: float = 0.5):
        self.redraw_interval = redraw_interval
        self.panels = PANELS
        self.view = PlotView(empty_figure(self.panels))
        self.log_scale = W.Checkbox(value=False, description="log scale (loss, MB)", indent=False,
                                    tooltip="draw the loss and megabytes panels on a logarithmic y axis")
        self.empty_note = W.HTML(f"<i>{EMPTY_TEXT}</i>")
        self.log_scale.observe(lambda _: self._apply_log_scale(), "value")
        self.box = W.VBox([W.HBox([self.log_scale, self.empty_note]), self.view.widget],
                          layout=W.Layout(width="100%"))       # a column: the chart takes the full width
        self.box.add_class("fedlab-live-chart")
        self.live: tuple[str, str, list] | None = None     # (name, colour, rows so far) during a run
        self.others: dict[str, tuple[pd.DataFrame, str]] = {}
        self._live_epsilon = False                         # the live run reports epsilon (DP)
        self._live_columns: set = set()                    # the columns the live run's rows have had
        self._last_draw = 0.0

    # -- the run in progress ---------------------------------------------------------------------
    def begin(self, name: str, color: str, rows=(), epsilon: bool = False) -> None:
        """Start drawing run ``name`` (``rows``: rounds it already has, when it continues)."""
        self.live, self._live_epsilon, self._last_draw = (name, color, list(rows)), epsilon, 0.0
        self._live_columns = {c for r in self.live[2] for c, v in r.items() if v == v}    # (not NaN)
        self._set_panels()
        self.redraw()

    @property
    def live_rows(self) -> list:
        return [] if self.live is None else self.live[2]

    def add(self, row: dict) -> bool:
        """Collect a round's row; redraw if ``redraw_interval`` has passed. True if redrawn."""
        self.live[2].append(row)
        new = {c for c, v in row.items() if v == v} - self._live_columns
        changed = False
        if new:                                            # a column the panels may need (RMSE, backdoor)
            self._live_columns |= new
            changed = self._set_panels()
        now = time.perf_counter()
        if now - self._last_draw < self.redraw_interval and not changed:
            return False
        self._last_draw = now
        self.redraw()
        return True

    def end(self) -> None:
        """The run is over (``compare`` then draws it with the others, if it was kept)."""
        self.live, self._live_epsilon, self._live_columns = None, False, set()

    # -- finished runs ----------------------------------------------------------------------------
    def compare(self, others: dict[str, tuple[pd.DataFrame, str]]) -> None:
        """Draw these finished runs (and the live one, if any)."""
        self.others = dict(others)
        self._set_panels()
        self.redraw()

    def _set_panels(self) -> bool:
        """A new figure when the panels change (a run with DP, a backdoor or a regression target is drawn)."""
        columns = set(self._live_columns) | ({"epsilon"} if self._live_epsilon else set())
        for h, _ in self.others.values():
            columns |= {c for c in h.columns if h[c].notna().any()}
        panels = panels_for(columns)
        if panels != self.panels:
            self.panels = panels
            self.view.figure = empty_figure(panels)
            self._apply_log_scale(push=False)       # the redraw that follows sends it
            return True
        return False

    @property
    def figure(self) -> go.Figure:
        return self.view.figure

    def _apply_log_scale(self, push: bool = True) -> None:
        log = self.log_scale.value
        for j, (col, _) in enumerate(self.panels):
            if col in LOG_PANELS:
                self.figure.update_yaxes(type="log" if log else "linear", row=j // 2 + 1, col=j % 2 + 1)
        if push:
            self.view.push()

    # -- drawing --------------------------------------------------------------------------------
    @staticmethod
    def _own_models(history: pd.DataFrame, name: str) -> tuple[pd.DataFrame, str]:
        """A run without a global model (islands): its accuracy panels draw the clients' own models
        (personal_acc_mean, and the p10-p90 band of personal_acc), and its name says so."""
        if ("personal_acc_mean" in history and "test_accuracy" in history
                and not history["test_accuracy"].notna().any() and history["personal_acc_mean"].notna().any()):
            own = {"test_accuracy": history["personal_acc_mean"],
                   **{f"client_acc_{q}": history[f"personal_acc_{q}"] for q in ("p10", "p50", "p90")
                      if f"personal_acc_{q}" in history}}
            return history.assign(**own), f"{name} (own models)"
        return history, name

    def traces(self) -> list[dict]:
        """The finished runs' traces, then the live run's (drawn last: on top)."""
        traces = []
        for name, (history, color) in self.others.items():
            if self.live is None or name != self.live[0]:
                traces += run_traces(*self._own_models(history, name), color, self.panels, MAX_POINTS)
        if self.live is not None:
            name, color, rows = self.live
            live, label = self._own_models(pd.DataFrame(rows), name)
            traces += [{**t, "line": {**t["line"], "width": 3}} if "fill" not in t else t
                       for t in run_traces(live, label, color, self.panels, MAX_POINTS)]
        return traces

    def redraw(self) -> None:
        """Send the figure with the current traces (the axes and titles only once there is a run)."""
        traces, fig = self.traces(), self.figure
        empty = not traces
        self.empty_note.layout.display = None if empty else "none"
        with fig.batch_update():
            if bool(fig.layout.xaxis.visible) == empty:
                fig.update_xaxes(visible=not empty)
                fig.update_yaxes(visible=not empty)
                fig.update_annotations(visible=not empty)
                rows = -(-len(self.panels) // 2)
                fig.layout.height = 60 if empty else 280 * rows + 70
            fig.data = ()
            fig.add_traces([go.Scatter(**{k: v for k, v in n.items() if k != "type"}) for n in traces])
        self.view.push()
