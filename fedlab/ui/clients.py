"""The per-client view of a finished run: how the final model does on each client, against the
client's size and its label skew (from ``History.per_client`` and the data's label histogram);
one chosen client's curve over rounds (``History.client_rounds``: the global model, and the
client's own model when the strategy personalizes); and, for a personalizing run, global vs
personal accuracy per client (one point per client, the diagonal: no gain).

A client is chosen in the dropdown (it starts on the worst-served client; hovering a point names
its client). The figures are plotly outputs (``PlotView``)."""
from __future__ import annotations

import html

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fedlab.ui.plot import PlotView, blank

TITLE = "<b>Clients</b> <i>(after a run: how its final model does on each client)</i>"
SELECTED = "#d62728"


def client_table(history, data) -> pd.DataFrame | None:
    """One row per client: the final model's test accuracy (or loss, for regression), the client's
    training rows and (classification) its label skew, the total-variation distance of its label
    mix from the overall mix; ``personal_accuracy`` (the model the client uses) when the run
    personalizes. A run without a global model (islands) has NaN test accuracy. None when the
    run kept no per-client table."""
    per_client = getattr(history, "per_client", None)
    if per_client is None or data is None or len(per_client) != data.num_clients:
        return None
    table = per_client.reset_index(drop=True).copy()
    if "test_accuracy" in table and "test_accuracy" in history and not history["test_accuracy"].notna().any():
        table["test_accuracy"] = np.nan                     # no global model: its accuracy means nothing
    curves = getattr(history, "client_rounds", None)
    if curves is not None and "personal_accuracy" in curves and len(curves):
        last = curves[curves["round"] == curves["round"].max()]
        if len(last) == len(table) and last["personal_accuracy"].notna().any():
            table["personal_accuracy"] = last["personal_accuracy"].to_numpy(np.float64)
    if data.num_classes > 0:
        table["label_skew"] = data.summary()["tv_distance"].to_numpy()
    return table


def _metric(table: pd.DataFrame) -> tuple[str, str]:
    """The column the view draws: the model each client uses (personal, else global)."""
    if "personal_accuracy" in table:
        return "personal_accuracy", "personal accuracy (share correct, the model the client uses)"
    if "test_accuracy" in table:
        return "test_accuracy", "test accuracy (share correct)"
    return "test_loss", "test loss (mean per example)"


def personalizes(table: pd.DataFrame | None) -> bool:
    """Whether the run has both a global and a personal accuracy per client (the scatter)."""
    return (table is not None and "personal_accuracy" in table and "test_accuracy" in table
            and table["test_accuracy"].notna().any())


def clients_figure(table: pd.DataFrame, color: str = "#1f77b4") -> go.Figure:
    """Three panels: the distribution of the final per-client metric, the metric against client
    size, and against label skew (classification)."""
    metric, label = _metric(table)
    rows = table[table["test_examples"] > 0]
    skew = "label_skew" in rows
    fig = make_subplots(rows=1, cols=3 if skew else 2, horizontal_spacing=0.07,
                        subplot_titles=["clients by final " + label.split(" (")[0],
                                        "vs client size", *(["vs label skew"] if skew else [])])
    hover = "client %{text}<br>%{x}<br>" + metric + " %{y:.3f}<extra></extra>"
    fig.add_trace(go.Histogram(x=rows[metric], nbinsx=20, marker_color=color, showlegend=False,
                               hovertemplate=label + " %{x}<br>%{y} clients<extra></extra>"), 1, 1)
    fig.add_trace(go.Scatter(x=rows["train_examples"], y=rows[metric], mode="markers", text=rows["client"],
                             marker=dict(color=color, size=7, opacity=0.7), showlegend=False,
                             hovertemplate=hover), 1, 2)
    if skew:
        fig.add_trace(go.Scatter(x=rows["label_skew"], y=rows[metric], mode="markers", text=rows["client"],
                                 marker=dict(color=color, size=7, opacity=0.7), showlegend=False,
                                 hovertemplate=hover), 1, 3)
        fig.update_xaxes(title_text="label skew (TV distance, 0 = IID)", row=1, col=3)
        fig.update_yaxes(title_text=label.split(" (")[0], row=1, col=3)
    fig.update_xaxes(title_text=label.split(" (")[0], row=1, col=1)
    fig.update_yaxes(title_text="clients", row=1, col=1)
    fig.update_xaxes(title_text="training rows (log)", type="log", row=1, col=2)
    fig.update_yaxes(title_text=label.split(" (")[0], row=1, col=2)
    fig.update_layout(height=320, margin=dict(l=60, r=20, t=40, b=50), template="plotly_white", autosize=True)
    return fig


def client_curve(curves: pd.DataFrame, client: str) -> pd.DataFrame:
    """One client's rows of ``History.client_rounds`` (round, its global metric, personal accuracy)."""
    rows = curves[curves["client"].astype(str) == str(client)]
    return rows.drop(columns="client").reset_index(drop=True)


def curve_figure(curves: pd.DataFrame, client: str, table: pd.DataFrame | None, color: str = "#1f77b4") -> go.Figure:
    """The chosen client's metric over rounds (global model solid, personal model dashed) and,
    when the run personalizes, global vs personal accuracy per client with the diagonal."""
    metric = "test_rmse" if "test_rmse" in curves else "test_accuracy"
    scatter = personalizes(table)
    one = client_curve(curves, client)
    fig = make_subplots(rows=1, cols=2 if scatter else 1, horizontal_spacing=0.1,
                        subplot_titles=[f"client {client} over rounds",
                                        *(["each client: global vs personal model (final)"] if scatter else [])])
    unit = "test RMSE (target units)" if metric == "test_rmse" else "test accuracy (share correct)"
    if one[metric].notna().any():
        fig.add_trace(go.Scatter(x=one["round"], y=one[metric], mode="lines+markers", name="global model",
                                 line=dict(color=color), marker=dict(size=4),
                                 hovertemplate="round %{x}<br>global model %{y:.3f}<extra></extra>"), 1, 1)
    if "personal_accuracy" in one and one["personal_accuracy"].notna().any():
        fig.add_trace(go.Scatter(x=one["round"], y=one["personal_accuracy"], mode="lines+markers",
                                 name="its own (personal) model", line=dict(color=color, dash="dash"),
                                 marker=dict(size=4, symbol="diamond"),
                                 hovertemplate="round %{x}<br>personal model %{y:.3f}<extra></extra>"), 1, 1)
    fig.update_xaxes(title_text="round", row=1, col=1)
    fig.update_yaxes(title_text=unit, row=1, col=1)
    if scatter:
        rows = table[(table["test_examples"] > 0)]
        chosen = rows["client"].astype(str) == str(client)
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#999", dash="dot"),
                                 name="no gain (diagonal)", hoverinfo="skip"), 1, 2)
        fig.add_trace(go.Scatter(x=rows["test_accuracy"], y=rows["personal_accuracy"], mode="markers",
                                 text=rows["client"].astype(str), name="clients", showlegend=False,
                                 marker=dict(color=np.where(chosen, SELECTED, color).tolist(),
                                             size=np.where(chosen, 12, 7).tolist(), opacity=0.8),
                                 hovertemplate="client %{text}<br>global %{x:.3f}<br>personal %{y:.3f}"
                                               "<extra></extra>"), 1, 2)
        fig.update_xaxes(title_text="global model's accuracy", range=[-0.02, 1.02], row=1, col=2)
        fig.update_yaxes(title_text="personal model's accuracy", range=[-0.02, 1.02], row=1, col=2)
    fig.update_layout(height=300, margin=dict(l=60, r=20, t=40, b=50), template="plotly_white", autosize=True,
                      legend=dict(orientation="h", y=-0.25))
    return fig


def gain_text(table: pd.DataFrame) -> str:
    """'personal beats global for 17 of 20 clients (median gain +0.21)'."""
    rows = table[(table["test_examples"] > 0) & table["test_accuracy"].notna() & table["personal_accuracy"].notna()]
    if rows.empty:
        return ""
    gain = rows["personal_accuracy"] - rows["test_accuracy"]
    return (f"its own model beats the global one for <b>{int((gain > 0).sum())} of {len(rows)}</b> clients "
            f"(median gain {np.median(gain):+.3f})")


class ClientView:
    """``box``: a title, the clients figure, the client chooser and its curves;
    ``show(name, table, colour, curves)`` draws one run's clients."""

    def __init__(self):
        self.title = W.HTML(TITLE)
        self.view = PlotView(blank())
        self.client = W.Dropdown(options=[], description="client", style={"description_width": "initial"},
                                 layout=W.Layout(width="320px"),
                                 tooltip="the client whose accuracy over rounds is drawn")
        self.gain = W.HTML()
        self.curve_view = PlotView(blank())
        self.curve_box = W.VBox([W.HBox([self.client, self.gain], layout=W.Layout(align_items="center")),
                                 self.curve_view.widget], layout=W.Layout(width="100%", display="none"))
        self.curve_box.add_class("fedlab-client-curves")
        self.box = W.VBox([self.title, self.view.widget, self.curve_box], layout=W.Layout(width="100%"))
        self.box.add_class("fedlab-clients")
        self.shown: str | None = None
        self.table: pd.DataFrame | None = None
        self.curves: pd.DataFrame | None = None
        self.color = "#1f77b4"
        self._showing = False
        self.client.observe(lambda _: self._draw_curve(), "value")

    @property
    def figure(self) -> go.Figure:
        return self.view.figure

    @property
    def curve_figure(self) -> go.Figure:
        return self.curve_view.figure

    def show(self, name: str | None, table: pd.DataFrame | None, color: str = "#1f77b4",
             curves: pd.DataFrame | None = None) -> None:
        if name is None or table is None:
            self.shown, self.table, self.curves = None, None, None
            self.title.value = TITLE
            self.view.show(blank())
            self.curve_box.layout.display = "none"
            return
        metric, label = _metric(table)
        values = table.loc[table["test_examples"] > 0, metric]
        self.shown, self.table, self.curves, self.color = name, table, curves, color
        self.title.value = (f"<b>Clients of {html.escape(name)}</b>: final {label.split(' (')[0]} "
                            f"median {np.median(values):.3f}, worst {values.min():.3f}, best {values.max():.3f}, "
                            f"spread (p90 - p10) {np.percentile(values, 90) - np.percentile(values, 10):.3f} "
                            f"over {len(values)} clients")
        self.view.show(clients_figure(table, color))
        if curves is None or not len(curves):
            self.curve_box.layout.display = "none"
            return
        names = [str(c) for c in curves["client"].cat.categories] if hasattr(curves["client"], "cat") \
            else list(dict.fromkeys(curves["client"].astype(str)))
        self.gain.value = gain_text(table) if personalizes(table) else ""
        keep = self.client.value if self.client.value in names else self._worst(names)
        self._showing = True
        try:
            self.client.options = names
            self.client.value = keep
        finally:
            self._showing = False
        self.curve_box.layout.display = None
        self._draw_curve()

    def _worst(self, names: list[str]) -> str | None:
        """The client the view starts on: the worst-served one (lowest final metric)."""
        metric, _ = _metric(self.table)
        rows = self.table[self.table["test_examples"] > 0]
        rows = rows[rows["client"].astype(str).isin(names) & rows[metric].notna()]
        if rows.empty:
            return names[0] if names else None
        best = rows[metric].idxmax() if metric == "test_loss" else rows[metric].idxmin()
        return str(rows.loc[best, "client"])

    def choose(self, client: str) -> None:
        """Draw client ``client``'s curve (what choosing it in the dropdown does)."""
        if client not in self.client.options:
            raise ValueError(f"no client {client!r} in the run shown; its clients are {list(self.client.options)[:10]}...")
        self.client.value = client

    def _draw_curve(self) -> None:
        if self._showing or self.curves is None or self.client.value is None:
            return
        self.curve_view.show(curve_figure(self.curves, self.client.value, self.table, self.color))
