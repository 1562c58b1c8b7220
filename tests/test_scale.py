"""Issue 15: many devices (--devices N, one SPMD program over a Mesh) and large populations."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fedlab
from fedlab.cli import build_parser, experiment_from_args

from conftest import ROOT

# Runs in a fresh interpreter: the 4 CPU devices exist only if XLA_FLAGS is set before jax starts.
_DEVICES_SCRIPT = textwrap.dedent("""
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np, fedlab
    from fedlab.data.loaders import load_federated
    assert len(jax.devices()) == 4
    data = load_federated("synthetic:1,1", num_clients=24, seed=0)
    out = {}
    for algorithm, extra in (("fedavg", dict(stragglers=0.5, local_epochs=1)),
                             ("scaffold", dict(local_steps=4))):
        runs = []
        for devices in (1, 4):
            h = fedlab.simulate(algorithm, "logreg", data, rounds=3, clients_per_round=8, batch_size=10,
                                devices=devices, progress=False, **extra)
            cols = [c for c in h.select_dtypes("number").columns if c not in ("seconds", "elapsed")]
            leaves = jax.tree.leaves((h.params, h.state.client_states))
            runs.append(dict(status=h.status, columns=cols, table=np.asarray(h[cols], float).tolist(),
                             leaves=[np.asarray(x, float).ravel().tolist() for x in leaves]))
        out[algorithm] = runs
    try:
        fedlab.simulate("fedavg", "logreg", data, rounds=1, clients_per_round=6, devices=4, progress=False)
    except ValueError as err:
        out["indivisible"] = str(err)
    print(json.dumps(out))
""")


def test_four_devices_equal_one_device():
    """--xla_force_host_platform_device_count=4: fedavg (with stragglers) and scaffold (per-client
    state) give the one-device History, final model and client states to 1e-5."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""}
    done = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for algorithm in ("fedavg", "scaffold"):
        one, four = out[algorithm]
        assert one["status"] == four["status"] == "completed"
        assert one["columns"] == four["columns"] and "train_loss" in one["columns"]
        np.testing.assert_allclose(four["table"], one["table"], atol=1e-5, rtol=1e-5)
        assert len(one["leaves"]) == len(four["leaves"]) >= 2
        for a, b in zip(one["leaves"], four["leaves"]):
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)
    assert "devices must divide clients_per_round=6" in out["indivisible"]


def test_devices_setting_checks_and_round_trips():
    e = fedlab.Experiment(num_clients=40, clients_per_round=8, devices=4)
    assert fedlab.Experiment.from_dict(e.to_dict()) == e
    assert "--devices 4" in e.to_command()
    assert experiment_from_args(build_parser().parse_args(shlex.split(e.to_command())[3:])) == e
    namespace = {}
    exec(e.to_code().replace("history = experiment.run()", ""), namespace)
    assert namespace["experiment"] == e
    for bad, message in ((0, "devices must be an integer in [1, 4096]"), (float("nan"), "devices must be an integer"),
                         (3, "devices must divide clients_per_round=8")):
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            fedlab.Experiment(num_clients=40, clients_per_round=8, devices=bad)
    # this process has one CPU device: asking for more fails before any training, saying how to get them
    import jax

    n = len(jax.devices()) + 1
    with pytest.raises(ValueError, match=f"at most the {n - 1} .* got {n} .*xla_force_host_platform_device_count"):
        fedlab.Experiment(num_clients=40, clients_per_round=n, devices=n).build()
