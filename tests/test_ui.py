"""The workbench driven from Python, as a user drives it with clicks (no browser needed)."""
from __future__ import annotations

import html
import os
import shlex
import subprocess
import sys
import time

import jax
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("ipywidgets")

import fedlab  # noqa: E402
from conftest import ROOT  # noqa: E402
from fedlab.algorithms import common  # noqa: E402
from fedlab.core.registry import ALGORITHMS  # noqa: E402
from fedlab.ui import RunError, Workbench, dp_available  # noqa: E402
from fedlab.ui.runs import CONTROLS  # noqa: E402
from fedlab.report import run_traces  # noqa: E402


@pytest.fixture(scope="module")
def data():
    """6 clients of a 3-class, 5-feature linear problem, 40 train / 10 test rows each."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3))
    parts = []
    for k in range(6):
        x = rng.normal(loc=0.3 * k, size=(50, 5))
        parts.append((x, np.argmax(x @ w, 1)))
    return fedlab.FederatedDataset.from_clients("toy", [(x[:40], y[:40]) for x, y in parts],
                                                [(x[40:], y[40:]) for x, y in parts], 3)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jaxcache"))


def make(data, cache_dir, **settings):
    base = dict(rounds=5, clients_per_round=3, local_steps=4, batch_size=8, num_clients=0, client_lr=0.1)
    return Workbench(data, redraw_interval=0.0, compilation_cache=cache_dir, warm_up=False, **{**base, **settings})


def sent(view) -> list[dict]:
    """The traces a PlotView last sent to the browser (its plotly output, as the page receives it)."""
    (output,) = view.widget.outputs
    return output["data"]["application/vnd.plotly.v1+json"]["data"]


def record_lengths(wb):
    """Wrap the chart's redraw to log the accuracy trace length after every redraw."""
    lengths, redraw = [], wb.chart.redraw

    def logged():
        redraw()
        lengths.append(len(wb.figure.data[0].x))
    wb.chart.redraw = logged
    return lengths


def without_timing(history) -> pd.DataFrame:
    return pd.DataFrame(history).drop(columns=["seconds", "elapsed"]).reset_index(drop=True)


def test_run_click_draws_every_round_and_matches_simulate(data, cache_dir):
    wb = make(data, cache_dir)
    lengths = record_lengths(wb)
    wb.run_button.click()
    assert wb.running and wb.stop_button.disabled is False and wb.run_button.disabled
    assert all(w.disabled for w in wb.controls.values())
    assert wb.wait(120)
    assert wb.last_error is None, wb.last_traceback
    assert not wb.run_button.disabled and wb.stop_button.disabled
    assert lengths[:6] == [0, 1, 2, 3, 4, 5]          # one more point per round, live
    (name, history), = wb.runs.items()
    assert len(history) == 5 and not history.stopped
    # the same run straight through the engine gives the same numbers (same seed, same settings)
    direct = fedlab.simulate("fedavg", "logreg", data, rounds=5, clients_per_round=3, local_steps=4,
                             batch_size=8, client_lr=0.1, progress=False)
    np.testing.assert_allclose(history["test_accuracy"], direct["test_accuracy"], rtol=0, atol=1e-6)
    acc = wb.figure.data[0]
    np.testing.assert_allclose(acc.y, direct["test_accuracy"], atol=1e-6)
    band = wb.figure.data[2]                           # panel 3: p90 forward, p10 backward
    np.testing.assert_allclose(band.y, list(direct["client_acc_p90"]) + list(direct["client_acc_p10"])[::-1],
                               atol=1e-6)
    mb = wb.figure.data[4]
    np.testing.assert_allclose(mb.y, np.cumsum(direct["bytes_up"] + direct["bytes_down"]) / 1e6, rtol=1e-9)
    # what the browser got: the same numbers as plain JSON lists (no base64 typed arrays)
    assert sent(wb.chart.view)[0]["x"] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(sent(wb.chart.view)[0]["y"], direct["test_accuracy"], atol=1e-6)
    assert "done</b>: round 5 of 5" in wb.progress.value
    assert history.settings == wb.experiment().to_dict()                # the run is the controls' Experiment


def test_stop_ends_within_a_round_and_keeps_the_partial_history(data, cache_dir):
    wb = make(data, cache_dir, rounds=100000)
    wb.run_button.click()
    deadline = time.time() + 120
    while len(wb.chart.live_rows) < 3 and time.time() < deadline:
        time.sleep(0.01)
    done_at_click = len(wb.chart.live_rows)
    assert done_at_click >= 3
    wb.stop_button.click()
    assert wb.wait(30), "Stop did not end the run"
    (name, history), = wb.runs.items()
    assert history.stopped
    assert done_at_click <= len(history) <= done_at_click + 1        # at most the round in flight
    points = len(wb.figure.data[0].x)
    assert points == len(history)
    time.sleep(0.5)
    assert len(wb.figure.data[0].x) == points                         # nothing arrives after Stop
    assert f"stopped</b>: round {len(history)} of 100000" in wb.progress.value
    assert not any(w.disabled for w in wb.controls.values() if w is not wb.controls["dp"])
    assert not wb.continue_button.disabled                            # a stopped run can continue


@pytest.mark.parametrize("setting, words", [
    (dict(clients_per_round=50), "clients_per_round must be an integer in [1, 6], got 50"),   # Experiment.build
    (dict(client_lr=-1.0), "client_lr must be in [0.0001, 100] here (the slider's range), got -1.0"),
    (dict(algorithm="fedprox", mu=-1.0), "mu must be >= 0, got -1.0"),          # raised by the factory
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),           # Experiment.validate
    (dict(rounds=2.5), "rounds must be an integer here, got 2.5"),
])
def test_bad_values_show_a_readable_error(data, cache_dir, setting, words):
    wb = make(data, cache_dir)
    with pytest.raises((RunError, ValueError)):
        wb.run(**setting)
    assert words in html.unescape(wb.message.value)
    assert "Traceback" not in wb.message.value
    assert not wb.running and not wb.runs and not wb.run_button.disabled


def test_an_exception_is_shown_not_lost(data, cache_dir):
    """A factory that raises (when the controls make the Experiment) and a strategy whose
    server_init raises (in the training thread): the message and the traceback are kept."""
    @fedlab.register_algorithm("ui_test_broken")
    def broken(*, client_lr: float = 0.1):
        """Fails when it is built."""
        raise ZeroDivisionError("broken on purpose")

    @fedlab.register_algorithm("ui_test_broken_init")
    def broken_init(*, client_lr: float = 0.1):
        """Fails when the run starts."""
        def server_init(params):
            raise ZeroDivisionError("broken in the thread")
        return ALGORITHMS["fedavg"].factory(client_lr=client_lr)._replace(server_init=server_init)
    try:
        wb = make(data, cache_dir)
        wb.controls["algorithm"].value = "ui_test_broken"
        wb.run_button.click()
        assert wb.wait(120)
        assert "ZeroDivisionError" in wb.message.value and "broken on purpose" in wb.message.value
        assert "ZeroDivisionError" in wb.last_traceback
        assert not wb.runs and not wb.run_button.disabled
        with pytest.raises(RunError, match="broken in the thread"):
            wb.run(algorithm="ui_test_broken_init")
        assert "broken in the thread" in wb.message.value and "server_init" in wb.last_traceback
        assert "failed" in wb.progress.value and not wb.runs and not wb.run_button.disabled
    finally:
        ALGORITHMS._entries.pop("ui_test_broken")
        ALGORITHMS._entries.pop("ui_test_broken_init")


def test_a_strategy_registered_later_appears_with_its_knobs(data, cache_dir):
    wb = make(data, cache_dir)
    assert "ui_test_avgm" not in wb.algorithm_names

    @fedlab.register_algorithm("ui_test_avgm")
    def avg_server_lr(*, client_lr: float = 0.1, server_lr: float = 1.0):
        """FedAvg with a server learning rate."""
        avg = ALGORITHMS["fedavg"].factory(client_lr=client_lr)

        def server_update(state, aggregate):
            return common.add_aggregate(state, jax_scale(server_lr, aggregate))
        return avg._replace(name="ui_test_avgm", server_update=server_update)
    try:
        wb.refresh()            # in a notebook this happens after the registering cell by itself
        assert "ui_test_avgm" in wb.algorithm_names
        wb.controls["algorithm"].value = "ui_test_avgm"
        knobs = [w.description for w in wb.form.knob_boxes["algorithm"].children]
        assert knobs == ["client lr", "server lr"]
        wb.controls["algorithm"].value = "fedprox"
        assert [w.description for w in wb.form.knob_boxes["algorithm"].children] == ["mu", "client lr"]
        history = wb.run(algorithm="ui_test_avgm", server_lr=0.5, rounds=3)
        assert history.settings["algorithm_options"] == {"server_lr": 0.5}       # client_lr 0.1 is its default
        direct = fedlab.simulate("ui_test_avgm", "logreg", data, rounds=3, clients_per_round=3, local_steps=4,
                                 batch_size=8, client_lr=0.1, server_lr=0.5, progress=False)
        np.testing.assert_allclose(history["train_loss"], direct["train_loss"], rtol=1e-6)
        plain = fedlab.simulate("fedavg", "logreg", data, rounds=3, clients_per_round=3, local_steps=4,
                                batch_size=8, client_lr=0.1, progress=False)
        assert not np.allclose(history["train_loss"], plain["train_loss"])   # server_lr reached the strategy
    finally:
        ALGORITHMS._entries.pop("ui_test_avgm")


def jax_scale(s, tree):
    import optax
    return optax.tree_utils.tree_scale(s, tree)


def test_dirichlet_alpha_is_a_log_slider_and_makes_the_spec(data, cache_dir):
    wb = make(data, cache_dir)
    wb.controls["dataset"].value = "synthetic"
    wb.controls["partition"].value = "dirichlet"
    alpha = wb.form.knob_boxes["partition"].children[0]
    assert type(alpha).__name__ == "FloatLogSlider" and alpha.base == 10 and (alpha.min, alpha.max) == (-2, 2)
    alpha.value = 0.1
    assert wb.experiment().partition_spec == "dirichlet:0.1"
    assert wb.settings()["partition_options"] == {"alpha": 0.1}
    wb.form.apply({"partition": "quantity:2.5", "dataset": "synthetic:0.5,0.25"})
    assert wb.experiment().partition_spec == "quantity:2.5"
    assert wb.experiment().dataset_spec == "synthetic:0.5,0.25"


def test_the_controls_show_an_experiment_and_give_it_back(data, cache_dir):
    wb = make(data, cache_dir)
    experiments = [
        fedlab.Experiment(dataset="synthetic:0.5,0.25", partition="dirichlet:0.3", num_clients=12,
                          algorithm="fedprox", algorithm_options={"mu": 1.0, "client_lr": 0.05}, model="mlp",
                          model_options={"hidden": (32,)}, local_steps=7, rounds=3, sampling="poisson", chunk_size=4,
                          privacy=fedlab.Privacy(target_epsilon=2.0, clip=0.5)),
        fedlab.Experiment(local_epochs=2, clients_per_round=5, stragglers=0.5, seed=3, eval_every=2, test_fraction=0.3,
                          privacy=fedlab.Privacy(noise_multiplier=1.3, accountant="pld")),
        fedlab.Experiment()]
    for experiment in experiments:
        wb.show(experiment)
        assert wb.experiment() == experiment
    wb.controls["dataset"].value = "(given)"             # data given in code: its data settings do not apply
    assert wb.experiment() == fedlab.Experiment()
    with pytest.raises(ValueError, match="hidden .model mlp. must be a list of integers"):
        wb.run(model="mlp", hidden="32,x")


def test_table_overlay_exports_and_reset(data, cache_dir, tmp_path):
    wb = make(data, cache_dir, rounds=3)
    h1 = wb.run()
    h2 = wb.run(algorithm="fedprox", mu=0.5)
    table = wb.table()
    assert list(table.index) == list(wb.runs) and len(table) == 2
    assert table["algorithm"].tolist() == ["fedavg", "fedprox"]
    np.testing.assert_allclose(table["test_accuracy"], [h1["test_accuracy"].iloc[-1], h2["test_accuracy"].iloc[-1]])
    assert wb.overlay.value == (list(wb.runs)[1],)            # the run just made; others when picked
    wb.overlay.value = tuple(wb.runs)                           # the user picks both
    assert {t.name for t in wb.figure.data} == set(wb.runs)
    csv = pd.read_csv(wb.export_csv(str(tmp_path / "runs.csv")), index_col=0)
    np.testing.assert_allclose(csv["test_accuracy"], table["test_accuracy"])
    report = (tmp_path / "runs.html")
    wb.export_html(str(report))
    text = report.read_text()
    assert "plotly" in text and "fedprox" in text and len(text) > 100_000      # plotly.js is embedded
    wb.overlay.value = (list(wb.runs)[1],)
    assert {t.name for t in wb.figure.data} == {list(wb.runs)[1]}
    assert table["status"].tolist() == ["completed", "completed"] and table["mu"].tolist()[1] == 0.5
    assert list(wb.run_list.chosen.options) == [*wb.runs, CONTROLS]
    with pytest.raises(FileExistsError):                                  # never a silent overwrite
        wb.export_csv(str(tmp_path / "runs.csv"))
    wb.reset_button.click()                                               # Reset asks first
    assert len(wb.runs) == 2 and wb.confirm_box.layout.display is None and "Delete all 2 runs" in wb.confirm_text.value
    wb.cancel_reset.click()
    assert len(wb.runs) == 2 and wb.confirm_box.layout.display == "none"
    wb.reset_button.click()
    wb.confirm_reset.click()
    assert not wb.runs and len(wb.figure.data) == 0 and wb.table().empty


def test_run_traces_thin_long_histories():
    rounds = np.arange(1, 2001)
    h = pd.DataFrame({"round": rounds, "test_accuracy": rounds / 2000, "train_loss": 1 / rounds,
                      "bytes_up": 10, "bytes_down": 5})
    traces = run_traces(h, "r", "#000", [("test_accuracy", "a"), ("train_loss", "l"), ("bytes_up", "mb")], 400)
    acc, _, mb = traces
    assert len(acc["x"]) <= 400 and acc["x"][0] == 1 and acc["x"][-1] == 2000
    np.testing.assert_allclose(acc["y"], np.array(acc["x"]) / 2000)
    assert mb["y"][-1] == pytest.approx(2000 * 15 / 1e6)


@pytest.mark.skipif(not dp_available(), reason="fedlab.privacy is not in this installation")
def test_dp_controls_show_the_epsilon_the_run_spends(data, cache_dir):
    import dp_accounting
    from dp_accounting import rdp

    wb = make(data, cache_dir, rounds=4)       # sampling left to the Experiment: poisson with DP
    wb.form.apply({"dp": "noise multiplier", "noise_multiplier": 1.5, "clip": 0.5, "delta": 1e-3})
    assert wb.experiment().privacy == fedlab.Privacy(noise_multiplier=1.5, clip=0.5, delta=1e-3)
    assert wb.wait_idle()
    assert "3 of 6 clients a round, poisson sampling" in wb.form.dp_info.value
    # independent epsilon: dp_accounting's RDP accountant on 4 Poisson-sampled Gaussian rounds, q = 3/6
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(1.5)), 4))
    expected = acc.get_epsilon(1e-3)
    shown = float(wb.form.dp_info.value.split("ε = ")[1].split("<")[0])
    assert shown == pytest.approx(expected, rel=2e-3)           # shown with 3 significant digits
    history = wb.run()
    assert history["epsilon"].iloc[-1] == pytest.approx(expected, rel=1e-6)
    assert [t for _, t in wb.chart.panels][-1] == "privacy spent (epsilon)"
    eps_trace = [t for t in wb.figure.data if t.xaxis == "x5"][0]
    np.testing.assert_allclose(eps_trace.y, history["epsilon"])
    wb.form.apply({"dp": "target epsilon", "target_epsilon": 2.0})
    assert wb.wait_idle()
    assert "ε = 2" in wb.form.dp_info.value
    shown = {n: wb.controls[n].layout.display != "none" for n in ("target_epsilon", "noise_multiplier", "clip")}
    assert shown == {"target_epsilon": True, "noise_multiplier": False, "clip": True}
    with pytest.raises(ValueError):
        wb.run(clip=-1.0)
    assert "clip must be > 0, got -1.0" in html.unescape(wb.message.value)       # Privacy.validate


def test_a_script_that_only_creates_a_workbench_exits_cleanly(tmp_path):
    """The warm-up thread runs JAX in the background; an interpreter exiting under it used to abort
    (exit code 134, "terminate called ..."): 5 times in 6 here once the compilation cache is warm,
    so the cache (in a HOME of its own) is filled first and the exact command then runs twice."""
    env = {**os.environ, "HOME": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def python(code):
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
    prepared = python("from fedlab.ui import Workbench; Workbench().runner.wait_for_warm_up()")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    for _ in range(2):
        proc = python("from fedlab.ui import Workbench; Workbench()")
        assert "terminate called" not in proc.stderr, proc.stderr[-2000:]
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_run_shown_as_a_command_line_gives_the_same_history(cache_dir, tmp_path):
    """The command line the workbench shows for a run, run through the CLI, trains the same run."""
    from fedlab import cli

    wb = Workbench(redraw_interval=0.0, compilation_cache=cache_dir, warm_up=False, dataset="synthetic:0.5,0.5",
                   num_clients=8, partition="dirichlet:0.3", algorithm="fedprox", mu=0.5, rounds=3,
                   clients_per_round=4, local_steps=5, batch_size=8)
    history = wb.run()
    name, = wb.runs
    assert wb.run_list.chosen.value == name
    experiment = fedlab.Experiment.from_dict(history.settings)
    assert wb.run_list.code.value == experiment.to_code() and wb.run_list.command.value == experiment.to_command()
    namespace = {}
    exec(wb.run_list.code.value.replace("history = experiment.run()", ""), namespace)   # the code makes the run
    assert namespace["experiment"] == experiment
    command = wb.run_list.command.value
    assert command.startswith("python -m fedlab run ") and "--mu 0.5" in command and "--partition dirichlet:0.3" in command
    out = tmp_path / "run"
    assert cli.main(shlex.split(command)[3:] + ["--out", str(out), "--no-progress"]) == 0
    pd.testing.assert_frame_equal(without_timing(pd.read_csv(out / "history.csv")), without_timing(history),
                                  check_dtype=False)
    # the code view follows the controls when they are chosen
    wb.run_list.chosen.value = CONTROLS
    wb.controls["rounds"].value = 7
    assert wb.run_list.code.value == wb.experiment().to_code() and "rounds=7" in wb.run_list.code.value
    wb.controls["batch_size"].value = 0
    assert wb.run_list.code.value.startswith("# batch_size must be an integer >= 1")


def test_stop_then_continue_equals_the_uninterrupted_run(data, cache_dir):
    """Stop after round 4 (from a round callback, so exactly there), Continue to the 12 rounds asked:
    the rows and the final model are those of the run done in one go; then 3 rounds more."""
    wb = make(data, cache_dir, algorithm="scaffold", rounds=12)     # SCAFFOLD: client states carry over
    on_round = wb._on_round

    def stop_after_4(event):
        on_round(event)
        if event.round == 4:
            wb.stop()
    wb._on_round = stop_after_4
    stopped = wb.run()
    assert stopped.status == "stopped" and len(stopped) == 4
    assert not wb.continue_button.disabled and "stopped</b>: round 4 of 12" in wb.progress.value
    wb._on_round = on_round
    wb.continue_button.click()
    assert wb.running and wb.continue_button.disabled
    assert wb.wait(120) and wb.last_error is None, wb.last_traceback
    (name, continued), = wb.runs.items()                          # the same run, replaced by the longer one
    assert continued.status == "completed" and len(continued) == 12 and name.startswith("#1 scaffold")
    assert "done</b>: round 12 of 12" in wb.progress.value and wb.continue_button.disabled
    assert list(wb.figure.data[0].x) == list(range(1, 13))
    experiment = fedlab.Experiment.from_dict(continued.settings)
    in_one_go = experiment.run(data=data, progress=False)
    pd.testing.assert_frame_equal(without_timing(continued), without_timing(in_one_go))
    for a, b in zip(jax.tree.leaves(continued.params), jax.tree.leaves(in_one_go.params)):
        np.testing.assert_array_equal(a, b)
    longer = wb.continue_run(rounds=15)                            # from code: more rounds than asked
    assert len(longer) == 15 and list(wb.runs) == [name]
    pd.testing.assert_frame_equal(without_timing(longer),
                                  without_timing(experiment.replace(rounds=15).run(data=data, progress=False)))
    with pytest.raises(ValueError, match="only a stopped run, or one given more rounds, continues"):
        wb.continue_run()


def test_a_diverged_run_says_so_and_keeps_its_rows(data, cache_dir):
    wb = make(data, cache_dir, model="mlp", client_lr=3.0, rounds=20)
    history = wb.run()
    assert history.status == "diverged" and 1 <= len(history) < 20
    assert wb.runs[next(iter(wb.runs))] is history and wb.table()["status"].tolist() == ["diverged"]
    text = html.unescape(wb.progress.value)
    assert text.startswith(f"<b>diverged</b> at round {len(history) + 1} (non-finite")
    assert f"{len(history)} round" in text and "kept" in text
    assert wb.message.value == "" and wb.last_error is None          # not an error of the workbench
    assert wb.continue_button.disabled
    assert len(wb.figure.data[0].x) == len(history)


def test_a_failed_round_says_failed_and_keeps_the_rounds_before(data, cache_dir):
    @fedlab.register_algorithm("ui_test_fails")
    def fails_in_round_3(*, client_lr: float = 0.1):
        """FedAvg whose (host) aggregation raises in round 3."""
        calls = []

        @fedlab.host_aggregator
        def aggregate(updates, weights, key):
            calls.append(1)
            if len(calls) == 3:
                raise ZeroDivisionError("broken on purpose")
            w = weights / weights.sum()
            return jax.tree.map(lambda u: np.tensordot(w, u, 1), updates), {}
        return ALGORITHMS["fedavg"].factory(client_lr=client_lr)._replace(name="ui_test_fails", aggregate=aggregate)
    try:
        wb = make(data, cache_dir, algorithm="ui_test_fails")
        history = wb.run()
        assert history.status == "failed" and len(history) == 2
        assert html.unescape(wb.progress.value) == ("<b>failed</b>: round 3: ZeroDivisionError: broken on purpose"
                                                    " · 2 rounds kept")
    finally:
        ALGORITHMS._entries.pop("ui_test_fails")


# ---- the Data tab -------------------------------------------------------------------------------
def test_data_tab_draws_the_partition_off_the_main_thread_and_follows_alpha(data, cache_dir):
    import threading

    wb = make(data, cache_dir)
    assert wb.data_view.wait(60)
    heat, sizes = wb.data_view.figure.data                 # the given data: 6 clients x 3 classes
    np.testing.assert_array_equal(np.array(heat.customdata), data.label_histogram().to_numpy())
    np.testing.assert_allclose(np.array(heat.z).sum(1), 1.0)
    np.testing.assert_array_equal(sizes.x, data.train_counts)
    assert sent(wb.data_view.view)[0]["customdata"] == data.label_histogram().to_numpy().tolist()
    assert "<b>6</b> clients" in wb.data_view.status.value
    # a slow load happens in the background: the kernel is free, the tab says "loading data..."
    release, load = threading.Event(), wb.data.load
    wb.data.load = lambda *a: (release.wait(60), load(*a))[1]
    started = time.perf_counter()
    wb.form.apply({"dataset": "synthetic_iid", "partition": "dirichlet:0.01", "num_clients": 8})
    assert time.perf_counter() - started < 2 and wb.data_view.status.value == "<i>loading data...</i>"
    release.set()
    assert wb.data_view.wait(120) and wb.data_view.worker.error is None
    skewed = wb.data_view.data.summary()["tv_distance"].mean()
    assert np.array(wb.data_view.figure.data[0].z).shape == (8, 10)
    wb.form.apply({"partition": "dirichlet:100"})
    assert wb.data_view.wait(120)
    assert wb.data_view.data.summary()["tv_distance"].mean() < skewed - 0.3       # alpha 100: near IID
    assert f"label skew {wb.data_view.data.summary()['tv_distance'].mean():.2f}" in wb.data_view.status.value
    wb.form.apply({"partition": "dirichlet:0.01"})                                   # cached: no reload
    assert wb.data_view.status.value != "<i>loading data...</i>"
    assert wb.data_view.wait(60)
    assert wb.data_view.data.summary()["tv_distance"].mean() == pytest.approx(skewed)


def test_a_log_slider_reads_round_values():
    from fedlab.ui.controls import Controls

    form = Controls()
    form.widgets["partition"].value = "dirichlet"
    alpha = form.knobs("partition")["alpha"]
    alpha.widget.value = 10 ** -0.3                        # where the slider stops: 0.501187...
    assert alpha.get() == 0.5
    alpha.widget.value = 10 ** -1.05
    assert alpha.get() == 0.089 and form.experiment().partition_spec == "dirichlet:0.089"
    alpha.set(0.123)                                       # set exactly (from code): kept exactly
    assert alpha.get() == 0.123


def test_a_regression_target_shows_each_clients_target_distribution():
    from fedlab.ui.data_view import TARGET_BINS, partition_figure, partition_table

    rng = np.random.default_rng(0)
    parts = [(rng.normal(size=(30, 2)), rng.normal(loc=k, size=30)) for k in range(4)]
    reg = fedlab.FederatedDataset.from_clients("reg", parts, [(x[:5], y[:5]) for x, y in parts], 0)
    table, what = partition_table(reg)
    assert what == "target range" and table.shape == (4, TARGET_BINS)
    np.testing.assert_array_equal(table.sum(axis=1), reg.train_counts)
    share = table.to_numpy() / 30
    assert share[0, 0] > share[3, 0] and share[3, -1] > share[0, -1]      # client 3's targets are larger
    assert partition_figure(reg).data[0].type == "heatmap"


# ---- privacy ------------------------------------------------------------------------------------
@pytest.mark.skipif(not dp_available(), reason="fedlab.privacy is not in this installation")
def test_epsilon_is_calibrated_off_the_main_thread_once_and_the_run_reuses_it(data, cache_dir, monkeypatch):
    import threading

    from fedlab.privacy import accounting

    calls, release, calibrate = [], threading.Event(), accounting.calibrate

    def slow_calibrate(*args, **kw):
        calls.append(args)
        release.wait(60)
        return calibrate(*args, **kw)
    monkeypatch.setattr(accounting, "calibrate", slow_calibrate)
    wb = make(data, cache_dir, rounds=4)
    started = time.perf_counter()
    wb.form.apply({"dp": "target epsilon", "target_epsilon": 3.0})
    assert time.perf_counter() - started < 2                           # the kernel is free meanwhile
    assert "computing epsilon..." in wb.form.dp_info.value
    wb.controls["seed"].value = 1                                      # another control is handled...
    assert wb.experiment().seed == 1 and "computing epsilon..." in wb.form.dp_info.value
    release.set()
    assert wb.wait_idle()
    assert "ε = 3" in wb.form.dp_info.value and "What ε means" in wb.form.dp_info.value
    assert len(calls) == 1                       # seed changed nothing the calibration depends on
    history = wb.run()                           # ...and Run reuses that calibration
    assert len(calls) == 1 and wb.calibrations.computed == 1
    assert history.settings["privacy"]["target_epsilon"] == 3.0            # the run is still "target ε 3"
    assert history.settings["privacy"]["noise_multiplier"] is None
    assert history["epsilon"].iloc[-1] == pytest.approx(3.0, rel=1e-2)
    wb.controls["rounds"].value = 5                                    # a new setting: calibrated anew
    assert wb.wait_idle() and len(calls) == 2


@pytest.mark.skipif(not dp_available(), reason="fedlab.privacy is not in this installation")
def test_the_privacy_tab_warns_when_the_noise_swamps_the_signal(data, cache_dir):
    from fedlab.ui.privacy import num_params

    wb = make(data, cache_dir, rounds=4)
    wb.form.apply({"dp": "noise multiplier", "noise_multiplier": 1.0, "clip": 1.0})
    assert wb.wait_idle()
    d = num_params(wb.experiment().build(data).model)
    assert d == 5 * 3 + 3                                              # logreg: 5 features x 3 classes + bias
    text = html.unescape(wb.form.dp_info.value)
    assert "fedlab-dp-warning" in text and f"{np.sqrt(d) / 3:.2g}× the largest possible signal" in text
    wb.form.apply({"noise_multiplier": 0.1})                           # 0.1 * sqrt(18) / 3 = 0.14: no warning
    assert wb.wait_idle() and "fedlab-dp-warning" not in wb.form.dp_info.value


# ---- runs you can tell apart --------------------------------------------------------------------
def test_run_names_say_what_differs_numbers_have_no_gaps_and_runs_rename_and_delete(data, cache_dir):
    wb = make(data, cache_dir, rounds=2, client_lr=0.01)          # fedavg's default learning rate
    wb.run()
    wb.run(algorithm="fedprox", mu=0.5)
    wb.run(algorithm="fedavg", seed=1)
    with pytest.raises(ValueError):
        wb.run(clients_per_round=50)                       # fails in the training thread: not kept
    wb.run(clients_per_round=3, local_steps=7, seed=0)
    assert list(wb.runs) == ["#1 fedavg · toy (given)", "#2 fedprox mu=0.5", "#3 fedavg · seed=1",
                             "#4 fedavg · 7 steps · seed=0"]
    assert len(set(wb.run_list.colors.values())) == 4
    table = wb.run_list.overview()
    assert {"dataset", "model", "options", "clients", "per round", "local work", "seed", "privacy",
            "test_accuracy"} <= set(table.columns)
    assert table.loc["#4 fedavg · 7 steps · seed=0", "local work"] == "7 steps"
    wb.run_list.sort_by.value = "test_accuracy"
    shown = wb.run_list.overview()
    assert shown["test_accuracy"].is_monotonic_increasing
    assert wb.run_list.table_html.value.index(shown.index[0]) < wb.run_list.table_html.value.index(shown.index[-1])
    wb.run_list.chosen.value = "#2 fedprox mu=0.5"
    wb.run_list.new_label.value = "proximal"
    wb.run_list.rename_button.click()
    assert "#2 proximal" in wb.runs and "#2 fedprox mu=0.5" not in wb.runs
    assert wb.run_list.chosen.value == "#2 proximal" and "#2 proximal" in wb.overlay.options
    color = wb.run_list.colors["#2 proximal"]
    wb.run_list.chosen.value = "#1 fedavg · toy (given)"
    wb.run_list.delete_button.click()
    assert list(wb.runs) == ["#2 proximal", "#3 fedavg · seed=1", "#4 fedavg · 7 steps · seed=0"]
    assert {t.name for t in wb.figure.data} == {"#4 fedavg · 7 steps · seed=0"}        # the last run made
    wb.run(seed=2)
    assert list(wb.runs)[-1].startswith("#5 ")
    assert wb.run_list.colors["#2 proximal"] == color and len(set(wb.run_list.colors.values())) == 4


def test_the_csv_export_is_a_download_link_that_names_its_runs(data, cache_dir):
    import base64
    import re

    wb = make(data, cache_dir, rounds=2)
    assert "once there are runs" in wb.run_list.csv_link.value
    wb.run()
    wb.run(seed=1)
    link = wb.run_list.csv_link.value
    filename = re.search(r"download='([^']+)'", link).group(1)
    assert re.fullmatch(r"fedlab-runs-\d{8}-\d{6}\.csv", filename)
    payload = base64.b64decode(re.search(r"href='data:text/csv;base64,([^']+)'", link).group(1)).decode()
    assert payload == wb.table().to_csv() and "2 runs (#1, #2)" in link
    wb.run_list.html_button.click()
    report = wb.run_list.html_link.value
    assert "data:text/html;base64," in report and "1 run (#2)" in report     # the runs shown: the last
    wb.overlay.value = tuple(wb.runs)
    wb.run_list.html_button.click()
    assert "2 runs (#1, #2)" in wb.run_list.html_link.value
    assert re.search(r"download='fedlab-report-\d{8}-\d{6}\.html'", report)


def test_describe_names_the_settings_that_differ():
    from fedlab.ui.runs import describe, identity

    base = fedlab.Experiment(dataset="synthetic:0.5,0.5", partition="dirichlet:0.3")
    others = [identity(base), identity(base.replace(num_clients=50))]
    assert describe(base, None, []) == "fedavg · synthetic:0.5,0.5 · dirichlet:0.3"
    dp = base.replace(privacy=fedlab.Privacy(target_epsilon=8.0), local_epochs=2, model="mlp")
    assert describe(dp, None, others) == "fedavg · mlp · clients=default · 2 epochs · DP ε=8"


# ---- charts and status --------------------------------------------------------------------------
def test_charts_hide_empty_axes_draw_the_live_run_on_top_and_switch_to_log_scale(data, cache_dir):
    from fedlab.ui.charts import UNITS

    wb = make(data, cache_dir, rounds=3)
    fig = wb.figure
    assert not fig.data and fig.layout.xaxis.visible is False and fig.layout.yaxis.visible is False
    assert wb.chart.empty_note.layout.display is None
    assert fig.layout.yaxis.title.text == UNITS["test_accuracy"] and fig.layout.yaxis4.title.text.startswith("MB")
    first = wb.run()
    wb.overlay.value = tuple(wb.runs)
    on_round, seen = wb._on_round, []

    def look(event):                       # during the second run: the live run's traces come last
        on_round(event)
        seen.append([t.name for t in wb.figure.data])
    wb._on_round = look
    wb.run(seed=1)
    live = list(wb.runs)[1]
    assert seen and all(names[-1] == live and names[0] == list(wb.runs)[0] for names in seen)
    assert wb.figure.layout.xaxis.visible is True and wb.chart.empty_note.layout.display == "none"
    wb.chart.log_scale.value = True
    types = {j: getattr(wb.figure.layout, f"yaxis{'' if j == 1 else j}").type for j in (1, 2, 3, 4)}
    assert types[2] == "log" and types[4] == "log" and types[1] != "log" and types[3] != "log"
    wb.chart.log_scale.value = False
    assert wb.figure.layout.yaxis2.type == "linear"
    assert len(first) == 3


def test_status_separates_compiling_from_the_steady_rate():
    from types import SimpleNamespace

    from fedlab.ui.runs import progress_text

    event = SimpleNamespace(round=11, rounds=101, elapsed=5.0 + 10 * 0.1, metrics={"test_accuracy": 0.5})
    text = progress_text(event, 11, first_seconds=5.0)          # round 1: 5 s (compiling), then 0.1 s each
    assert "first round 5.0 s (compiling)" in text and "0.1 s/round (10 rounds/s)" in text
    assert "ETA 9 s" in text                                     # 90 rounds at the steady 0.1 s, not 0.55 s
    assert "compiling included" in progress_text(SimpleNamespace(**{**vars(event), "round": 1}), 1, 5.0)


def test_run_colours_never_repeat():
    from fedlab.report import color

    assert len({color(i) for i in range(100)}) == 100


# ---- per client ---------------------------------------------------------------------------------
def test_after_a_run_the_clients_view_shows_accuracy_by_client_size_and_label_skew(data, cache_dir):
    wb = make(data, cache_dir, rounds=3)
    assert not wb.client_view.figure.data
    history = wb.run()
    clients = wb.clients()
    np.testing.assert_allclose(clients["test_accuracy"], history.per_client["test_accuracy"])
    np.testing.assert_allclose(clients["label_skew"], data.summary()["tv_distance"])
    hist, by_size, by_skew = wb.client_view.figure.data
    np.testing.assert_allclose(hist.x, history.per_client["test_accuracy"])
    np.testing.assert_array_equal(by_size.x, data.train_counts)
    np.testing.assert_allclose(by_skew.x, data.summary()["tv_distance"])
    name = next(iter(wb.runs))
    assert f"Clients of {name}" in html.unescape(wb.client_view.title.value)
    assert f"median {np.median(history.per_client['test_accuracy']):.3f}" in wb.client_view.title.value
    wb.delete(name)
    assert not wb.client_view.figure.data and wb.client_view.shown is None


# ---- settings: flagged at the field, tooltips, models that fit, presets ------------------------
def test_an_invalid_value_is_flagged_at_its_field_and_the_banner_clears_when_fixed(data, cache_dir):
    wb = make(data, cache_dir)
    wb.controls["batch_size"].value = 0
    assert "fedlab-invalid" in wb.controls["batch_size"]._dom_classes
    assert "batch_size must be an integer >= 1, got 0" in html.unescape(wb.message.value)
    assert wb.controls["batch_size"].value == 0                          # not clamped
    wb.controls["batch_size"].value = 8
    assert wb.message.value == "" and "fedlab-invalid" not in wb.controls["batch_size"]._dom_classes
    assert wb.data_view.wait(60)
    wb.controls["clients_per_round"].value = 50                          # more than the 6 clients of the data
    assert "fedlab-invalid" in wb.controls["clients_per_round"]._dom_classes
    assert "at most the 6 clients" in wb.message.value
    wb.controls["clients_per_round"].value = 3
    wb.controls["algorithm"].value = "fedprox"
    mu = wb.form.knobs("algorithm")["mu"].widget
    mu.value = -1.0
    assert "fedlab-invalid" in mu._dom_classes and "mu must be >= 0" in html.unescape(wb.message.value)
    mu.value = 0.1
    assert wb.message.value == "" and not mu._dom_classes


def test_every_control_has_a_tooltip_and_cnn_is_offered_only_for_images(data, cache_dir):
    wb = make(data, cache_dir)
    for name, widget in wb.controls.items():
        assert getattr(widget, "tooltip", ""), f"{name} has no tooltip"
    assert "(examples per mini-batch)" in wb.controls["batch_size"].tooltip
    for kind in ("dataset", "partition", "algorithm", "model"):
        for option in wb.form.names(kind):
            if option in ("default", "(given)"):
                continue
            wb.controls[kind].value = option
            for knob, control in wb.form.knobs(kind).items():
                assert control.widget.tooltip, f"{kind} {option}: {knob} has no tooltip"
    wb.controls["dataset"].value, wb.controls["partition"].value = "(given)", "default"   # back to the table
    assert wb.data_view.wait(60)
    assert "cnn" not in wb.form.names("model") and "mlp" in wb.form.names("model")     # 5 features: a table
    images = fedlab.FederatedDataset.from_clients(
        "img", [(np.zeros((4, 8, 8, 1)) + k, np.arange(4) % 2) for k in range(3)],
        [(np.zeros((2, 8, 8, 1)), np.arange(2) % 2) for _ in range(3)], 2)
    wb2 = Workbench(images, compilation_cache=cache_dir, warm_up=False)
    assert wb2.data_view.wait(60) and "cnn" in wb2.form.names("model")


def test_presets_set_the_controls_to_runnable_settings(data, cache_dir):
    from fedlab.ui.presets import PRESETS

    wb = make(data, cache_dir)
    for name, (experiment, _about) in PRESETS.items():
        wb.preset.value = name
        assert wb.experiment() == experiment and wb.preset_info.value and wb.message.value == ""
    dp_big, dp_small = PRESETS["3a · DP at scale: 250 of 1000 clients a round, ε = 8"][0], \
        PRESETS["3b · DP, only 10 clients a round, ε = 8"][0]
    assert dp_big.clients_per_round == 250 and dp_small.clients_per_round == 10
    wb.preset.value = "3b · DP, only 10 clients a round, ε = 8"
    assert wb.wait_idle(600)
    assert "fedlab-dp-warning" in wb.form.dp_info.value                  # 3b, the last preset: noise swamps


# ---- per-client curves, baselines, new chart panels, data quality, more presets ----------------
def test_the_clients_view_draws_a_chosen_clients_curve_and_global_vs_personal(data, cache_dir):
    wb = make(data, cache_dir, rounds=4, algorithm="ditto", lam=0.1)
    history = wb.run()
    view, curves = wb.client_view, history.client_rounds
    assert list(view.client.options) == [str(n) for n in data.names()]
    table = wb.clients()
    worst = table["personal_accuracy"].idxmin()                # the view starts on the worst-served client
    assert view.client.value == str(table.loc[worst, "client"])
    view.choose("2")
    glob, personal, _diagonal, scatter = view.curve_figure.data
    mine = curves[curves["client"] == "2"]
    np.testing.assert_array_equal(glob.x, [1, 2, 3, 4])
    np.testing.assert_allclose(glob.y, mine["test_accuracy"], rtol=1e-6)
    np.testing.assert_allclose(personal.y, mine["personal_accuracy"], rtol=1e-6)
    # one point per client: (the global model's, its own model's) final accuracy
    np.testing.assert_allclose(scatter.x, history.per_client["test_accuracy"], rtol=1e-6)
    last = curves[curves["round"] == 4]
    np.testing.assert_allclose(scatter.y, last["personal_accuracy"], rtol=1e-6)
    assert scatter.marker.size[2] == 12 and scatter.marker.size[0] == 7       # the chosen one stands out
    better = int(np.sum(last["personal_accuracy"].to_numpy() > history.per_client["test_accuracy"].to_numpy()))
    assert f"<b>{better} of 6</b>" in view.gain.value
    # what the browser gets: the chosen client's curve, as plain numbers
    view.client.value = "4"
    shown = sent(view.curve_view)
    assert shown[0]["name"] == "global model" and shown[0]["x"] == [1, 2, 3, 4]
    np.testing.assert_allclose(shown[0]["y"], curves[curves["client"] == "4"]["test_accuracy"], rtol=1e-6)


def test_islands_and_pooled_are_one_click_baselines_shown_as_named_runs(data, cache_dir):
    from fedlab.transfer import pooled

    wb = make(data, cache_dir, rounds=4, algorithm="fedprox", mu=0.5)
    experiment = wb.experiment()
    wb.islands_button.click()
    assert wb.wait(300) and wb.last_error is None
    name, islands = list(wb.runs.items())[-1]
    assert name == "#1 islands (local) · toy (given)" and islands.settings["algorithm"] == "local"
    assert islands.settings["algorithm_options"] == {"client_lr": 0.1}
    same = experiment.replace(algorithm="local", algorithm_options={"client_lr": 0.1}).run(data=data, progress=False)
    np.testing.assert_allclose(islands["personal_acc_mean"], same["personal_acc_mean"])
    assert (islands["bytes_up"] == 0).all() and islands["test_accuracy"].isna().all()
    drawn = [t for t in wb.figure.data if t.xaxis == "x"][-1]           # the accuracy panel: its own models
    assert drawn.name == f"{name} (own models)"
    np.testing.assert_allclose(drawn.y, islands["personal_acc_mean"])
    wb.pooled_button.click()
    assert wb.wait(300) and wb.last_error is None
    name, central = list(wb.runs.items())[-1]
    assert name.startswith("#2 pooled (centralized)") and central.attrs["baseline"] == "pooled"
    assert central["test_accuracy"].iloc[-1] == pytest.approx(pooled(experiment, data)["test_accuracy"])
    assert central["bytes_up"].isna().all() and wb.continue_button.disabled
    assert wb.run_list.overview().loc[name, "algorithm"] == "pooled (centralized)"
    assert "fedlab.transfer.pooled(experiment, data)" in wb.run_list.code.value
    clients = wb.clients(name)                                  # evaluated on every client's own test rows
    assert len(clients) == 6 and "personal_accuracy" not in clients
    np.testing.assert_allclose(central.client_rounds.query("round == 4")["test_accuracy"], clients["test_accuracy"],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="is a baseline"):
        wb.continue_run(name, rounds=8)


def test_charts_add_backdoor_accuracy_r2_and_rmse_panels_when_a_run_has_them():
    from fedlab.ui.charts import LiveChart

    rounds = np.arange(1, 4)
    attacked = pd.DataFrame({"round": rounds, "test_accuracy": [0.5, 0.6, 0.7], "train_loss": [1.0, 0.8, 0.7],
                             "backdoor_accuracy": [0.1, 0.5, 0.9], "bytes_up": [100, 100, 100],
                             "bytes_down": [50, 50, 50]})
    chart = LiveChart(0.0)
    chart.compare({"attacked": (attacked, "#1f77b4")})
    titles = [a.text for a in chart.figure.layout.annotations]
    assert [c for c, _ in chart.panels][-1] == "backdoor_accuracy" and "backdoor accuracy (attack success)" in titles
    backdoor = [t for t in chart.figure.data if t.xaxis == "x5"][0]
    np.testing.assert_allclose(backdoor.y, [0.1, 0.5, 0.9])
    mb = [t for t in chart.figure.data if t.xaxis == "x4"][0]
    np.testing.assert_allclose(mb.y, [150e-6, 300e-6, 450e-6])          # cumulative, up + down, in MB
    chart.compare({})
    assert [c for c, _ in chart.panels] == ["test_accuracy", "train_loss", "client_acc_p50", "bytes_up"]
    # a live regression run: its first row brings the RMSE and R² panels
    chart.begin("reg", "#d62728")
    chart.add({"round": 1, "train_loss": 0.4, "test_rmse": 12.0, "test_r2": 0.3, "client_rmse_p50": 11.0,
               "bytes_up": 10, "bytes_down": 10})
    assert [c for c, _ in chart.panels] == ["test_rmse", "train_loss", "client_rmse_p50", "bytes_up", "test_r2"]
    assert [t for t in chart.figure.data if t.xaxis == "x5"][0].y == (0.3,)


def test_the_data_tab_shows_the_quality_heatmap_of_the_data_and_its_corruption(cache_dir):
    from fedlab.data import quality

    wb = Workbench(compilation_cache=cache_dir, warm_up=False, dataset="credit_data", rounds=2)
    assert wb.wait_idle(300)
    clean = wb.data_view.report
    assert clean is not None and not clean["corrupted"].any()
    wb.form.apply({"corrupt": "scale:100", "corrupt_clients": 0.34})
    assert wb.wait_idle(300) and wb.data_view.worker.error is None
    report = wb.data_view.report
    truth = fedlab.Experiment(dataset="credit_data", corrupt="scale:100", corrupt_clients=0.34).load_tables()
    np.testing.assert_array_equal(report["corrupted"], truth.corrupted.astype(bool))     # the injected clients
    assert report["corrupted"].sum() == 2 and (report["flagged"] == report["corrupted"]).all()   # all found
    heat = wb.data_view.quality_figure.data[0]
    checks = [c for c in quality.CHECKS if c != "label_noise"]
    assert list(heat.x) == checks
    np.testing.assert_allclose(np.array(heat.z, float), np.clip(report[checks].to_numpy(float), -3.5, 10.5))
    assert "2 of 6 clients flagged" in wb.data_view.quality_status.value
    assert "recall 1.00" in wb.data_view.quality_status.value


def test_the_new_presets_build_on_their_data_and_a_few_run():
    from fedlab.ui.presets import PRESETS

    new = {name: e for name, (e, about) in PRESETS.items() if name[0] in "45678"}
    assert len(new) == 17 and all(len(about) > 80 for name, (_, about) in PRESETS.items() if name in new)
    scenario_data = {e.dataset for name, e in new.items() if name.startswith("8")}
    assert scenario_data == {"txhousing", "oj", "caravan", "credit_data", "lending_club", "flights", "deliveries"}
    for name, experiment in new.items():
        built = experiment.build()
        assert built.clients_per_round <= built.data.num_clients, name
    pick = {n[:2]: e for n, e in new.items()}
    backdoor = pick["6a"].replace(rounds=1).run(progress=False)
    assert "backdoor_accuracy" in backdoor and len(backdoor.attackers) == 2
    full, topk = (pick[k].replace(rounds=1, eval_every=1).run(progress=False) for k in ("7a", "7b"))
    assert topk["bytes_up"].iloc[0] < full["bytes_up"].iloc[0] / 50               # 1% of the values
    ditto = pick["4b"].replace(rounds=1).run(progress=False)
    assert "personal_accuracy" in ditto.client_rounds
