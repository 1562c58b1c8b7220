"""The per-client view of a finished run: how the final model does on each client, against the
client's size and its label skew (from ``History.per_client`` and the data's label histogram)."""
from __future__ import annotations

import html

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fedlab.ui.plot import PlotView


def client_table(history, data) -> pd.DataFrame | None:
    """One row per client: the final model's test accuracy (or loss, for regression), the client's
    training rows and (classification) its label skew, the total-variation distance of its label
    mix from the overall mix. None when the run kept no per-client table."""
    per_client = getattr(history, "per_client", None)
    if per_client is None or data is None or len(per_client) != data.num_clients:
        return None
    table = per_client.reset_index(drop=True).copy()
    if data.num_classes > 0:
        table["label_skew"] = data.summary()["tv_distance"].to_numpy()
    return table


def _metric(table: pd.DataFrame) -> tuple[str, str]:
    if "test_accuracy" in table:
        return "test_accuracy", "test accuracy (share correct)"
    return "test_loss", "test loss (mean per example)"


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
        fig.update_yaxes(title_text=label, row=1, col=3)
    fig.update_xaxes(title_text=label, row=1, col=1)
    fig.update_yaxes(title_text="clients", row=1, col=1)
    fig.update_xaxes(title_text="training rows (log)", type="log", row=1, col=2)
    fig.update_yaxes(title_text=label, row=1, col=2)
    fig.update_layout(height=320, margin=dict(l=60, r=20, t=40, b=50), template="plotly_white", autosize=True)
    return fig


def _blank() -> go.Figure:
    return go.Figure(layout=dict(height=40, margin=dict(t=5, b=5), template="plotly_white",
                                 xaxis=dict(visible=False), yaxis=dict(visible=False)))


class ClientView:
    """``box``: a title and the figure; ``show(name, table, colour)`` draws one run's clients."""

    def __init__(self):
        self.title = W.HTML("<b>Clients</b> <i>(after a run: how its final model does on each client)</i>")
        self.view = PlotView(_blank())
        self.box = W.VBox([self.title, self.view.widget], layout=W.Layout(width="100%"))
        self.box.add_class("fedlab-clients")
        self.shown: str | None = None

    def show(self, name: str | None, table: pd.DataFrame | None, color: str = "#1f77b4") -> None:
        if name is None or table is None:
            self.shown = None
            self.title.value = "<b>Clients</b> <i>(after a run: how its final model does on each client)</i>"
            self.view.show(_blank())
            return
        metric, label = _metric(table)
        values = table.loc[table["test_examples"] > 0, metric]
        self.shown = name
        self.title.value = (f"<b>Clients of {html.escape(name)}</b>: final {label.split(' (')[0]} "
                            f"median {np.median(values):.3f}, worst {values.min():.3f}, best {values.max():.3f}, "
                            f"spread (p90 - p10) {np.percentile(values, 90) - np.percentile(values, 10):.3f} "
                            f"over {len(values)} clients")
        self.view.show(clients_figure(table, color))

    @property
    def figure(self) -> go.Figure:
        return self.view.figure
