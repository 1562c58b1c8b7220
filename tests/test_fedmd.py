"""FedMD (issue 12, ``fedlab.transfer.fedmd``): the consensus and digest step against NumPy, the
round-robin architectures, FedMD without digest = islands (an independent optax loop per party),
determinism, bytes, the run directory, divergence, the bad-input errors and the CLI round trip."""
from __future__ import annotations

import json
import math
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

import fedlab
from conftest import toy_data
from fedlab.transfer import fedmd

FAST = {"public_epochs": 1, "private_epochs": 1, "digest_steps": 3, "optimizer": "sgd", "client_lr": 0.1}


def experiment(**changes):
    base = dict(algorithm="fedmd", model="mlp", model_options={"hidden": [6]}, models=("logreg", "mlp"),
                public="holdout:0.3", rounds=2, batch_size=4, algorithm_options=FAST)
    return fedlab.Experiment(**{**base, **changes})


@pytest.fixture(scope="module")
def data():
    return toy_data(num_clients=5)


@pytest.fixture(scope="module")
def history(data):
    return experiment().run(data=data, progress=False)


def test_consensus_and_digest_step_match_numpy():
    rng = np.random.default_rng(0)
    R, d, C, B, lr = 7, 3, 4, 5, 0.3
    model = fedlab.MODELS["logreg"].factory((d,), C)
    params = {"W": jnp.asarray(rng.normal(size=(2, d, C)), jnp.float32), "b": jnp.asarray(rng.normal(size=(2, C)),
                                                                                            jnp.float32)}
    xs = rng.normal(size=(R, d)).astype(np.float32)
    fns = fedmd.GroupFunctions(model, fedmd.fedmd(optimizer="sgd", client_lr=lr), B)
    scores = np.asarray(fns.scores(params, xs))
    W, b = np.asarray(params["W"]), np.asarray(params["b"])
    np.testing.assert_allclose(scores, np.einsum("rd,kdc->krc", xs, W) + b[:, None], rtol=1e-5, atol=1e-5)
    target = np.asarray(fedmd.consensus(jnp.asarray(scores)))
    np.testing.assert_allclose(target, scores.mean(0), rtol=1e-6)
    keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.key(3), k))(jnp.arange(2, dtype=jnp.uint32))
    new, loss = fns.digest(params, keys, 1, jnp.asarray(xs), jnp.asarray(target))
    for k in range(2):          # one SGD step on the mean |x W + b - target| of the step's batch
        idx = np.asarray(jax.random.randint(jax.random.fold_in(keys[k], 0), (B,), 0, R))
        diff = xs[idx] @ W[k] + b[k] - target[idx]
        g = np.sign(diff) / (B * C)
        np.testing.assert_allclose(loss[k], np.abs(diff).mean(), rtol=1e-5)
        np.testing.assert_allclose(new["W"][k], W[k] - lr * xs[idx].T @ g, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new["b"][k], b[k] - lr * g.sum(0), rtol=1e-5, atol=1e-6)
    # the KL digest loss: mean over rows of sum_c p_c log(p_c / q_c)
    p = np.exp(target) / np.exp(target).sum(-1, keepdims=True)
    q = np.exp(scores[0]) / np.exp(scores[0]).sum(-1, keepdims=True)
    np.testing.assert_allclose(fedmd.digest_loss(jnp.asarray(scores[0]), jnp.asarray(target), "kl"),
                               np.mean(np.sum(p * np.log(p / q), -1)), rtol=1e-4)


def test_round_robin_architectures_and_history(data, history):
    assert fedmd.assign(("logreg", "mlp", "cnn"), 7) == ("logreg", "mlp", "cnn", "logreg", "mlp", "cnn", "logreg")
    assert list(history.per_client["architecture"]) == ["logreg", "mlp", "logreg", "mlp", "logreg"]
    assert history.status == "completed" and list(history["round"]) == [1, 2]
    assert isinstance(history.params[0], dict) and isinstance(history.params[1], list)   # logreg, mlp pytrees
    built = experiment().build(data)
    K, C = built.data.num_clients, built.data.num_classes
    # accuracy of each party's own model on its own test rows (NumPy), and the mean
    for k in range(K):
        x, y = built.data.client(k, "test")
        acc = np.mean(np.argmax(np.asarray(built.models[k].apply(history.params[k], x)), 1) == y)
        assert history[f"party_{k}_acc"].iloc[-1] == pytest.approx(acc)
    last = history.iloc[-1]
    accs = [last[f"party_{k}_acc"] for k in range(K)]
    assert last["test_accuracy"] == pytest.approx(np.mean(accs)) == last["personal_acc_mean"]
    assert last["personal_acc_p10"] == pytest.approx(np.percentile(accs, 10))
    assert last["logreg_acc_mean"] == pytest.approx(np.mean(accs[0::2]))
    # the scores sent: every party, every public row, every class, float32; the consensus back
    assert (history["bytes_up"] == K * len(built.public.y) * C * 4).all()
    assert (history["bytes_down"] == history["bytes_up"]).all()
    # holdout: the public rows are the parties' moved training rows; test rows untouched
    assert len(built.public.y) + len(built.data.y_train) == len(data.y_train)
    np.testing.assert_array_equal(built.data.x_test, data.x_test)
    assert (built.data.train_counts >= 1).all()


def test_single_architecture_without_digest_equals_islands(data):
    """Each party alone, in a plain optax loop: its initial model, private_epochs then one revisit a round."""
    e = experiment(models=None, model="mlp", algorithm_options={**FAST, "digest_steps": 0, "private_epochs": 2, "public_epochs": 0},
                   rounds=2, local_epochs=2, eval_every=1)
    h = e.run(data=data, progress=False)
    built = e.build(data)
    model, B = built.models[0], e.batch_size
    root = jax.random.key(e.seed)
    opt = optax.sgd(0.1)
    def train(params, x, y, key, steps):
        for s in range(steps):
            idx = np.asarray(jax.random.randint(jax.random.fold_in(key, s), (B,), 0, len(y)))
            grads = jax.grad(lambda p, xb, yb: optax.softmax_cross_entropy_with_integer_labels(
                model.apply(p, xb), yb).mean())(params, x[idx], y[idx])
            params = optax.apply_updates(params, opt.update(grads, opt.init(params))[0])
        return params

    for k in range(built.data.num_clients):
        x, y = built.data.client(k, "train")
        steps = math.ceil(2 * len(y) / B)
        params = model.init(jax.random.fold_in(jax.random.fold_in(root, 1), k))
        params = train(params, x, y, jax.random.fold_in(jax.random.fold_in(root, 3), k), steps)
        for r in (1, 2):
            rk = jax.random.fold_in(jax.random.fold_in(root, 4), r)
            params = train(params, x, y, jax.random.fold_in(jax.random.fold_in(rk, 2), k), steps)
        for got, want in zip(jax.tree.leaves(h.params[k]), jax.tree.leaves(params)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_same_seed_same_history_other_seed_differs(data, history):
    again = experiment().run(data=data, progress=False)
    timing = ["seconds", "elapsed"]
    pd.testing.assert_frame_equal(pd.DataFrame(again).drop(columns=timing), pd.DataFrame(history).drop(columns=timing))
    other = experiment(seed=1).run(data=data, progress=False)
    assert not np.allclose(other["digest_loss"], history["digest_loss"])


def test_run_directory_and_no_resume(data, tmp_path):
    out = tmp_path / "fedmd"
    h = experiment(rounds=1).run(data=data, progress=False, out=out)
    assert fedlab.Experiment.from_json((out / "experiment.json").read_text()) == experiment(rounds=1)
    saved = pd.read_csv(out / "history.csv")
    np.testing.assert_allclose(saved["test_accuracy"], h["test_accuracy"])
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    with pytest.raises(ValueError, match="FedMD runs cannot be resumed"):
        fedlab.resume(out, rounds=3)
    with pytest.raises(ValueError, match="after: FedMD runs cannot be continued"):
        experiment(rounds=3).run(data=data, after=h)


def test_divergence_ends_the_run(data):
    e = experiment(algorithm_options={**FAST, "client_lr": 1e30, "public_epochs": 0, "private_epochs": 0})
    with pytest.warns(fedlab.core.simulate.RunEndedWarning):
        h = e.run(data=data, progress=False)
    assert h.status == "diverged" and h.message.startswith("diverged at round 1 (non-finite")
    assert len(h) == 0 and all(np.isfinite(leaf).all() for p in h.params for leaf in jax.tree.leaves(p))
    with pytest.warns(fedlab.core.simulate.RunEndedWarning):      # already in transfer learning
        h = experiment(algorithm_options={**FAST, "client_lr": 1e30}).run(data=data, progress=False)
    assert h.status == "diverged" and h.message.startswith("diverged in transfer learning (non-finite")
    assert h.per_client is None and all(np.isfinite(leaf).all() for p in h.params for leaf in jax.tree.leaves(p))


@pytest.mark.parametrize("changes, message", [
    ({"models": ("logreg", "resnet")}, r"models: unknown architecture 'resnet'; choose from \['cnn', 'logreg', 'mlp'\]"),
    ({"models": "logreg,"}, "models must be registered model names"),
    ({"algorithm": "fedavg", "algorithm_options": {}}, "models: applies to algorithm 'fedmd' only"),
    ({"algorithm": "fedavg", "algorithm_options": {}, "models": None}, "public: applies to algorithm 'fedmd' only"),
    ({"public": None}, "public: fedmd needs a public dataset"),
    ({"public": "holdout:1.5"}, r"public: holdout:FRAC needs a fraction in \(0, 1\)"),
    ({"public": "holdout:nan"}, r"public: holdout:FRAC needs a fraction in \(0, 1\)"),
    ({"public": "mnist"}, "public: unknown dataset 'mnist'"),
    ({"algorithm_options": {"digest_steps": -1}}, "digest_steps must be an integer >= 0"),
    ({"algorithm_options": {"client_lr": float("nan")}}, r"client_lr \(algorithm fedmd\) must be a finite number"),
    ({"algorithm_options": {"digest_loss": "l3"}}, r"digest_loss must be one of \['l1', 'kl'\]"),
    ({"stragglers": 0.5}, "stragglers does not apply to algorithm 'fedmd'"),
    ({"privacy": fedlab.Privacy(noise_multiplier=1.0)}, "privacy does not apply to algorithm 'fedmd'"),
])
def test_bad_settings_are_refused_on_construction(changes, message):
    with pytest.raises(ValueError, match=message):
        experiment(**changes)


@pytest.mark.parametrize("changes, data_kw, message", [
    ({"public": "digits"}, {}, r"public: its rows have input shape \(8, 8, 1\) but the private data's have \(5,\)"),
    ({"public": "synthetic_iid"}, {"features": 60}, "public: it has 10 classes but the private data has 3"),
    ({"models": ("logreg", "cnn")}, {}, "models: cnn does not fit the data"),
    ({"clients_per_round": 2}, {}, "clients_per_round: every FedMD party takes part in every round"),
])
def test_bad_data_is_refused_before_training(changes, data_kw, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        experiment(**changes).run(data=toy_data(**data_kw), progress=False, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_public_cannot_be_the_private_dataset():
    with pytest.raises(ValueError, match="public: 'digits' is the private dataset itself"):
        experiment(dataset="digits", public="digits").build()


def test_settings_round_trip_and_cli(tmp_path, capsys):
    from fedlab import cli

    e = experiment(dataset="digits", num_clients=4, models="logreg,mlp", public="holdout:0.5", rounds=1,
                   algorithm_options={**FAST, "digest_loss": "kl", "public_rows": 20})
    assert e.models == ("logreg", "mlp") and e.public == "holdout:0.5"
    assert fedlab.Experiment.from_dict(e.to_dict()) == e == fedlab.Experiment.from_json(e.to_json())
    namespace = {}
    exec(e.to_code().replace("history = experiment.run()", ""), namespace)
    assert namespace["experiment"] == e
    command = e.to_command(out=str(tmp_path / "run"))
    assert "--models logreg,mlp" in command and "--public holdout:0.5" in command and "--digest-loss kl" in command
    words = shlex.split(command)
    assert cli.experiment_from_args(cli.build_parser().parse_args(words[3:])) == e
    assert cli.main(words[3:] + ["--no-progress"]) == 0
    assert "fedmd on digits" in capsys.readouterr().out
    assert {"experiment.json", "history.csv", "run.json"} <= {p.name for p in (tmp_path / "run").iterdir()}
    assert cli.main(["run", "--algorithm", "fedmd", "--models", "logreg,resnet", "--public", "digits"]) == 2
    assert capsys.readouterr().err.strip() == ("fedlab: error: --models: unknown architecture 'resnet'; "
                                               "choose from ['cnn', 'logreg', 'mlp']")


def test_baselines_transfer_is_fedmd_before_round_one(data, history):
    table = fedmd.baselines(experiment(), data=data)
    assert list(table["architecture"]) == list(history.per_client["architecture"])
    np.testing.assert_allclose(table["transfer"], history.per_client["transfer_accuracy"])
    assert table[["islands", "transfer", "pooled"]].apply(lambda c: c.between(0, 1)).all().all()
