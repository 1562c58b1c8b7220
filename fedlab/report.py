"""Plotly charts of one or more Histories, and a self-contained HTML report of them."""
from __future__ import annotations

import html
from typing import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def _as_runs(histories) -> dict[str, pd.DataFrame]:
    if isinstance(histories, pd.DataFrame):
        return {getattr(histories, "settings", {}).get("algorithm", "run"): histories}
    return dict(histories)


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def color(i: int) -> str:
    """The ``i``-th run's colour: PALETTE first, then hues spaced by the golden angle, so no two
    runs share a colour however many there are."""
    if i < len(PALETTE):
        return PALETTE[i]
    import colorsys

    hue = (0.07 + 0.618033988749895 * i) % 1.0
    lightness = (0.38, 0.5, 0.3)[(i // len(PALETTE)) % 3]
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
    return "#{:02x}{:02x}{:02x}".format(round(r * 255), round(g * 255), round(b * 255))


PANELS = (("test_accuracy", "test accuracy"), ("train_loss", "train loss"),
          ("client_acc_p50", "client accuracy (p10-p90 band, median)"), ("bytes_up", "MB sent (cumulative)"))
EPSILON_PANEL = ("epsilon", "privacy spent (epsilon)")
REGRESSION_PANELS = (("test_rmse", "test RMSE"), ("train_loss", "train loss"),
                     ("client_rmse_p50", "client RMSE (p10-p90 band, median)"), ("bytes_up", "MB sent (cumulative)"))


def panels_for(runs) -> tuple:
    """PANELS, or REGRESSION_PANELS when no run has an accuracy but some have an RMSE."""
    regression = (any("test_rmse" in h for h in runs.values())
                  and not any("test_accuracy" in h for h in runs.values()))
    return REGRESSION_PANELS if regression else PANELS


def thin(frame: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """At most ``limit`` rows (all when None), evenly spaced, always keeping the last one."""
    if limit is None or len(frame) <= limit:
        return frame
    keep = np.unique(np.linspace(0, len(frame) - 1, limit).round().astype(int))
    return frame.iloc[keep]


def run_traces(history: pd.DataFrame, name: str, color: str, panels, limit: int | None = None) -> list[dict]:
    """Scatter-trace dicts of one run, one (or, for client accuracy, a band and a line) per panel
    of a two-column subplot grid (xaxis/yaxis set: panel j is on axes x{j+1}); each series
    thinned to ``limit`` points. Megabytes sent are cumulative (up + down)."""
    traces = []
    for j, (col, _) in enumerate(panels):
        axis = "" if j == 0 else str(j + 1)
        base = dict(type="scatter", mode="lines", name=name, line=dict(color=color), legendgroup=name,
                    xaxis="x" + axis, yaxis="y" + axis, showlegend=j == 0)
        if col not in history:
            traces.append({**base, "x": [], "y": []})
            continue
        if col == "bytes_up":
            mb = (history["bytes_up"] + history["bytes_down"]).cumsum() / 1e6
            d = thin(pd.DataFrame({"round": history["round"], "y": mb}), limit)
            traces.append({**base, "x": d["round"].tolist(), "y": d["y"].tolist()})
            continue
        band = col.endswith("_p50") and col.startswith("client_")
        low, high = col[:-3] + "p10", col[:-3] + "p90"
        cols = ["round", col] + ([low, high] if band else [])
        d = thin(history[[c for c in cols if c in history]].dropna(), limit)
        if band and low in d and high in d:
            x = d["round"].tolist()
            band_y = d[high].tolist() + d[low].tolist()[::-1]
            traces.append({**base, "x": x + x[::-1], "y": band_y, "fill": "toself", "fillcolor": color,
                           "opacity": 0.15, "line": dict(width=0), "showlegend": False, "hoverinfo": "skip"})
        traces.append({**base, "x": d["round"].tolist(), "y": d[col].tolist()})
    return traces


def convergence_figure(histories: pd.DataFrame | Mapping[str, pd.DataFrame]) -> go.Figure:
    """Test accuracy, losses, per-client accuracy spread, megabytes sent (and epsilon when a run
    has it) vs round, one colour per run (only the panels whose columns exist are drawn)."""
    runs = _as_runs(histories)
    panels = panels_for(runs) + ((EPSILON_PANEL,) if any("epsilon" in h for h in runs.values()) else ())
    panels = [p for p in panels if any(p[0] in h and h[p[0]].notna().any() for h in runs.values())]
    rows = max(1, -(-len(panels) // 2))
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[t for _, t in panels])
    for i, (name, h) in enumerate(runs.items()):
        fig.add_traces(run_traces(h, name, color(i), panels))
    fig.update_xaxes(title_text="round")
    fig.update_layout(height=330 * rows, margin=dict(l=50, r=20, t=60, b=40), template="plotly_white")
    return fig


def write_report(histories, path, title: str = "fedlab run") -> None:
    """Write a self-contained HTML file (plotly.js embedded, no network needed): the charts,
    each run's settings, and its final metrics."""
    runs = _as_runs(histories)
    fig = convergence_figure(runs).to_html(full_html=False, include_plotlyjs=True)
    summary = pd.DataFrame({name: {**getattr(h, "settings", {}), **final_metrics(h)} for name, h in runs.items()})
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>"
           f"<h1>{html.escape(title)}</h1>{fig}<h2>Runs</h2>{summary.to_html(na_rep='')}</body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)


def final_metrics(history: pd.DataFrame) -> dict:
    """The last evaluated value of each metric, total MB and seconds of a run."""
    out = {"rounds_done": int(history["round"].iloc[-1]) if len(history) else 0}
    for col in ("test_accuracy", "test_balanced_accuracy", "test_rmse", "test_mae", "test_r2", "test_loss",
                "train_loss", "client_acc_std", "client_rmse_std", "epsilon"):
        if col in history and history[col].notna().any():
            out[col] = float(history[col].dropna().iloc[-1])
    if len(history):
        out["MB_sent"] = float((history["bytes_up"] + history["bytes_down"]).sum() / 1e6)
        out["train_seconds"] = float(history["seconds"].sum())
    return out


def runs_figure(table: pd.DataFrame, y: str = "train_loss", color: str = "method", row: str | None = None,
                col: str | None = None, title: str | None = None) -> go.Figure:
    """``y`` vs round for many runs stacked in one long table (a column ``round``), one line per
    value of ``color`` and one panel per value of ``row`` x ``col``; each panel has its own y
    axis. E.g. a paper's grid: rows = straggler fraction, columns = dataset."""
    import plotly.express as px

    missing = [c for c in ("round", y, color, row, col) if c is not None and c not in table]
    if missing:
        raise ValueError(f"table has no column(s) {missing}; it has {list(table.columns)}")
    fig = px.line(table, x="round", y=y, color=color, facet_row=row, facet_col=col, title=title,
                  template="plotly_white", height=max(330, 260 * (table[row].nunique() if row else 1)))
    fig.update_yaxes(matches=None, showticklabels=True)
    return fig


def tail_summary(table: pd.DataFrame, by: list[str], y: str = "train_loss", last: int = 10) -> pd.DataFrame:
    """Per run (the groups of ``by``): the mean of ``y`` over its ``last`` rounds and its
    instability, the mean absolute change of ``y`` from one round to the next over the run."""
    def one(run: pd.DataFrame) -> pd.Series:
        values = run.sort_values("round")[y]
        return pd.Series({"final": values.iloc[-last:].mean(), "instability": values.diff().abs().mean()})

    return table.groupby(by, sort=False)[["round", y]].apply(one)
