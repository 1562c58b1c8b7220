"""The Data tab's picture of the federation: a clients x classes heatmap and the client sizes,
drawn before any training and redrawn when the dataset, partition, alpha or clients change; below
it, the data-quality clients x checks heatmap (``fedlab.data.quality.assess``: each client's
shareable summary statistics scored as robust z-scores against the federation) for the data and
its corruption settings (corrupt, corrupt_clients, quality_threshold).

The data is loaded off the kernel's main thread (``Latest``: the last setting asked for wins, so
a dragged slider loads once), cached by ``DataCache``, and the status says "loading data..."
meanwhile. For a regression target the heatmap's columns are target ranges (global quantile
bins): each client's target distribution. Only the data thread touches this figure.
"""
from __future__ import annotations

import html

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fedlab.ui.plot import PlotView, blank
from fedlab.ui.runner import DataCache, Latest, first_line

MAX_CLIENTS = 200                   # more clients: the first 200 are drawn (the summary says so)
TARGET_BINS = 8                     # regression: target ranges (quantile bins) per client


def partition_table(data, split: str = "train") -> tuple[pd.DataFrame, str]:
    """(clients x columns table of example counts, what the columns are). Classification: one
    column per class (``label_histogram``); regression: one per target range, global quantile
    bins of the training targets."""
    if data.num_classes > 0:
        return data.label_histogram(split), "class"
    y, off = (data.y_train, data.train_offsets) if split == "train" else (data.y_test, data.test_offsets)
    edges = np.unique(np.quantile(data.y_train, np.linspace(0, 1, TARGET_BINS + 1)))
    if len(edges) < 2:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    column = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, len(edges) - 2)
    client = np.repeat(np.arange(data.num_clients), np.diff(off))
    counts = np.zeros((data.num_clients, len(edges) - 1), np.int64)
    np.add.at(counts, (client, column), 1)
    labels = [f"{a:.3g}..{b:.3g}" for a, b in zip(edges[:-1], edges[1:])]
    return pd.DataFrame(counts, index=pd.Index(data.names(), name="client"),
                        columns=pd.Index(labels, name="target")), "target range"


def quality_report(experiment, data, given: bool) -> pd.DataFrame:
    """``fedlab.data.quality.assess`` of the clients of ``data``: from the raw tables (with the
    experiment's corruption injected) for a table dataset, else from the arrays. The label-noise
    check needs a trained model (``python -m fedlab quality`` runs it) and is left out here."""
    from fedlab.data import quality

    if not given and quality._is_table(experiment.dataset):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tables = experiment.load_tables()
    else:
        tables = quality.tables_from_arrays(data)
    return quality.assess(tables, threshold=experiment.quality_threshold)


def quality_summary(report: pd.DataFrame, threshold: float) -> str:
    flagged = report.loc[report["flagged"], "client"].astype(str).tolist()
    text = (f"<b>Data quality</b>: {len(flagged)} of {len(report)} clients flagged (a check's robust z-score "
            f"above {threshold:g})" + (f": {html.escape(', '.join(flagged[:12]))}{' ...' * (len(flagged) > 12)}"
                                       if flagged else ""))
    if report["corrupted"].any():
        from fedlab.data.quality import detection_scores

        d = detection_scores(report)
        text += (f" · {int(report['corrupted'].sum())} clients corrupted on purpose: precision "
                 f"{d['precision']:.2f}, recall {d['recall']:.2f} of the flags")
    return text + (" <small>(scores from summary statistics a client could share; the label-noise check "
                   "needs a trained model: <code>python -m fedlab quality</code>)</small>")


def quality_figure(report: pd.DataFrame, threshold: float) -> go.Figure:
    """``fedlab.data.quality.heatmap`` of the first MAX_CLIENTS clients, without the label-noise
    column when it was not computed."""
    from fedlab.data import quality

    fig = quality.heatmap(report.iloc[:MAX_CLIENTS], threshold)
    if report["label_noise"].isna().all():
        checks = [c for c in quality.CHECKS if c != "label_noise"]
        trace = fig.data[0]
        keep = [list(trace.x).index(c) for c in checks]
        fig.data[0].update(z=np.asarray(trace.z)[:, keep], x=checks, text=np.asarray(trace.text)[:, keep])
    fig.update_layout(height=int(min(900, max(300, 120 + 16 * min(len(report), MAX_CLIENTS)))),
                      margin=dict(l=80, r=20, t=50, b=40), autosize=True,
                      title=dict(text=f"data quality: clients x checks (robust z; above {threshold:g} flags; "
                                      "! flagged, * corrupted)", font=dict(size=13)))
    fig.update_xaxes(side="top")
    return fig


def data_summary(data) -> str:
    """One line: clients, rows, classes, client sizes, label skew."""
    n = data.train_counts
    text = (f"<b>{data.num_clients}</b> clients · {len(data.y_train)} train / {len(data.y_test)} test rows · "
            + (f"{data.num_classes} classes" if data.num_classes else "regression target")
            + f" · examples per client: min {n.min()}, median {int(np.median(n))}, max {n.max()}")
    if data.num_classes > 0:
        tv = data.summary()["tv_distance"].mean()
        text += (f" · label skew {tv:.2f} <small>(mean total-variation distance of a client's label mix "
                 f"from the overall mix: 0 = IID, 1 = disjoint labels)</small>")
    if data.num_clients > MAX_CLIENTS:
        text += f" · <i>the first {MAX_CLIENTS} clients are drawn</i>"
    return text


def partition_figure(data) -> go.Figure:
    """The heatmap (share of each client's training rows per class, or per target range) beside
    the clients' training-set sizes."""
    table, what = partition_table(data)
    table = table.iloc[:MAX_CLIENTS]
    counts = table.to_numpy()
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    clients = [str(c) for c in table.index]
    columns = [str(c) for c in table.columns]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3], shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[f"each client's {what} mix (share of its training rows)",
                                        "client size (training rows)"])
    fig.add_trace(go.Heatmap(z=share, x=columns, y=clients, customdata=counts, colorscale="Blues", zmin=0, zmax=1,
                             colorbar=dict(title="share", x=1.01, len=0.9),
                             hovertemplate=f"client %{{y}}<br>{what} %{{x}}<br>%{{customdata}} rows (%{{z:.0%}})"
                                           "<extra></extra>"), 1, 1)
    fig.add_trace(go.Bar(x=data.train_counts[:MAX_CLIENTS], y=clients, orientation="h", marker_color="#1f77b4",
                         hovertemplate="client %{y}: %{x} training rows<extra></extra>", showlegend=False), 1, 2)
    fig.update_xaxes(title_text=what, type="category", row=1, col=1)
    fig.update_xaxes(title_text="training rows", row=1, col=2)
    fig.update_yaxes(title_text="client", type="category", autorange="reversed", row=1, col=1)
    height = int(min(900, max(320, 90 + 14 * len(clients))))
    fig.update_layout(height=height, margin=dict(l=60, r=20, t=40, b=50), template="plotly_white", autosize=True)
    return fig


class DataView:
    """``box``: the status line and the figure, for the Data tab. ``show(experiment, given)`` draws
    the data that setting gives (loading it in the background first if it is not cached)."""

    def __init__(self, cache: DataCache):
        self.cache = cache
        self.status = W.HTML("<i>the data shows here once loaded</i>")
        self.view = PlotView(blank(60))
        self.quality_status = W.HTML()
        self.quality_view = PlotView(blank(40))
        self.quality_box = W.VBox([self.quality_status, self.quality_view.widget], layout=W.Layout(width="100%"))
        self.quality_box.add_class("fedlab-quality-view")
        self.partition_box = W.VBox([self.status, self.view.widget], layout=W.Layout(width="100%"))
        self.partition_box.add_class("fedlab-data-view")
        self.box = W.VBox([self.partition_box, self.quality_box], layout=W.Layout(width="100%"))
        self.report = None                      # the quality report drawn (a DataFrame)
        self.worker = Latest("fedlab-data-view")
        self.key: tuple | None = None           # the setting drawn (or being loaded)
        self.drawn: tuple | None = None         # the setting whose data is in the figure
        self.data = None                        # that data
        self.on_loaded = None                   # called with the data once drawn (in the data thread)

    def show(self, experiment, given: bool) -> None:
        key = (DataCache.key(experiment), given, experiment.corrupt, experiment.corrupt_clients,
               experiment.quality_threshold)
        if key == self.key:
            return
        self.key = key
        if self.cache.cached(experiment, given) is None:
            self.status.value = "<i>loading data...</i>"
        self.worker.submit(lambda: self._load_and_draw(key, experiment, given))

    def invalid(self, error: Exception) -> None:
        """The data settings are invalid: say so (the figure keeps the last data drawn)."""
        self.key = None
        self.status.value = (f"<span style='color:#a00'>cannot load the data: {html.escape(str(error))}</span>")
        self.quality_status.value = "<i>data quality: fix the data settings first</i>"

    def _load_and_draw(self, key: tuple, experiment, given: bool) -> None:
        if key != self.key:                     # superseded before it started
            return
        try:
            data = self.cache.load(experiment, given)
        except Exception as err:               # noqa: BLE001 - shown in place of the data
            if key == self.key:
                self.status.value = (f"<span style='color:#a00'>cannot load the data: "
                                     f"{html.escape(first_line(err))}"
                                     "</span>")
            return
        if key != self.key:
            return
        self.view.show(partition_figure(data))
        self.drawn, self.data = key, data
        self.status.value = f"<span class='fedlab-data-summary'>{data_summary(data)}</span>"
        if self.on_loaded is not None:
            self.on_loaded(data)
        self._assess(key, experiment, data, given)

    def _assess(self, key: tuple, experiment, data, given: bool) -> None:
        """(In the data thread, after the partition is drawn.) The quality heatmap of this data."""
        if hasattr(data, "device_data"):        # a generated population: no tables to assess
            self.report = None
            self.quality_status.value = "<i>data quality: not assessed for a generated population</i>"
            return
        self.quality_status.value = "<i>assessing data quality...</i>"
        try:
            report = quality_report(experiment, data, given)
        except Exception as err:               # noqa: BLE001 - shown in place of the heatmap
            if key == self.key:
                self.quality_status.value = (f"<span style='color:#a00'>cannot assess the data quality: "
                                             f"{html.escape(first_line(err))}</span>")
            return
        if key != self.key:
            return
        self.report = report
        self.quality_view.show(quality_figure(report, experiment.quality_threshold))
        self.quality_status.value = (f"<span class='fedlab-quality-summary'>"
                                     f"{quality_summary(report, experiment.quality_threshold)}</span>")

    @property
    def figure(self) -> go.Figure:
        return self.view.figure

    @property
    def quality_figure(self) -> go.Figure:
        return self.quality_view.figure

    def wait(self, timeout: float | None = None) -> bool:
        return self.worker.wait(timeout)
