"""The workbench: one widget to set up, run, stop, continue and compare federated runs in Jupyter.

    from fedlab.ui import Workbench
    wb = Workbench()          # controls, Run / Stop / Continue / Reset, live charts, the kept runs
    wb                        # (last line of a cell) shows it
    history = wb.run(algorithm="fedprox", mu=1.0, partition="dirichlet:0.3")   # blocking, for scripts

The controls describe one ``fedlab.Experiment`` (``wb.experiment()``; ``wb.show(experiment)`` sets
them from one). Run trains it with ``experiment.run`` in a background thread while the chart
listens to its rounds; Stop ends it after the current round, Continue takes a stopped run on to
the rounds it asked for; Islands and Pooled run the settings' two baselines (``baselines``).
Each kept run shows as Python code and as a command line. The parts: ``controls`` (widgets <->
Experiment), ``runner`` (threads, Stop, data), ``charts`` (the live chart), ``runs`` (kept runs,
table, exports, code), ``clients`` (the per-client view), ``data_view`` (the Data tab), ``presets``;
this class wires them.
"""
from __future__ import annotations

import html
import os
import re
import traceback
import weakref

import ipywidgets as W
import jax

import fedlab
from fedlab.ui.baselines import ISLANDS, POOLED, islands, pooled_run
from fedlab.ui.charts import LiveChart
from fedlab.ui.clients import ClientView, client_table
from fedlab.ui.controls import GIVEN, Controls, dp_available
from fedlab.ui.data_view import DataView
from fedlab.ui.presets import NONE, PRESETS
from fedlab.ui.privacy import Calibrations, calibration_key, error_text, explain, for_build
from fedlab.ui.runner import DataCache, Latest, Runner, first_line
from fedlab.ui.runs import RunList, can_continue, experiment_of, outcome, progress_text


def in_voila() -> bool:
    """Whether this kernel serves a Voila app (Voila sets SERVER_SOFTWARE=voila/... for it): the
    notebook's prose around the workbench is then hidden."""
    return os.environ.get("SERVER_SOFTWARE", "").startswith("voila")


class RunError(RuntimeError):
    """A run ended by an exception; the workbench shows the message and keeps it here."""


class Workbench:
    """Controls, Run / Stop / Continue / Reset, live charts and the kept runs, as code too.

    data: an optional FederatedDataset of your own (shown as the dataset '(given)');
    redraw_interval: minimum seconds between chart redraws while training (default 0.5: each redraw
    sends the whole figure, which the browser draws anew);
    compilation_cache: directory for JAX's persistent compilation cache (True: fedlab's,
    $FEDLAB_CACHE/jax or ~/.cache/fedlab/jax; None or False: do not set one);
    warm_up: load the data and compile the initial settings' round in the background (needs the
    compilation cache);
    settings: initial values, as :meth:`run` takes them.
    """

    def __init__(self, data=None, *, redraw_interval: float = 0.5,
                 compilation_cache: str | bool | None = True, warm_up: bool = True, **settings):
        if not (isinstance(redraw_interval, (int, float)) and redraw_interval >= 0):
            raise ValueError(f"redraw_interval must be a number of seconds >= 0, got {redraw_interval!r}")
        if compilation_cache and not jax.config.jax_compilation_cache_dir:   # keep a cache already set
            fedlab.enable_compilation_cache(None if compilation_cache is True else compilation_cache,
                                            min_compile_seconds=0.2)
        self.given_data, self.redraw_interval = data, float(redraw_interval)
        self.data, self.runner = DataCache(data), Runner()
        self.form = Controls(given=None if data is None else data.name)
        self.controls = self.form.widgets
        self.chart = LiveChart(self.redraw_interval)
        self.data_view = DataView(self.data)
        self.client_view = ClientView()
        self.data_view.on_loaded = self._data_loaded
        self.calibrations = Calibrations()
        self.privacy_worker = Latest("fedlab-privacy")
        self._dp_key: tuple | None = None                # the setting the Privacy tab shows
        self.run_list = RunList(self._current)
        self.runs = self.run_list.runs
        self.last_error: BaseException | None = None
        self.last_traceback = ""
        self._start_round = 0                             # rounds the live run had when it (re)started
        self._last_name = ""                              # the run started last
        self._flagged: list = []                          # widgets marked invalid
        self._invalid_shown = False                       # the message shows an invalid setting
        self._first_seconds: float | None = None          # the live run's first round (compiling included)
        self._build()
        if settings:
            self.form.apply(settings)
        self._settings_changed()
        self._hook_ipython()
        if warm_up and compilation_cache:
            self.progress.value = "<i>warming up (loading data, compiling)...</i>"   # never 'ready' before
            self.runner.warm_up(self._warm_up)

    def _build(self):
        self.run_button = W.Button(description="Run", button_style="success", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.continue_button = W.Button(description="Continue", icon="forward", disabled=True,
                                        tooltip="continue the chosen (else the last) stopped run to its rounds")
        self.islands_button = W.Button(description="Islands", icon="th-large",
                                       tooltip="the islands baseline: these settings with algorithm local (each client "
                                               "trains alone on its own rows, nothing is sent)")
        self.pooled_button = W.Button(description="Pooled", icon="database",
                                      tooltip="the pooled (centralized) baseline: these settings' model trained on all "
                                              "clients' rows in one place, evaluated on each client's test rows")
        self.islands_button.on_click(lambda _: self.start_baseline("islands"))
        self.pooled_button.on_click(lambda _: self.start_baseline("pooled"))
        self.reset_button = W.Button(description="Reset", icon="refresh",
                                     tooltip="forget all runs, clear the charts (asks first)")
        self.progress = W.HTML(value="<i>ready</i>")
        self.message = W.HTML()
        self.run_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.continue_button.on_click(lambda _: self.start_continue())
        self.reset_button.on_click(lambda _: self._ask_reset())
        self.confirm_reset = W.Button(description="Delete all runs", button_style="danger", icon="trash")
        self.cancel_reset = W.Button(description="Cancel")
        self.confirm_text = W.HTML()
        self.confirm_box = W.HBox([self.confirm_text, self.confirm_reset, self.cancel_reset],
                                  layout=W.Layout(display="none", align_items="center"))
        self.confirm_reset.on_click(lambda _: self.reset())
        self.cancel_reset.on_click(lambda _: setattr(self.confirm_box.layout, "display", "none"))
        self.run_list.overlay.observe(lambda _: self._compare(), "value")
        self.run_list.chosen.observe(lambda _: self._update_continue(), "value")
        self.run_list.chosen.observe(lambda _: self._show_clients(), "value")
        self.run_list.load_button.on_click(lambda _: self._load_chosen())
        self.form.on_change(self._settings_changed)
        self.preset = W.Dropdown(options=[NONE, *PRESETS], value=NONE, description="teaching preset",
                                 style={"description_width": "initial"}, layout=W.Layout(width="480px"),
                                 tooltip="set every control to a setting that shows one idea; run the presets of "
                                         "one number one after the other and compare")
        self.preset_info = W.HTML()
        self.preset.observe(lambda _: self._apply_preset(), "value")
        style = W.HTML("<style>.fedlab-invalid input, .fedlab-invalid select, .fedlab-invalid textarea "
                       "{border: 2px solid #c00 !important; background: #fff0f0 !important}"
                       ".fedlab-runs-table td, .fedlab-runs-table th {padding: 2px 8px}"
                       + ((".jp-MarkdownCell:not(:has(h1)), .jp-CodeCell:not(:has(.fedlab-workbench)) "
                           "{display: none !important}") if in_voila() else "") + "</style>")
        buttons = W.HBox([self.run_button, self.stop_button, self.continue_button, self.islands_button,
                          self.pooled_button, self.reset_button, self.progress],
                         layout=W.Layout(align_items="center"))
        for button in buttons.children[:-1]:       # never squeezed to "Conti..." by a long status
            button.layout.flex, button.layout.width = "0 0 auto", "auto"
        data_tab = self.form.tabs.children[0]
        data_tab.children = (*data_tab.children, self.data_view.box)
        self.widget = W.VBox([style, W.HBox([self.preset, self.preset_info], layout=W.Layout(align_items="center")),
                              self.form.tabs, buttons, self.confirm_box, self.message, self.chart.box, self.client_view.box,
                               self.run_list.widget], layout=W.Layout(width="100%"))
        self.widget.add_class("fedlab-workbench")

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _hook_ipython(self):
        """Refresh after every notebook cell, so registering a strategy needs no other step."""
        try:
            from IPython import get_ipython
        except ImportError:                     # pragma: no cover
            return
        ip = get_ipython()
        if ip is None:
            return
        me = weakref.ref(self)

        def after_cell(*_):
            wb = me()
            if wb is None:
                ip.events.unregister("post_run_cell", after_cell)
            elif not wb.running:
                wb.refresh()

        ip.events.register("post_run_cell", after_cell)

    def _warm_up(self):
        """Load the data and compile one round of the current settings into the persistent cache
        while the user reads the controls, so the first Run shows its first point sooner."""
        try:
            experiment = self.form.experiment()
            data = None if Runner.exiting() else self.data.load(experiment, self.form.uses_given)
            if data is not None and not Runner.exiting():
                built = for_build(experiment, data.num_clients, self.calibrations).build(data)   # the Run's noise
                experiment.replace(rounds=1).run(progress=False, built=built)
        except Exception:               # noqa: BLE001 - a real run reports the same problem
            pass
        finally:
            if not self.running:
                self.progress.value = "<i>ready</i>"
            self._update_dp_info()      # the data is at hand now

    # -- the settings -------------------------------------------------------------------------------
    def experiment(self) -> fedlab.Experiment:
        """The Experiment the controls describe (ValueError names a bad setting)."""
        return self.form.experiment()

    def show(self, experiment: fedlab.Experiment) -> None:
        """Set the controls from ``experiment``."""
        self.form.show(experiment)

    def settings(self) -> dict:
        """The controls as plain values: ``experiment().to_dict()``."""
        return self.experiment().to_dict()

    def refresh(self):
        """Re-read the registries (a strategy registered since shows up); keeps the selections."""
        self.form.refresh()

    @property
    def algorithm_names(self) -> list[str]:
        return self.form.names("algorithm")

    def _given_name(self, given: bool) -> str | None:
        return self.given_data.name if given else None

    def _current(self) -> tuple:
        """(the controls' Experiment, or the error they raise; the name of given data or None)."""
        try:
            return self.form.experiment(), self._given_name(self.form.uses_given)
        except Exception as err:       # noqa: BLE001 - shown in the code view
            return err, None

    def _apply_preset(self):
        name = self.preset.value
        if name not in PRESETS:
            self.preset_info.value = ""
            return
        experiment, about = PRESETS[name]
        try:
            self.form.show(experiment)
            self.preset_info.value = f"<small>{html.escape(about)}</small>"
        except ValueError as err:
            self._fail(err)

    def _settings_changed(self):
        self._validate()
        self._show_data()
        self._update_dp_info()
        if self.run_list.chosen.value not in self.runs:
            self.run_list.show_code()

    def _validate(self):
        """Flag an invalid value at its field (red border, the message above the charts) as soon as
        it is typed; clear both once the settings are valid again. A clients-per-round above the
        clients of data already loaded counts as invalid too."""
        for widget in self._flagged:
            widget.remove_class("fedlab-invalid")
        self._flagged = []
        error = None
        try:
            experiment = self.form.experiment()
            data = self.data.cached(experiment, self.form.uses_given)
            m = experiment.clients_per_round
            if data is not None and m is not None and m > data.num_clients:
                raise ValueError(f"clients_per_round must be at most the {data.num_clients} clients of this data, "
                                 f"got {m}")
        except Exception as err:       # noqa: BLE001 - a factory may raise anything
            error = err
        if error is None:
            if self._invalid_shown or isinstance(self.last_error, ValueError):
                self._clear()
                self._invalid_shown = False
            return
        widget = self._widget_named(str(error))
        if widget is not None:
            widget.add_class("fedlab-invalid")
            self._flagged.append(widget)
        self._fail(error)
        self._invalid_shown = True

    def _widget_named(self, message: str):
        """The widget of the setting a ValueError's message starts with ('batch_size must be ...')."""
        match = re.match(r"\s*(\w+)", message)
        name = match.group(1) if match else ""
        work = {"local_steps": "work_amount", "local_epochs": "work_amount"}
        if name in work:
            return self.form.widgets[work[name]]
        if name in self.form.widgets:
            return self.form.widgets[name]
        for kind in ("algorithm", "model", "dataset", "partition"):
            knobs = self.form.knobs(kind)
            if name in knobs:
                return knobs[name].widget
        return None

    def _data_loaded(self, data):
        """(In the data thread.) Offer only the models that fit this data: no cnn for a table."""
        from fedlab.core.registry import MODELS

        fits = set()
        for name in MODELS.names():
            try:
                MODELS[name].factory(data.input_shape, data.num_classes)
                fits.add(name)
            except Exception:          # noqa: BLE001 - a model that does not fit this data
                pass
        self.form.offer("model", fits)

    def _show_data(self):
        """Draw the data the Data tab's settings give (loaded in the background if need be)."""
        try:
            self.data_view.show(self.form.data_experiment(), self.form.uses_given)
        except Exception as err:       # noqa: BLE001 - an invalid data setting is named there
            self.data_view.invalid(err)

    def _update_dp_info(self):
        """The Privacy tab: the epsilon the controls' run spends, computed in the background (the
        data loaded, the noise calibrated once per setting) while it says "computing epsilon..."."""
        if not dp_available():
            return
        try:
            experiment = self.form.experiment()
        except Exception as err:       # noqa: BLE001 - shown in place of the epsilon
            self._dp_key, self.form.dp_info.value = None, error_text(err)
            return
        if experiment.privacy is None:
            self._dp_key, self.form.dp_info.value = None, "<i>no privacy guarantee</i>"
            return
        given = self.form.uses_given
        key = (experiment.to_json(), given)
        if key == self._dp_key:
            return
        self._dp_key = key
        data = self.data.cached(experiment, given)
        calibration = None if data is None else calibration_key(experiment, data.num_clients)
        if data is None or (calibration is not None and self.calibrations.cached(calibration) is None):
            self.form.dp_info.value = "<i class='fedlab-computing'>computing epsilon...</i>"
        self.privacy_worker.submit(lambda: self._explain_privacy(key, experiment, given))

    def _explain_privacy(self, key: tuple, experiment, given: bool):
        """(In the privacy thread.) Load, calibrate (cached), build, and say what the run spends."""
        if key != self._dp_key:
            return
        try:
            data = self.data.load(experiment, given)
            built = for_build(experiment, data.num_clients, self.calibrations).build(data)
            text = explain(experiment, built, built.strategy.report(experiment.rounds))
        except Exception as err:       # noqa: BLE001 - shown in place of the epsilon
            text = error_text(err)
        if key == self._dp_key:
            self.form.dp_info.value = text

    def wait_idle(self, timeout: float = 120) -> bool:
        """Block until the Data tab and the Privacy tab have caught up with the controls."""
        return self.data_view.wait(timeout) and self.privacy_worker.wait(timeout)

    def _load_chosen(self):
        name = self.run_list.chosen.value
        self.form.show(experiment_of(self.runs[name]))
        if name in self.run_list.given:
            self.controls["dataset"].value = GIVEN

    # -- running ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.runner.running

    def start(self) -> bool:
        """Start a run of the controls' Experiment in the background (what Run does). Returns
        False (and shows why) if nothing started."""
        if self.running:
            return False
        self.refresh()
        self._clear()
        try:
            experiment = self.form.experiment()
        except Exception as err:       # noqa: BLE001 - a factory may raise anything
            self._fail(err, traceback.format_exc())
            return False
        given = self._given_name(self.form.uses_given)
        return self._launch(experiment, self.run_list.new_name(experiment, given), given)

    def start_baseline(self, kind: str) -> bool:
        """Start a baseline of the controls' settings in the background (what Islands and Pooled
        do): kind "islands" (``algorithm="local"``) or "pooled" (``fedlab.transfer.pooled``'s
        centralized reference, drawn round by round). Returns False (and shows why) if nothing started."""
        if self.running:
            return False
        self._clear()
        try:
            if kind not in ("islands", "pooled"):
                raise ValueError(f"baseline must be 'islands' or 'pooled', got {kind!r}")
            experiment = self.form.experiment()
            if kind == "islands":
                experiment = islands(experiment)
        except Exception as err:       # noqa: BLE001 - a factory may raise anything
            self._fail(err, traceback.format_exc())
            return False
        given = self._given_name(self.form.uses_given)
        name = self.run_list.new_name(experiment, given, label=ISLANDS if kind == "islands" else POOLED)
        return self._launch(experiment, name, given, pooled=kind == "pooled")

    def run_baseline(self, kind: str) -> "fedlab.History":
        """The islands or pooled baseline of the controls' settings (see :meth:`start_baseline`),
        blocking; returns its History (kept as a run)."""
        if self.running:
            raise RuntimeError("a run is in progress; stop it or wait() first")
        return self._finish(self.start_baseline(kind))

    def start_continue(self, name: str | None = None, rounds: int | None = None) -> bool:
        """Continue kept run ``name`` (default: the chosen, else the last) up to ``rounds`` (default:
        the rounds it asked for) in the background (what Continue does); its History is replaced
        by the longer one. Returns False (and shows why) if nothing started."""
        if self.running:
            return False
        self._clear()
        try:
            name = name or self.run_list.chosen_run
            if name not in self.runs:
                raise ValueError(f"no run {name!r} to continue; the runs are {list(self.runs)}")
            history = self.runs[name]
            if history.attrs.get("baseline"):
                raise ValueError(f"rounds: {name} is a baseline; run it again instead of continuing it")
            experiment = experiment_of(history)
            if rounds is not None and rounds != experiment.rounds:
                if experiment.privacy is not None and experiment.privacy.target_epsilon is not None:
                    raise ValueError("rounds: a run with a target epsilon continues only to the rounds its "
                                     "noise was calibrated for")
                experiment = experiment.replace(rounds=rounds)
            if not can_continue(history, experiment.rounds):
                raise ValueError(f"rounds: {name} {history.status} after {history.state.round} of "
                                 f"{experiment.rounds} rounds; only a stopped run, or one given more rounds, continues")
        except ValueError as err:
            self._fail(err)
            return False
        return self._launch(experiment, name, self.run_list.given.get(name), after=history)

    def _launch(self, experiment, name: str, given: str | None, after=None, pooled: bool = False) -> bool:
        self._start_round, self._last_name = (0 if after is None else after.state.round), name
        self._first_seconds = None
        self.chart.begin(name, self.run_list.color(name), [] if after is None else after.to_dict("records"),
                         epsilon=experiment.privacy is not None and not pooled)
        self.progress.value = "<i>loading data and compiling...</i>"
        self._set_busy(True)
        self.runner.start(self._work, experiment, name, given, after, pooled)
        return True

    def _work(self, experiment, name: str, given: str | None, after, pooled: bool = False):
        """The training thread: build, run with the chart and Stop listening, keep the History."""
        history = None
        try:
            self.runner.wait_for_warm_up()
            data = self.data.load(experiment, given is not None)
            if pooled:
                self.progress.value = "<i>compiling...</i>"
                history = pooled_run(experiment, data, callbacks=[self._on_round, self.runner.check_stop])
                self.run_list.keep(name, history, given, client_table(history, data))
                self._show_clients()
                return
            calibration = calibration_key(experiment, data.num_clients)
            if calibration is not None and self.calibrations.cached(calibration) is None:
                self.progress.value = "<i>computing epsilon (calibrating the noise)...</i>"
            built = for_build(experiment, data.num_clients, self.calibrations).build(data)
            self.progress.value = "<i>compiling...</i>"
            if self.runner.stop_flag.is_set():
                self.progress.value = "<i>stopped before the first round</i>"
                return
            history = experiment.run(callbacks=[self._on_round, self.runner.check_stop], progress=False,
                                     built=built, after=after)
            self.run_list.keep(name, history, given, client_table(history, built.data))
            self._show_clients()
        except Exception as err:       # noqa: BLE001 - every failure is shown in the UI
            self._fail(err, traceback.format_exc())
            self.progress.value = "<i>failed</i>"
        finally:
            try:
                self.chart.end()
                self.chart.compare(self.run_list.shown())     # the last redraw...
            finally:
                if history is not None:     # ...before the status says how the run ended
                    self.progress.value = outcome(history)
                self._set_busy(False)
                self._update_dp_info()

    def _on_round(self, event):
        """Round callback (in the training thread): collect, redraw if due, show the progress."""
        rounds_now = event.round - self._start_round
        if rounds_now == 1:
            self._first_seconds = event.elapsed
        if self.chart.add(event.metrics):
            self.progress.value = progress_text(event, rounds_now, self._first_seconds)

    def _show_clients(self):
        """The per-client view of the chosen (else the last) run."""
        name = self.run_list.chosen_run
        table = self.run_list.extra.get(name) if name is not None else None
        self.client_view.show(name if table is not None else None, table,
                              self.run_list.color(name) if name in self.runs else "#1f77b4",
                              getattr(self.runs.get(name), "client_rounds", None))

    def clients(self, name: str | None = None):
        """The per-client table of kept run ``name`` (default: the chosen, else the last): the final
        model's test accuracy per client, its size and label skew, and ``personal_accuracy`` (the
        model the client uses) when the run personalizes (a DataFrame). Each round's values per
        client are the run's ``history.client_rounds``."""
        name = name or self.run_list.chosen_run
        if name not in self.runs:
            raise ValueError(f"no run {name!r}; the runs are {list(self.runs)}")
        return self.run_list.extra.get(name)

    def _compare(self):
        """Redraw the chosen finished runs (not while training: the run in progress redraws)."""
        if not self.running:
            self.chart.compare(self.run_list.shown())

    def stop(self):
        """Ask the running training to end after the current round (what Stop does)."""
        self.runner.stop()
        if self.running:
            self.progress.value += " <i>stopping...</i>"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run ends; True if none is running any more."""
        return self.runner.wait(timeout)

    def run(self, experiment: fedlab.Experiment | None = None, **settings) -> "fedlab.History":
        """Set the controls (from ``experiment``, then ``settings``), run to the end (blocking)
        and return the History, whatever its status (completed, stopped, diverged, failed).

        settings: Experiment fields (rounds=20, clients_per_round=10, local_steps=20, seed=1,
        privacy=fedlab.Privacy(...)), dataset and partition as specs (dataset='synthetic:0.5,0.5',
        partition='dirichlet:0.3'), the algorithm's and model's options by name (mu=1.0,
        client_lr=0.05), the Privacy tab by name (dp='noise multiplier', clip=1.0, ...). Bad
        settings raise their ValueError (also shown in the widget); a run that could not start
        or ended by an exception raises RunError.
        """
        if self.running:
            raise RuntimeError("a run is in progress; stop it or wait() first")
        try:
            if experiment is not None:
                self.form.show(experiment)
            self.form.apply(settings)
        except ValueError as err:
            self._fail(err)
            raise
        return self._finish(self.start())

    def continue_run(self, name: str | None = None, rounds: int | None = None) -> "fedlab.History":
        """Continue a kept run (see :meth:`start_continue`), blocking; return its new History."""
        if self.running:
            raise RuntimeError("a run is in progress; stop it or wait() first")
        return self._finish(self.start_continue(name, rounds))

    def _finish(self, started: bool) -> "fedlab.History":
        if started:
            self.wait()
        if isinstance(self.last_error, ValueError):     # bad settings: the message names the setting
            raise self.last_error
        if self.last_error is not None:
            raise RunError(f"{type(self.last_error).__name__}: {self.last_error}") from self.last_error
        if self._last_name not in self.runs:
            raise RunError(f"{self._last_name} ended before its first round")
        return self.runs[self._last_name]

    def _set_busy(self, busy: bool):
        self.form.disabled = self.run_list.disabled = busy
        self.run_button.disabled = self.reset_button.disabled = busy
        self.islands_button.disabled = self.pooled_button.disabled = busy
        self.stop_button.disabled = not busy
        self._update_continue(busy)

    def _update_continue(self, busy: bool | None = None):
        """Continue is on for the chosen (else the last) run if it stopped before its rounds."""
        name = self.run_list.chosen_run
        busy = self.running if busy is None else busy
        self.continue_button.disabled = (busy or name is None or not can_continue(self.runs[name])
                                         or bool(self.runs[name].attrs.get("baseline")))

    # -- messages -------------------------------------------------------------------------------------
    def _clear(self):
        self.message.value = ""
        self.last_error, self.last_traceback = None, ""

    def _fail(self, err: BaseException, tb: str = ""):
        self.last_error, self.last_traceback = err, tb
        first = first_line(err)
        kind = "Invalid setting" if isinstance(err, ValueError) else type(err).__name__
        hint = "" if isinstance(err, ValueError) else " <small>(full traceback: <code>wb.last_traceback</code>)</small>"
        self.message.value = (f"<div style='color:#a00;background:#fee;padding:4px 8px;border-radius:4px'>"
                              f"<b>{html.escape(kind)}</b>: {html.escape(first)}{hint}</div>")

    # -- the kept runs --------------------------------------------------------------------------------
    @property
    def figure(self):
        return self.chart.figure

    @property
    def overlay(self):
        return self.run_list.overlay

    def table(self):
        """One row per kept run: its settings, how it ended, its final metrics (a DataFrame)."""
        return self.run_list.table()

    def export_csv(self, path: str | None = None, overwrite: bool = False) -> str:
        """Write the runs table as CSV on the kernel's machine; returns the path (default: a
        timestamped name here; an existing file is never replaced unless ``overwrite``). The
        page's download link gives the same file to the browser."""
        return self.run_list.export_csv(path, overwrite)

    def export_html(self, path: str | None = None, overwrite: bool = False) -> str:
        """Write a self-contained HTML report of the runs shown (all if none is selected)."""
        return self.run_list.export_html(path, overwrite)

    def rename(self, name: str, label: str) -> str:
        """Rename kept run ``name`` ('#3 ...' keeps its number); returns the new name."""
        return self.run_list.rename(name, label)

    def delete(self, name: str) -> None:
        """Forget kept run ``name``."""
        self.run_list.delete(name)
        self._compare()
        self._show_clients()
        self._update_continue()

    def _ask_reset(self):
        """Reset asks first when there are runs to lose."""
        if not self.runs:
            self.reset()
            return
        n = len(self.runs)
        self.confirm_text.value = f"<b>Delete all {n} run{'s' * (n != 1)}?</b> (the settings stay)"
        self.confirm_box.layout.display = None

    def reset(self):
        """Forget all runs and clear the charts, the table and messages (settings stay)."""
        self.confirm_box.layout.display = "none"
        if self.running:
            return
        self.run_list.reset()
        self.chart.compare({})
        self._show_clients()
        self.progress.value = "<i>ready</i>"
        self._clear()
        self._update_continue()
