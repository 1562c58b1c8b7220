"""Jupyter widgets for fedlab: ``Workbench`` (controls, live charts, run comparison)."""
from fedlab.ui.workbench import RunError, Workbench, dp_available

__all__ = ["RunError", "Workbench", "dp_available"]
