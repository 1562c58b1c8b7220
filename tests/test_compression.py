"""Compression against independent computations: payloads decoded by NumPy, exact byte counts by
hand, error feedback's residual by hand, lossless settings equal to FedAvg; the CLI contract."""
from __future__ import annotations

import math
import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import fedlab
from conftest import toy_data
from fedlab.algorithms.fedavg import fedavg
from fedlab.compression import compressed, make_compressor
from fedlab.core.types import tree_nbytes


def test_payloads_decode_as_numpy_says_and_count_their_bytes():
    rng = np.random.default_rng(0)
    d = 1000
    v = rng.normal(size=d).astype(np.float32)
    key = jax.random.key(3)
    # top-k: the k largest |v_i| exactly, 4 bytes a value + 2 bytes an index (d <= 65536)
    c = make_compressor("topk:0.05", d)
    p = c.encode(jnp.asarray(v), key)
    k = 50
    expected = np.zeros(d, np.float32)
    top = np.argsort(-np.abs(v))[:k]
    expected[top] = v[top]
    np.testing.assert_array_equal(np.asarray(c.decode(p)), expected)
    assert tree_nbytes(p) == 4 * k + 2 * k
    assert tree_nbytes(make_compressor("topk:0.05", 70000).encode(jnp.zeros(70000), key)) == 3500 * 8
    # sign: mean |v| times the signs; 4 + ceil(d / 8) bytes
    c = make_compressor("sign", 13)
    p = c.encode(jnp.asarray(v[:13]), key)
    np.testing.assert_allclose(np.asarray(c.decode(p)), np.abs(v[:13]).mean() * np.where(v[:13] >= 0, 1, -1), rtol=1e-6)
    assert tree_nbytes(p) == 4 + 2
    # rand-k: the server regenerates the k coordinates from the 4-byte seed; scaled d/k without EF
    c = make_compressor("randk:0.1", d)
    out = np.asarray(c.decode(c.encode(jnp.asarray(v), key)))
    kept = np.flatnonzero(out)
    assert len(kept) == 100 and tree_nbytes(c.encode(jnp.asarray(v), key)) == 4 * 100 + 4
    np.testing.assert_allclose(out[kept], v[kept] * d / 100, rtol=1e-6)
    # QSGD: levels in [-s, s], unbiased (mean over many keys), 4 + d bytes for s <= 127
    c = make_compressor("qsgd:4", d)
    p = c.encode(jnp.asarray(v), key)
    assert tree_nbytes(p) == 4 + d and np.abs(np.asarray(p["levels"])).max() <= 4
    draws = jax.vmap(lambda k: c.decode(c.encode(jnp.asarray(v), k)))(jax.random.split(key, 1000))
    bound = np.linalg.norm(v) / 4 / math.sqrt(1000) * 5            # 5 standard errors, at most
    assert np.abs(np.asarray(draws).mean(0) - v).max() < bound


def run(strategy, data, **kw):
    kw = {"rounds": 2, "local_epochs": 1, "batch_size": 64, "progress": False, **kw}
    return fedlab.simulate(strategy, "logreg", data, **kw)


def test_lossless_compression_is_fedavg_and_bytes_are_exact():
    """top-k of everything, both ways, with error feedback: one round is FedAvg's (NumPy), to the byte."""
    from test_security import client_deltas

    data = toy_data(num_clients=6)
    h = run(compressed(fedavg(client_lr=0.5), up="topk:1.0", down="topk:1.0", error_feedback=True), data, rounds=1)
    n = data.train_counts.astype(np.float64)
    params = np.concatenate([np.asarray(h.params["W"]).ravel(), np.asarray(h.params["b"])])
    np.testing.assert_allclose(params, (n[:, None] * client_deltas(data)).sum(0) / n.sum(), rtol=1e-5, atol=1e-7)
    d = 5 * 3 + 3
    assert (h["bytes_up"] == 6 * d * (4 + 2)).all() and (h["bytes_down"] == 6 * d * (4 + 2)).all()
    assert np.abs(np.asarray(h.state.client_states.residual)).max() < 1e-6


def test_error_feedback_residual_is_what_top_k_dropped():
    """One round of top-20%: the aggregate is the mean of what was sent; each residual is what was not."""
    from test_security import client_deltas

    data = toy_data(num_clients=4)
    h = run(compressed(fedavg(client_lr=0.5), up="topk:0.2", error_feedback=True), data, rounds=1)
    deltas = client_deltas(data)
    k = math.ceil(0.2 * deltas.shape[1])
    sent = np.zeros_like(deltas)
    for i, v in enumerate(deltas):
        top = np.argsort(-np.abs(v))[:k]
        sent[i, top] = v[top]
    n = data.train_counts.astype(np.float64)
    params = np.concatenate([np.asarray(h.params["W"]).ravel(), np.asarray(h.params["b"])])
    np.testing.assert_allclose(params, (n[:, None] * sent).sum(0) / n.sum(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(h.state.client_states.residual), deltas - sent, rtol=1e-5, atol=1e-7)
    assert (h["bytes_up"] == 4 * k * (4 + 2)).all()


def test_compression_refuses_what_it_cannot_compose_with():
    from fedlab.privacy import dp, secure

    from fedlab.algorithms.scaffold import scaffold

    with pytest.raises(ValueError, match="does not send a plain model delta"):
        compressed(scaffold(), up="sign")
    # DP composes (tests/test_dp_compression.py), but only its uplink: its broadcast carries the clip
    with pytest.raises(ValueError, match="compress_down: .* broadcasts more than its model"):
        compressed(dp(fedavg(), clip=1.0, clients_per_round=2, num_clients=4, noise_multiplier=1.0), down="sign")
    with pytest.raises(ValueError, match="host aggregation"):
        compressed(secure(fedavg()), up="topk:0.1")


def test_cli_flags_history_and_one_line_errors(tmp_path, capsys):
    from fedlab.cli import main

    out = tmp_path / "run"
    assert main(["run", "--dataset", "digits", "--clients", "10", "--rounds", "2", "--local-steps", "2",
                 "--attack", "backdoor:3", "--attackers", "0.2", "--defense", "median", "--compress", "topk:0.1",
                 "--error-feedback", "--no-progress", "--out", str(out)]) == 0
    history = pd.read_csv(out / "history.csv")
    assert {"test_accuracy", "bytes_up", "backdoor_accuracy"} <= set(history.columns)
    assert (history["bytes_up"] == 10 * (65 * 4 + 65 * 2)).all()     # 650 params, top 65, uint16 indices
    assert len(json.loads((out / "run.json").read_text())["attackers"]) == 2
    e = fedlab.Experiment.from_json((out / "experiment.json").read_text())
    assert (e.attack, e.defense, e.compress, e.error_feedback) == ("backdoor:3,0.5", "median", "topk:0.1", True)
    printed = capsys.readouterr().out
    assert "backdoor accuracy" in printed and f"attackers {json.loads((out / 'run.json').read_text())['attackers']}" in printed
    for flags, message in [(["--attackers", "1"], "--attackers must be in [0, 1)"),
                           (["--defense", "krum:9"], "--defense: krum:9 needs at least 21 clients per round"),
                           (["--compress", "topk:0"], "--compress: topk FRACTION must be in (0, 1]"),
                           (["--attack", "nope"], "--attack: unknown kind 'nope'")]:
        argv = ["run", "--dataset", "digits", "--clients", "10", "--rounds", "1", "--attack", "sign_flip",
                "--attackers", "0.1", *flags, "--out", str(tmp_path / "bad"), "--no-progress"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "bad" / "history.csv").exists()


def test_round_trip_of_the_new_fields():
    from fedlab.cli import build_parser, experiment_from_args
    import shlex

    e = fedlab.Experiment(attack="scale:10", attackers=0.25, defense="multikrum:1,3", compress="qsgd:8",
                          compress_down="sign", error_feedback=True)
    assert e.attack == "scale:10" and e.defense == "multikrum:1,3"
    assert fedlab.Experiment.from_dict(e.to_dict()) == e
    assert fedlab.Experiment.from_json(e.to_json()) == e
    namespace = {}
    exec(e.to_code().replace("history = experiment.run()", ""), namespace)
    assert namespace["experiment"] == e
    assert experiment_from_args(build_parser().parse_args(shlex.split(e.to_command())[3:])) == e
    assert fedlab.Experiment(attack="", defense=" ") == fedlab.Experiment()     # empty boxes mean off


def test_everything_composed_resumes_bit_identically(tmp_path):
    """ALIE through Krum, compressed both ways with error feedback, Poisson sampling: 3 rounds then a
    resume to 5 equals 5 at once (the residuals and the clients' view are in the checkpoint)."""
    e = fedlab.Experiment(dataset="synthetic:1,1", num_clients=12, clients_per_round=10, rounds=5, local_steps=3,
                          sampling="poisson", attack="alie", attackers=0.2, defense="krum:1", compress="topk:0.3",
                          compress_down="qsgd:8", error_feedback=True)
    whole = e.run(out=tmp_path / "whole", progress=False)
    e.replace(rounds=3).run(out=tmp_path / "part", progress=False)
    resumed = fedlab.resume(tmp_path / "part", rounds=5, progress=False)
    assert whole.status == resumed.status == "completed"
    a, b = (pd.read_csv(tmp_path / d / "history.csv") for d in ("whole", "part"))
    cols = ["round", "participants", "local_loss", "train_loss", "test_accuracy", "bytes_up", "bytes_down", "alie_z"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    for x, y in zip(jax.tree.leaves(whole.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert resumed.attackers == whole.attackers and len(whole.attackers) == 2
