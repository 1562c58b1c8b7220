"""Jupyter widgets for fedlab: ``Workbench`` (controls, live charts, run comparison, runs as code).

workbench.py wires the parts: controls.py (widgets <-> fedlab.Experiment), runner.py (the
training thread, Stop, warm-up, data), charts.py (the live chart), runs.py (kept runs, table,
exports, each run as code and as a command line), clients.py (the per-client view), baselines.py
(the islands and pooled baselines), data_view.py (the partition and data-quality heatmaps),
presets.py (teaching presets)."""
from fedlab.ui.controls import dp_available
from fedlab.ui.workbench import RunError, Workbench

__all__ = ["RunError", "Workbench", "dp_available"]
