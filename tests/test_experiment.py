"""The run as one value: Experiment's validation and serialisation, run directories, checkpoint and
resume (bit-identical to the run done in one go), and runs that report how they ended."""
from __future__ import annotations

import json
import math
import shlex

import jax
import numpy as np
import pandas as pd
import pytest

import fedlab
from fedlab.cli import build_parser, experiment_from_args, main
from fedlab.core import rundir
from fedlab.privacy import secure

TIMING = ["seconds", "elapsed"]
# small and quick: 8 synthetic clients, 3 a round, 2 local steps
SMALL = dict(dataset="synthetic:1,1", num_clients=8, clients_per_round=3, local_steps=2, batch_size=5)


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return a.drop(columns=TIMING).equals(b.drop(columns=TIMING))


def same_params(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ---- the value ---------------------------------------------------------------------------------
def test_specs_become_typed_options_and_defaults_are_dropped():
    e = fedlab.Experiment(dataset="synthetic:0.5,1", partition="dirichlet:0.3", algorithm="fedprox",
                          algorithm_options={"mu": 1, "client_lr": 0.01})
    assert (e.dataset, e.dataset_options) == ("synthetic", {"alpha": 0.5})        # beta=1.0 is the default
    assert (e.partition, e.partition_options) == ("dirichlet", {"alpha": 0.3})
    assert e.algorithm_options == {"mu": 1.0} and isinstance(e.algorithm_options["mu"], float)
    assert e.dataset_spec == "synthetic:0.5" and e.partition_spec == "dirichlet:0.3"
    assert fedlab.Experiment(dataset="synthetic:1,1") == fedlab.Experiment()


def test_dict_json_code_and_command_round_trip():
    e = fedlab.Experiment(dataset="synthetic:0.5,0.5", partition="dirichlet:0.3", num_clients=20,
                          model="mlp", model_options={"hidden": [32]}, algorithm="fedadam",
                          algorithm_options={"server_lr": 0.05, "client_lr": 0.02}, rounds=7,
                          clients_per_round=5, local_epochs=2, stragglers=0.2, seed=3,
                          privacy=fedlab.Privacy(clip=0.5, noise_multiplier=0.8, adaptive_clipping=True))
    assert fedlab.Experiment.from_dict(e.to_dict()) == e
    assert fedlab.Experiment.from_json(e.to_json()) == e
    assert json.loads(e.to_json())["privacy"]["noise_multiplier"] == 0.8
    namespace = {}
    exec(e.to_code().replace("history = experiment.run()", ""), namespace)
    assert namespace["experiment"] == e
    argv = shlex.split(e.to_command())[3:]
    assert experiment_from_args(build_parser().parse_args(argv)) == e


@pytest.mark.parametrize("changes, message", [
    ({"rounds": 0}, "rounds must be an integer >= 1"),
    ({"stragglers": float("nan")}, "stragglers must be a finite number"),
    ({"test_fraction": 1.0}, "test_fraction must be in [0, 1)"),
    ({"algorithm": "fedavgx"}, "unknown algorithm 'fedavgx'"),
    ({"algorithm_options": {"mu": 1.0}}, "mu does not apply to algorithm 'fedavg'"),
    ({"algorithm": "fedprox", "algorithm_options": {"mu": float("inf")}}, "mu (algorithm fedprox) must be a finite"),
    ({"algorithm_options": {"client_lr": float("nan")}}, "client_lr (algorithm fedavg) must be a finite"),
    ({"algorithm": "fedadam", "algorithm_options": {"server_lr": float("inf")}}, "server_lr"),
    ({"algorithm": "qffl", "algorithm_options": {"q": float("inf")}}, "q (algorithm qffl) must be a finite"),
    ({"algorithm": "fedprox", "algorithm_options": {"mu": -1.0}}, "mu must be >= 0"),
    ({"local_steps": 2, "local_epochs": 1}, "give local_steps or local_epochs, not both"),
    ({"sampling": "sometimes"}, "sampling must be one of ['fixed', 'poisson']"),
    ({"seed": -1}, "seed must be an integer in [0, 4294967295]"),
    ({"partition": "dirichlet:abc"}, "partition: dirichlet alpha must be a number"),
])
def test_bad_settings_raise_on_construction_naming_the_setting(changes, message):
    with pytest.raises(ValueError) as err:
        fedlab.Experiment(**changes)
    assert message in str(err.value)


@pytest.mark.parametrize("privacy, message", [
    (dict(noise_multiplier=float("nan")), "noise_multiplier must be a finite number"),
    (dict(target_epsilon=float("inf")), "target_epsilon must be a finite number"),
    (dict(target_epsilon=0.0), "target_epsilon must be > 0"),
    (dict(noise_multiplier=1.0, clip=float("inf")), "clip must be a finite number"),
    (dict(noise_multiplier=1.0, delta=0.0), "delta must be in (0, 1)"),
    (dict(clip=1.0), "give exactly one of target_epsilon and noise_multiplier"),
])
def test_bad_privacy_settings_raise(privacy, message):
    with pytest.raises(ValueError) as err:
        fedlab.Privacy(**privacy)
    assert message in str(err.value)


def test_privacy_defaults_to_poisson_sampling_and_cannot_disagree_with_the_run():
    e = fedlab.Experiment(**SMALL, rounds=2, privacy=fedlab.Privacy(noise_multiplier=1.0))
    assert e.resolved_sampling == "poisson"
    built = e.build()
    assert built.strategy.requires["sampling"] == "poisson" and built.sampling == "poisson"
    fixed = e.replace(sampling="fixed").build()
    assert fixed.strategy.requires["sampling"] == "fixed"
    history = e.run(progress=False)
    # the accountant's epsilon for the run's own sampling (dp_accounting through fedlab.privacy)
    assert history["epsilon"].iloc[-1] == pytest.approx(
        fedlab.privacy.epsilon(1.0, 3 / 8, 2, 1e-5, sampling="poisson", num_clients=8), rel=1e-9)
    assert history.settings == e.to_dict() and history.settings["privacy"]["noise_multiplier"] == 1.0


def test_clients_per_round_is_checked_against_the_data_before_training():
    e = fedlab.Experiment(**{**SMALL, "clients_per_round": 9})
    with pytest.raises(ValueError, match=r"clients_per_round must be an integer in \[1, 8\], got 9"):
        e.build()


# ---- resume ------------------------------------------------------------------------------------
RESUME_CASES = [pytest.param(name, None, id=name) for name in fedlab.ALGORITHMS.names()
                if name != "fedmd"] + [     # FedMD runs cannot be resumed (tests/test_fedmd.py)
    pytest.param(name, fedlab.Privacy(noise_multiplier=0.7, clip=0.5), id=f"dp-{name}")
    for name in ("fedavg", "fedprox", "fedadam")]


@pytest.mark.parametrize("algorithm, privacy", RESUME_CASES)
def test_five_rounds_then_resume_to_ten_equals_ten_at_once(algorithm, privacy, tmp_path):
    e = fedlab.Experiment(**SMALL, algorithm=algorithm, rounds=10, sampling="poisson", stragglers=0.5,
                          privacy=privacy)
    whole = e.run(out=tmp_path / "whole", progress=False)
    e.replace(rounds=5).run(out=tmp_path / "part", progress=False)
    resumed = fedlab.resume(tmp_path / "part", rounds=10, progress=False)
    assert whole.status == resumed.status == "completed"
    a, b = (pd.read_csv(tmp_path / d / "history.csv") for d in ("whole", "part"))
    assert list(b["round"]) == list(range(1, 11)) and same_rows(a, b)
    assert same_params(whole.params, resumed.params)
    assert same_params(whole.state.client_states, resumed.state.client_states)
    if privacy is not None:                       # epsilon continues from round 5, never restarts
        assert b["epsilon"].is_monotonic_increasing
    assert json.loads((tmp_path / "part" / "run.json").read_text())["rounds_done"] == 10
    assert fedlab.Experiment.from_json((tmp_path / "part" / "experiment.json").read_text()) == e


def test_checkpoint_every_k_rounds_and_on_ctrl_c(tmp_path):
    e = fedlab.Experiment(**SMALL, algorithm="scaffold", rounds=6)
    straight = e.run(progress=False)

    def interrupt(event):
        if event.round == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        e.run(out=tmp_path, progress=False, checkpoint_every=2, callbacks=[interrupt])
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "interrupted"
    assert rundir.read_header(tmp_path / "checkpoint.npz")["round"] == 5
    resumed = fedlab.resume(tmp_path, rounds=6, progress=False)
    assert same_rows(straight, pd.read_csv(tmp_path / "history.csv"))
    assert same_params(straight.params, resumed.params)


def test_resume_refuses_a_changed_state_or_too_few_rounds(tmp_path):
    e = fedlab.Experiment(**SMALL, rounds=3)
    e.run(out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="rounds must be more than the 3 rounds already done"):
        fedlab.resume(tmp_path, rounds=3)
    (tmp_path / "experiment.json").write_text(e.replace(algorithm="scaffold").to_json())
    with pytest.raises(ValueError, match="does not match this experiment's strategy and model"):
        fedlab.resume(tmp_path, rounds=5)
    with pytest.raises(ValueError, match="not found"):
        fedlab.resume(tmp_path / "nowhere", rounds=5)


def test_continue_a_stopped_history_in_memory():
    e = fedlab.Experiment(**SMALL, algorithm="fedavgm", rounds=6)

    def stop_at_2(event):
        if event.round == 2:
            raise fedlab.StopTraining

    stopped = e.run(progress=False, callbacks=[stop_at_2])
    assert stopped.status == "stopped" and len(stopped) == 2 and stopped.stopped
    continued = e.run(progress=False, after=stopped)
    straight = e.run(progress=False)
    assert same_rows(straight, continued) and same_params(straight.params, continued.params)


# ---- runs never lie ------------------------------------------------------------------------------
def test_divergence_ends_the_run_keeps_rows_and_the_last_finite_checkpoint(tmp_path):
    # an MLP on digits at client lr 20: round 1 is finite, round 2 overflows (measured)
    e = fedlab.Experiment(dataset="digits", model="mlp", algorithm_options={"client_lr": 20.0}, rounds=6,
                          local_steps=5)
    with pytest.warns(RuntimeWarning, match="diverged at round 2"):
        history = e.run(out=tmp_path, progress=False)
    assert history.status == "diverged"
    assert history.message == "diverged at round 2 (non-finite model parameters)"
    assert list(history["round"]) == [1] and np.isfinite(history["test_accuracy"]).all()
    one_round = e.replace(rounds=1).run(progress=False)          # the model kept is round 1's
    assert same_params(history.params, one_round.params)
    assert rundir.read_header(tmp_path / "checkpoint.npz")["round"] == 1
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "diverged"
    assert list(pd.read_csv(tmp_path / "history.csv")["round"]) == [1]


def test_cli_divergence_is_one_line_and_exit_3(tmp_path, capsys):
    code = main(["run", "--dataset", "synthetic:1,1", "--model", "mlp", "--lr", "1e4", "--rounds", "3",
                 "--local-steps", "5", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert len(err) == 1 and err[0].startswith("fedlab: diverged at round 1 (non-finite")
    assert err[0].endswith("; try a smaller --lr (0 rounds kept in " + str(tmp_path) + ")")


def test_a_host_aggregator_failing_mid_run_keeps_the_rounds_done():
    data = fedlab.data.load_federated("synthetic:1,1", num_clients=8)
    strategy = secure(fedlab.ALGORITHMS["fedavg"].factory(), dropout=0.45, threshold=0.6)
    with pytest.warns(RuntimeWarning, match="TooManyDropouts"):
        history = fedlab.simulate(strategy, "logreg", data, rounds=12, clients_per_round=6, local_steps=1,
                                  progress=False)
    assert history.status == "failed" and "TooManyDropouts" in history.message
    failed_round = int(history.message.split()[1].rstrip(":"))
    assert failed_round >= 2 and list(history["round"]) == list(range(1, failed_round))
    assert history.state.round == failed_round - 1


def test_out_is_checked_before_any_work(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(["run", "--out", str(afile), "--no-progress"]) == 2
    assert "--out: " in capsys.readouterr().err and afile.read_text() == "x"
    assert main(["run", "--out", str(afile / "sub"), "--no-progress"]) == 2
    assert "--out: cannot write to" in capsys.readouterr().err
    # bad settings with a new out: nothing is left behind
    assert main(["run", "--out", str(tmp_path / "new"), "--clients-per-round", "99", "--no-progress"]) == 2
    assert not (tmp_path / "new").exists()


def test_every_status_has_a_summary_line():
    e = fedlab.Experiment(**SMALL, rounds=2)
    history = e.run(progress=False)
    assert history.status == "completed" and history.message == ""
    assert history.summary().startswith("completed · 2 rounds · test_accuracy ")
    assert not math.isnan(history["test_accuracy"].iloc[-1])


# ---- the command line -----------------------------------------------------------------------------
def test_config_reproduces_a_run_and_flags_override_it(tmp_path):
    first = ["run", "--dataset", "synthetic:0.5,0.5", "--clients", "8", "--clients-per-round", "3",
             "--algorithm", "fedprox", "--mu", "0.5", "--local-steps", "2", "--rounds", "4",
             "--sampling", "poisson", "--no-progress", "--out", str(tmp_path / "a")]
    assert main(first) == 0
    config = str(tmp_path / "a" / "experiment.json")
    assert main(["run", "--config", config, "--no-progress", "--out", str(tmp_path / "b")]) == 0
    a, b = (pd.read_csv(tmp_path / d / "history.csv") for d in "ab")
    assert same_rows(a, b)
    assert main(["run", "--config", config, "--rounds", "2", "--local-epochs", "1", "--no-progress",
                 "--out", str(tmp_path / "c")]) == 0
    c = fedlab.Experiment.from_json((tmp_path / "c" / "experiment.json").read_text())
    assert (c.rounds, c.local_epochs, c.local_steps, c.algorithm_options) == (2, 1, None, {"mu": 0.5})


def test_cli_resume_appends_to_history(tmp_path):
    base = ["run", "--clients", "8", "--clients-per-round", "3", "--local-steps", "2", "--no-progress"]
    assert main(base + ["--rounds", "4", "--out", str(tmp_path / "whole")]) == 0
    assert main(base + ["--rounds", "2", "--out", str(tmp_path / "part")]) == 0
    assert main(["run", "--resume", str(tmp_path / "part"), "--rounds", "4", "--no-progress"]) == 0
    a, b = (pd.read_csv(tmp_path / d / "history.csv") for d in ("whole", "part"))
    assert same_rows(a, b)
    assert main(["run", "--resume", str(tmp_path / "part"), "--rounds", "6", "--mu", "1"]) == 2


def test_help_shows_each_algorithms_own_default_once():
    text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    server_lr = " ".join(text.split("--server-lr VALUE")[-1].split("--")[0].split())
    by_default = dict(part.strip().split(" (", 1) for part in server_lr.removeprefix("default ").split(";"))
    assert {"fedavgm", "scaffold"} <= set(by_default["1.0"].rstrip(")").split(", "))
    assert by_default["0.1"] == "fedadagrad)"
    assert "default None" not in text and text.count("(default 20)") == 1
    for flag in ("--rounds", "--batch-size", "--seed", "--eval-every"):
        block = text.split("\n  " + flag + " ")[-1].split("\n  --")[0]
        assert len(block.split()) > 3, f"{flag} has no help"


def test_per_client_table_agrees_with_the_history_columns():
    history = fedlab.Experiment(**SMALL, rounds=2).run(progress=False)
    table, last = history.per_client, history.iloc[-1]
    assert list(table["train_examples"]) == list(fedlab.data.load_federated(
        "synthetic:1,1", num_clients=8).train_counts)
    weighted = (table["test_accuracy"] * table["test_examples"]).sum() / table["test_examples"].sum()
    assert weighted == pytest.approx(last["test_accuracy"], abs=1e-6)
    assert table["test_accuracy"].std(ddof=0) == pytest.approx(last["client_acc_std"], abs=1e-6)
    assert table["test_accuracy"].min() == pytest.approx(last["client_acc_min"], abs=1e-6)
