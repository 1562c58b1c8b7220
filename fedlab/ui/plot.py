"""A plotly figure in the workbench, drawn by the notebook's own plotly renderer.

``PlotView`` keeps a ``plotly.graph_objects.Figure`` and shows it in an ``ipywidgets.Output``
as a plotly output (the ``application/vnd.plotly.v1+json`` bundle that JupyterLab, Notebook 7 and
Voila render with the plotly extension loaded once per page). Change ``figure`` (or give a new
one to ``show``), then ``push()``: the whole figure is sent again, which the live chart keeps
small by throttling and thinning.

Why not ``go.FigureWidget``: with plotly >= 7 each FigureWidget is an anywidget that ships the
5 MB plotly.js bundle to the browser as its own module, and anywidget gives a model 2 s to load
it. On a busy machine that is missed, and the widget then drops every later update (a chart
that never shows a point). The output renderer has no such deadline and loads plotly.js once.
"""
from __future__ import annotations

import base64
import json

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

MIME = "application/vnd.plotly.v1+json"


def plain(spec):
    """``spec`` with plotly's base64 typed arrays (``{"dtype", "bdata", "shape"}``) turned back into
    JSON lists: what the browser holds in a plot's ``data`` is then the numbers themselves (a page
    script, or a test, reads ``x`` as an array)."""
    if isinstance(spec, dict):
        if "bdata" in spec and "dtype" in spec:
            values = np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.dtype(spec["dtype"]).newbyteorder("<"))
            if "shape" in spec:
                values = values.reshape([int(n) for n in str(spec["shape"]).split(",")])
            return values.tolist()
        return {k: plain(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [plain(v) for v in spec]
    return spec


def blank(height: int = 40) -> go.Figure:
    """An empty placeholder figure of ``height`` pixels, without axes."""
    return go.Figure(layout=dict(height=height, margin=dict(t=5, b=5), template="plotly_white",
                                 xaxis=dict(visible=False), yaxis=dict(visible=False)))


class PlotView:
    """``widget``: the Output to place in a layout; ``figure``: the figure it shows."""

    def __init__(self, figure: go.Figure | None = None):
        self.widget = W.Output(layout=W.Layout(width="100%"))
        self.figure = go.Figure() if figure is None else figure
        self.push()

    def show(self, figure: go.Figure) -> None:
        """Show ``figure`` in place of the current one."""
        self.figure = figure
        self.push()

    def push(self) -> None:
        """Send the figure as it is now (only one thread may call this at a time)."""
        spec = plain(json.loads(pio.to_json(self.figure, validate=False)))
        height = self.figure.layout.height
        # the output area keeps the figure's height while a new one replaces it: no jump in the page
        self.widget.layout.min_height = f"{int(height)}px" if height else None
        self.widget.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": {MIME: spec, "text/plain": "<plotly figure>"}},)
