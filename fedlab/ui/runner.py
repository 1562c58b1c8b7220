"""Background work for the workbench: the training thread, Stop, the warm-up, the data cache.

Training runs in a daemon thread so the kernel stays free and the chart updates while a cell could
run. Stop sets a ``threading.Event`` that ``check_stop`` (a round callback) turns into
``fedlab.StopTraining``, so a stopped run ends after the current round and keeps the rounds it
finished (a kernel interrupt cannot reach a thread; the flag can). One training thread per
kernel: starting a run ends any other workbench's run first. At interpreter exit the threads are
stopped and joined before JAX is torn down (a thread still compiling then aborts the process).
"""
from __future__ import annotations

import atexit
import json
import threading
import weakref
from collections import OrderedDict
from typing import Callable

import fedlab

_exiting = threading.Event()            # set at interpreter exit: the warm-up skips what is left
_warm_ups: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()


class Runner:
    """At most one training thread (``start``), a Stop flag, and the warm-up thread."""

    active: "weakref.WeakSet[Runner]" = weakref.WeakSet()     # runners with a training thread

    def __init__(self):
        self.stop_flag = threading.Event()
        self.thread: threading.Thread | None = None
        self.warm: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @staticmethod
    def exiting() -> bool:
        """True once the interpreter is exiting (background work should end)."""
        return _exiting.is_set()

    def start(self, work: Callable, *args) -> None:
        """Run ``work(*args)`` in the training thread, after ending any other runner's run."""
        for other in list(Runner.active):
            if other is not self:
                other.stop()
                other.wait()
        self.stop_flag.clear()
        Runner.active.add(self)
        self.thread = threading.Thread(target=self._run, args=(work, args), name="fedlab-workbench", daemon=True)
        self.thread.start()

    def _run(self, work: Callable, args: tuple) -> None:
        try:
            work(*args)
        finally:
            Runner.active.discard(self)

    def stop(self) -> None:
        """Ask the training to end after the current round."""
        self.stop_flag.set()

    def check_stop(self, event) -> None:
        """Round callback: end the run (``StopTraining``) once Stop was asked for."""
        if self.stop_flag.is_set():
            raise fedlab.StopTraining

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the training thread ends; True if none is running any more."""
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        return not self.running

    def warm_up(self, work: Callable) -> None:
        """Run ``work()`` in a background thread that ``wait_for_warm_up`` (and exit) joins."""
        self.warm = threading.Thread(target=work, name="fedlab-warm-up", daemon=True)
        _warm_ups.add(self.warm)
        self.warm.start()

    def wait_for_warm_up(self) -> None:
        if self.warm is not None:
            self.warm.join()


@atexit.register                        # registered after jax's own hooks, so it runs before them
def _end_background_threads():
    """A daemon thread still inside JAX (compiling) when the interpreter tears JAX down aborts the
    process ("terminate called ...", exit code 134): end the warm-up and any training (after its
    current round) and wait for them first."""
    _exiting.set()
    for runner in list(Runner.active):
        runner.stop()
    for runner in list(Runner.active):
        runner.wait()
    for thread in list(_warm_ups):
        thread.join()


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when the message is empty), as the
    UI shows a failure in one line."""
    return (str(err).strip() or type(err).__name__).splitlines()[0]


class Latest:
    """One background thread that does the latest job asked for: ``submit(job)`` while a job runs
    queues ``job`` in place of any job queued before (a slider dragged across ten values loads
    the data of the last one, not ten times). A job is a function of no arguments; it reports
    through widgets, and catches its own errors (one that escapes is kept in ``error``)."""

    def __init__(self, name: str):
        self.name = name
        self._next: Callable | None = None
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self.thread: threading.Thread | None = None
        self._active = False                # a thread is in _loop (set and cleared under the lock)
        self.error: BaseException | None = None

    def submit(self, job: Callable) -> None:
        with self._lock:
            self._next = job
            self._idle.clear()
            if not self._active:
                self._active = True
                self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                _warm_ups.add(self.thread)          # joined at exit, like the warm-up
                self.thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                job, self._next = self._next, None
                if job is None or _exiting.is_set():
                    self._next, self._active = None, False
                    self._idle.set()
                    return
            try:
                job()
            except Exception as err:       # noqa: BLE001 - kept for the tests; jobs show their own
                self.error = err

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running; True if idle."""
        return self._idle.wait(timeout)

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()


class DataCache:
    """The last few federated datasets loaded, by the settings they depend on; or the dataset
    given to the workbench. Thread-safe (the warm-up and the training thread both load)."""

    def __init__(self, given=None, size: int = 8):
        self.given, self.size = given, size
        self._data: "OrderedDict[str, object]" = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(experiment) -> str:
        s = experiment.to_dict()
        return json.dumps([s[k] for k in ("dataset", "dataset_options", "partition", "partition_options",
                                          "num_clients", "test_fraction", "seed")])

    def cached(self, experiment, given: bool):
        """The data if it is at hand without loading (given, or loaded before), else None."""
        return self.given if given else self._data.get(self.key(experiment))

    def load(self, experiment, given: bool):
        """The data of ``experiment`` (the given dataset if ``given``), loaded once."""
        if given:
            return self.given
        key = self.key(experiment)
        with self._lock:
            if key not in self._data:
                self._data[key] = experiment.load_data()
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)
            return self._data[key]
