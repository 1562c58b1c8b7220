"""Issue 15: many devices (--devices N, one SPMD program over a Mesh) and large populations."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
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
    n = len(jax.devices()) + 1
    with pytest.raises(ValueError, match=f"at most the {n - 1} .* got {n} .*xla_force_host_platform_device_count"):
        fedlab.Experiment(num_clients=40, clients_per_round=n, devices=n).build()


_CORES_SCRIPT = textwrap.dedent("""
    import json, os, sys
    if sys.argv[1] == "jax-first":          # JAX already started: fedlab leaves its one device alone
        import jax; jax.numpy.zeros(1)
    import jax, fedlab
    from fedlab.core import engine
    out = {"devices": jax.device_count()}
    if out["devices"] == 4:
        out["auto"] = [engine.auto_devices(6, True, 0), engine.auto_devices(6, False, 0),
                       engine.auto_devices(6, True, 0, chunk=3), engine.auto_devices(8, True, 2 ** 28),
                       engine.auto_devices(8, True, 2 ** 30), engine.auto_devices(6, True, 0, round_flops=lambda: 1e6),
                       engine.auto_devices(6, True, 0, round_flops=lambda: 1e8),
                       engine.auto_devices(5, True, 0, round_flops=lambda: 1 / 0)]   # 1 device: never asked
        from fedlab.data.loaders import load_federated
        data = load_federated("synthetic:1,1", num_clients=12, seed=0)
        runs = [fedlab.simulate("fedavg", model, data, rounds=2, clients_per_round=6, local_steps=3,
                                progress=False, **kw)
                for model in ("mlp", "logreg") for kw in ({}, {"devices": 1})]
        out["settings"] = [h.settings["devices"] for h in runs]
        out["loss"] = [h["train_loss"].tolist() for h in runs]
    print(json.dumps(out))
""")


def test_round_flops_counts_the_dense_products():
    """A mini-batch's gradient of a dense net costs 2*B*in*out FLOPs per layer for the forward
    product, as much for the weight gradient, and as much again for the input gradient of every
    layer but the first; XLA's count adds only the elementwise work (under 10% here)."""
    from fedlab.core import engine
    from fedlab.core.registry import MODELS

    B, steps, clients = 10, 20, 7
    for name, sizes in (("logreg", (60, 10)), ("mlp", (60, 200, 200, 10))):
        model = MODELS[name].factory((60,), 10)
        params = jax.eval_shape(model.init, jax.random.key(0))
        layers = [2 * B * a * b for a, b in zip(sizes[:-1], sizes[1:])]
        hand = (2 * sum(layers) + sum(layers[1:])) * steps * clients
        flops = engine.round_flops(model, params, (60,), B, steps, clients)
        assert hand <= flops <= 1.1 * hand, (name, flops, hand)


def test_one_cpu_device_per_core_and_auto_devices():
    """Importing fedlab asks JAX for one CPU device per core unless the user chose (FEDLAB_CPU_DEVICES,
    XLA_FLAGS) or JAX already started; devices="auto" takes the most devices that split the round
    evenly (and keep the replicated data's extra copies under 1 GiB), and equals one device."""
    def devices(arg="", **env):
        done = subprocess.run([sys.executable, "-c", _CORES_SCRIPT, arg], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "",
                                                "FEDLAB_CPU_DEVICES": "", **env})
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert devices()["devices"] == len(os.sched_getaffinity(0))
    assert devices("jax-first", FEDLAB_CPU_DEVICES="3")["devices"] == 1
    assert devices(XLA_FLAGS="--xla_force_host_platform_device_count=2", FEDLAB_CPU_DEVICES="3")["devices"] == 2
    out = devices(FEDLAB_CPU_DEVICES="4")
    # 6 clients: 3 devices (fixed), 4 (Poisson pads), 2 (chunks of 3); 256 MiB of data: 3 copies more
    # fit in 1 GiB, 1 GiB does not; a round of 1e6 FLOPs stays on one device, 1e8 does not; 5 clients
    # (fixed) split over no more than one device, so their FLOPs are not estimated
    assert out["auto"] == [3, 4, 2, 4, 1, 1, 3, 1]
    # the MLP's round (about 6 x 3 x 1e7 FLOPs) is split, logistic regression's (about 1e6) is not
    assert out["settings"] == [3, 1, 1, 1]
    np.testing.assert_allclose(out["loss"][0], out["loss"][1], rtol=1e-5)


# ---- populations generated on demand ------------------------------------------------------------
def _materialized(pop):
    """Every client of a generated population, in memory (its evaluation sample of all clients)."""
    from fedlab.data.population import GeneratedPopulation

    everyone = GeneratedPopulation(pop.name, pop.source, pop.test_counts, pop.num_clients, pop.seed)
    return everyone.evaluation_data()


def test_generated_rows_follow_the_generator():
    """Client sizes 50 + floor(LogNormal(4, 2)); each row x ~ N(v_k, Sigma) with y = argmax(x W_k + b_k),
    checked in NumPy against the client's own model; synthetic_iid shares one model and v_k = 0."""
    from fedlab.data.population import generated_population
    from fedlab.data.synthetic import feature_variances

    big = generated_population("synthetic", 20000, seed=1)
    sizes = big.train_counts + big.test_counts
    assert sizes.min() >= 50
    assert abs(np.median(sizes) - (50 + np.exp(4.0))) < 8                  # median of LogNormal(4, 2) is e^4
    np.testing.assert_array_equal(big.test_counts, np.floor(0.2 * sizes + 0.5))

    pop = generated_population("synthetic", 6, alpha=0.5, beta=0.5, seed=3)
    data = _materialized(pop)
    for k in range(pop.num_clients):
        c = pop.source.for_client(k)
        W, b, v = (np.asarray(t, np.float64) for t in (c.W, c.b, c.v))
        x = np.concatenate(data.client(k, "train")[:1] + data.client(k, "test")[:1]).astype(np.float64)
        y = np.concatenate([data.client(k, "train")[1], data.client(k, "test")[1]])
        assert len(y) == pop.train_counts[k] + pop.test_counts[k]
        np.testing.assert_array_equal(y, np.argmax(x @ W + b, axis=1))
    c = pop.source.for_client(0)
    rows = jax_rows(c, 4000)
    np.testing.assert_allclose(rows.mean(0), np.asarray(c.v), atol=4 * np.sqrt(1 / 4000))
    np.testing.assert_allclose(rows.var(0), feature_variances(), rtol=0.1)
    iid = generated_population("synthetic_iid", 3, seed=0).source
    a, b = iid.for_client(0), iid.for_client(2)
    np.testing.assert_array_equal(a.W, b.W)
    assert not np.any(np.asarray(a.v))


def jax_rows(client, n):
    return np.asarray(jax.jit(jax.vmap(lambda i: client.row(i)[0]))(jnp.arange(n)), np.float64)


def test_generated_run_equals_the_in_memory_run_of_the_same_rows():
    """simulate on the generated population (rows made in the round) gives the History of simulate on
    the same population materialized in memory (rows gathered from arrays): the data source changes
    where rows come from, not which rows."""
    from fedlab.data.population import generated_population

    pop = generated_population("synthetic", 30, seed=2, eval_clients=30)
    memory = _materialized(pop)
    kw = dict(rounds=3, clients_per_round=6, local_steps=5, batch_size=10, progress=False)
    for algorithm in ("fedavg", "scaffold"):
        a = fedlab.simulate(algorithm, "logreg", pop, **kw)
        b = fedlab.simulate(algorithm, "logreg", memory, **kw)
        cols = ["local_loss", "train_loss", "test_loss", "test_accuracy", "client_acc_mean"]
        np.testing.assert_allclose(a[cols].to_numpy(float), b[cols].to_numpy(float), rtol=1e-5, atol=1e-6)
        assert a.attrs["evaluated_clients"] == 30


def test_hundred_thousand_clients_setup_is_small_and_state_memory_is_checked():
    """100k clients: the population is its row counts (no rows exist until sampled); the evaluation
    sample is eval_clients clients; SCAFFOLD's per-client state is reported, and refused with the
    needed size when it cannot fit."""
    from fedlab.core.simulate import check_client_state_memory
    from fedlab.core.registry import ALGORITHMS, MODELS

    e = fedlab.Experiment(dataset="synthetic_iid", num_clients=100000, clients_per_round=1000, local_steps=2)
    assert e.resolved_client_data == "generated"
    assert fedlab.Experiment(dataset="synthetic_iid", num_clients=1000).resolved_client_data == "memory"
    pop = e.load_data()
    assert pop.num_clients == 100000 and pop.eval_clients == 1000 and pop.num_rows > 30_000_000
    model = MODELS["mlp"].factory((60,), 10)
    scaffold = ALGORITHMS["scaffold"].factory()
    params = sum(x.size for x in jax.tree.leaves(model.init(jax.random.key(0))))
    assert check_client_state_memory(scaffold, model, 1000, limit=2**40) == 1000 * params * 4
    assert check_client_state_memory(ALGORITHMS["fedavg"].factory(), model, 100000, limit=1) == 0
    with pytest.raises(ValueError, match=r"scaffold keeps a state per client: 100000 clients x .* = 20\.\d\d GiB"):
        check_client_state_memory(scaffold, model, 100000, limit=8 * 2**30)
    # 1000 clients' states (0.2 GiB) and the round's copy fit in 1 GiB once, not on 4 CPU devices
    check_client_state_memory(scaffold, model, 1000, limit=2**30)
    with pytest.raises(ValueError, match="on each of 4 CPU devices, .* use fewer devices"):
        check_client_state_memory(scaffold, model, 1000, limit=2**30, replicas=4)
    with pytest.raises(ValueError, match="local_epochs: generated client data trains by local_steps"):
        fedlab.Experiment(dataset="synthetic", client_data="generated", local_epochs=1)
    with pytest.raises(ValueError, match="client_data: 'generated' needs a synthetic dataset"):
        fedlab.Experiment(dataset="digits", client_data="generated")
    with pytest.raises(ValueError, match="client_data must be one of"):
        fedlab.Experiment(client_data="tape")
    with pytest.raises(ValueError, match="eval_clients must be an integer"):
        fedlab.Experiment(eval_clients=0)
    f = fedlab.Experiment(dataset="synthetic:0.5,0.5", num_clients=8000, client_data="generated", eval_clients=50,
                          local_steps=3, clients_per_round=8)
    assert fedlab.Experiment.from_dict(f.to_dict()) == f
    assert experiment_from_args(build_parser().parse_args(shlex.split(f.to_command())[3:])) == f


def test_eval_clients_sample_of_in_memory_data():
    """eval_clients on in-memory data: the accuracy is the one over the sampled clients' test rows,
    recomputed here in NumPy from the final model."""
    from fedlab.data.loaders import load_federated

    data = load_federated("synthetic:1,1", num_clients=20, seed=0)
    h = fedlab.simulate("fedavg", "logreg", data, rounds=2, clients_per_round=5, local_steps=3, eval_clients=7,
                        progress=False)
    assert h.attrs["evaluated_clients"] == 7
    u = np.asarray(jax.random.uniform(jax.random.fold_in(jax.random.key(0), 7), (20,)))
    ids = np.sort(np.argsort(u, kind="stable")[:7])
    x = np.concatenate([data.client(k, "test")[0] for k in ids])
    y = np.concatenate([data.client(k, "test")[1] for k in ids])
    W, b = np.asarray(h.params["W"]), np.asarray(h.params["b"])
    assert h["test_accuracy"].iloc[-1] == pytest.approx(np.mean(np.argmax(x @ W + b, 1) == y))
