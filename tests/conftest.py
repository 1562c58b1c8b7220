"""Shared test helpers."""
from __future__ import annotations

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def execute_notebook(name: str, timeout: int = 600):
    """Execute notebooks/<name> headless with FEDLAB_SMOKE=1 (the notebooks' smoke switch)
    and return the executed notebook; a failing cell raises with its traceback."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    old = os.environ.get("FEDLAB_SMOKE")
    os.environ["FEDLAB_SMOKE"] = "1"
    try:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=False,
                                resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        if old is None:
            os.environ.pop("FEDLAB_SMOKE", None)
        else:
            os.environ["FEDLAB_SMOKE"] = old
    return nb
