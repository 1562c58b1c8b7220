"""Shared test helpers."""
from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import tempfile
import threading

import jax
import numpy as np
import pytest

import fedlab

ROOT = pathlib.Path(__file__).resolve().parents[1]

# One persistent compilation cache per test process: many tests compile the same round program
# again (the resume tests run each experiment three times), and a cache hit replaces the compile.
_JAX_CACHE = tempfile.mkdtemp(prefix="fedlab-test-jax-cache-")
fedlab.enable_compilation_cache(_JAX_CACHE)
atexit.register(shutil.rmtree, _JAX_CACHE, True)
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


def toy_data(num_clients=6, features=5, classes=3, seed=0, nan=False):
    """A small classification FederatedDataset: clients of 4-14 training and 3 test rows whose
    features shift with the client index; ``nan=True`` plants a NaN in client 0."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(features, classes))
    train, test = [], []
    for k in range(num_clients):
        n = int(rng.integers(4, 15))
        x = rng.normal(k * 0.3, 1.0, size=(n + 3, features)).astype(np.float32)
        y = np.argmax(x @ W + rng.normal(size=(n + 3, classes)), 1)
        train.append((x[:n], y[:n]))
        test.append((x[n:], y[n:]))
    if nan:
        train[0][0][0, 0] = np.nan
    return fedlab.FederatedDataset.from_clients("toy", train, test, classes)


class ProgramCount:
    """Programs that JAX lowers or XLA compiles in this thread while the ``with`` block runs
    (jax.monitoring events, sent by the compiling thread: another test's background compile in
    the same worker does not count; a lowering counts even when a cache then supplies the program)."""

    EVENTS = ("/jax/core/compile/jaxpr_to_mlir_module_duration", "/jax/core/compile/backend_compile_duration")

    def __enter__(self):
        self.count, self.thread = 0, threading.get_ident()
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event, duration, **kwargs):
        self.count += event in self.EVENTS and threading.get_ident() == self.thread

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)
