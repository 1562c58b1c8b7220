"""Failures are loud and safe: bad knobs are refused at the edge, NaN from a client that does not
take part cannot reach the round, empty rounds leave the server alone (but dp still noises),
divergence shows in ``params_finite``, encryption refuses NaN, degenerate data is reported."""
import inspect
import math
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from phe import paillier as phe_paillier

import fedlab
from conftest import toy_data
from fedlab import algorithms
from fedlab.algorithms import common
from fedlab.algorithms.fedopt import make_server_optimizer
from fedlab.core import engine
from fedlab.core.checks import check_int, check_number
from fedlab.core.types import ClientOutput, Strategy, host_aggregator
from fedlab.data.loaders import from_dataframe, load_federated
from fedlab.privacy import accounting, paillier, secagg
from fedlab.privacy.dp import dp, local_dp

BAD_NUMBERS = [math.inf, -math.inf, math.nan]


# ---------------------------------------------------------------- checks at the edge

def test_check_int_and_check_number_messages():
    assert check_int("rounds", 3, 1) == 3
    for value in (0, 2.0, True, "3"):
        with pytest.raises(ValueError, match=re.escape(f"rounds must be an integer >= 1, got {value!r}")):
            check_int("rounds", value, 1)
    with pytest.raises(ValueError, match=re.escape("k must be an integer in [1, 5], got 6")):
        check_int("k", 6, 1, 5)
    assert check_number("lr", np.float32(0.5), 0, low_open=True) == 0.5
    assert check_number("lr", jnp.float32(0.25), 0, low_open=True) == 0.25
    cases = [(dict(low=0), -1.0, "mu must be >= 0, got -1.0"),
             (dict(low=0), math.inf, "mu must be a finite number >= 0, got inf"),
             (dict(low=0), math.nan, "mu must be a finite number >= 0, got nan"),
             (dict(low=0), True, "mu must be a finite number >= 0, got True"),
             (dict(low=0), "1", "mu must be a finite number >= 0, got '1'"),
             (dict(low=0, high=1, high_open=True), 1.0, "mu must be in [0, 1), got 1.0"),
             (dict(low=0, high=1, low_open=True, high_open=True), -math.inf,
              "mu must be a finite number in (0, 1), got -inf"),
             (dict(), math.nan, "mu must be a finite number, got nan")]
    for kwargs, value, message in cases:
        with pytest.raises(ValueError) as err:
            check_number("mu", value, **kwargs)
        assert str(err.value) == message


FACTORIES = {name: getattr(algorithms, name) for name in algorithms.__all__}
KNOBS = [(name, knob) for name, factory in FACTORIES.items()
         for knob, p in inspect.signature(factory).parameters.items() if isinstance(p.default, float)]


def test_every_float_knob_is_covered():
    knobs = {knob for _, knob in KNOBS}
    assert {"client_lr", "server_lr", "mu", "q", "tau", "momentum", "beta1", "beta2"} <= knobs
    assert len(KNOBS) >= 25


@pytest.mark.parametrize("name, knob", KNOBS)
@pytest.mark.parametrize("value", BAD_NUMBERS, ids=["inf", "-inf", "nan"])
def test_every_strategy_knob_refuses_inf_and_nan(name, knob, value):
    FACTORIES[name]()                                     # the defaults are fine
    with pytest.raises(ValueError, match=f"^{knob} must be a finite number"):
        FACTORIES[name](**{knob: value})


@pytest.mark.parametrize("knob", ["server_lr", "momentum", "beta1", "beta2", "tau"])
def test_make_server_optimizer_refuses_inf_and_nan(knob):
    for value in BAD_NUMBERS:
        with pytest.raises(ValueError, match=f"^{knob} must be a finite number"):
            make_server_optimizer("adam", **{"server_lr": 0.1, knob: value})


DP = dict(clip=1.0, clients_per_round=2, num_clients=10, noise_multiplier=1.0)


@pytest.mark.parametrize("call, knob", [
    (lambda v: dp(algorithms.fedavg(), **{**DP, "clip": v}), "clip"),
    (lambda v: dp(algorithms.fedavg(), **{**DP, "noise_multiplier": v}), "noise_multiplier"),
    (lambda v: dp(algorithms.fedavg(), **{**DP, "delta": v}), "delta"),
    (lambda v: dp(algorithms.fedavg(), **{**DP, "noise_multiplier": None, "target_epsilon": v, "rounds": 5}),
     "target_epsilon"),
    (lambda v: dp(algorithms.fedavg(), **DP, adaptive_clipping=True, target_quantile=v), "target_quantile"),
    (lambda v: dp(algorithms.fedavg(), **DP, adaptive_clipping=True, clip_lr=v), "clip_lr"),
    (lambda v: dp(algorithms.fedavg(), **DP, adaptive_clipping=True, count_noise_stddev=v),
     "count_noise_stddev"),
    (lambda v: local_dp(algorithms.fedavg(), clip=v, noise_multiplier=1.0), "clip"),
    (lambda v: local_dp(algorithms.fedavg(), clip=1.0, noise_multiplier=v), "noise_multiplier"),
    (lambda v: local_dp(algorithms.fedavg(), clip=1.0, noise_multiplier=1.0, delta=v), "delta"),
    (lambda v: accounting.epsilon(v, 0.1, 10, 1e-5), "noise_multiplier"),
    (lambda v: accounting.epsilon(1.0, v, 10, 1e-5), "sampling_rate"),
    (lambda v: accounting.calibrate(v, 1e-5, 10, 0.1), "target_epsilon"),
])
def test_privacy_knobs_refuse_inf_and_nan(call, knob):
    for value in BAD_NUMBERS:
        with pytest.raises(ValueError, match=f"^{knob} must be a finite number"):
            call(value)


# ---------------------------------------------------------------- the engine masks, never multiplies by 0

SIZES = [3, 4, 5, 6, 7, 8]            # client k has n_k = k + 3 training rows: n identifies the client
BAD_N = 5                             # client 2 turns everything it sends into NaN / inf


def sized_clients():
    rng = np.random.default_rng(0)
    train = [(rng.normal(size=(n, 2)).astype(np.float32), np.arange(n) % 2) for n in SIZES]
    test = [(x[:1], y[:1]) for x, y in train]
    return fedlab.FederatedDataset.from_clients("sized", train, test, 2)


def poisoned(bad_weight):
    """Client k sends update n_k * ones with weight 1, reports loss n_k and metric n_k; the client with
    n = BAD_N sends NaN, loss NaN, metric inf and weight ``bad_weight``."""

    def client_init(w_global, client_state, info):
        return w_global, info.num_examples.astype(jnp.float32)

    def client_step(local, batch, loss_fn):
        _, n = local
        return local, jnp.where(n == BAD_N, jnp.nan, n)

    def client_final(local, client_state, info):
        w, n = local
        bad = n == BAD_N
        update = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, n) * jnp.ones_like(p), w)
        metrics = {"n": jnp.where(bad, jnp.inf, n)}
        return ClientOutput(update, jnp.where(bad, bad_weight, 1.0), metrics), client_state

    return Strategy("poisoned", common.server_init, client_init, client_step, client_final,
                    common.add_aggregate)


ZERO_MODEL = fedlab.Model("zero", lambda key: {"w": jnp.zeros(3)}, lambda p, x: jnp.zeros((len(x), 2)), 2)


def round_runner(strategy, data, model=ZERO_MODEL, chunk=2, local_steps=1):
    """(run, server_state, client_states): the initial states and run(server_state, client_states,
    ids, valid, seed=0) -> RoundOutput, one jitted engine.make_round with len(ids) slots."""
    params = model.init(jax.random.key(0))
    one = strategy.client_state_init(params)
    client_states = jax.tree.map(lambda s: jnp.broadcast_to(s, (data.num_clients,) + jnp.shape(s)).copy(),
                                 one)
    dev, compiled = engine.device_data(data), {}

    def run(server_state, client_states, ids, valid, seed=0):
        if len(ids) not in compiled:
            plan = engine.Plan(data.num_clients, len(ids), len(ids), chunk, 4, local_steps, None,
                               int(data.train_counts.max()), "poisson", 0.0)
            compiled[len(ids)] = jax.jit(engine.make_round(plan, strategy, model))
        return compiled[len(ids)](server_state, client_states, dev, np.asarray(ids, np.int32),
                                  np.asarray(valid, bool), jax.random.key(seed))

    return run, strategy.server_init(params), client_states


def run_round(strategy, data, ids, valid, **kw):
    """One round from the initial states."""
    run, server_state, client_states = round_runner(strategy, data, **kw)
    return run(server_state, client_states, ids, valid)


@pytest.mark.parametrize("case, ids, valid, bad_weight", [
    ("dropped", [0, 1, 2, 3, 4, 5], [True] * 6, 0.0),                           # sampled, weight 0
    ("padding", [0, 1, 3, 4, 2, 2], [True] * 4 + [False] * 2, 1.0),             # not sampled
    ("padding, NaN weight", [0, 1, 3, 4, 2, 2], [True] * 4 + [False] * 2, math.nan),
])
def test_a_client_that_does_not_take_part_cannot_poison_the_round(case, ids, valid, bad_weight):
    data = sized_clients()
    out = run_round(poisoned(bad_weight), data, ids, valid)
    n = np.array([SIZES[i] for i, ok in zip(ids, valid) if ok and SIZES[i] != BAD_N], float)
    np.testing.assert_allclose(out.server_state.params["w"], np.full(3, n.mean()), rtol=1e-6)
    m = jax.device_get(out.metrics)
    assert m["participants"] == len(n)
    assert m["local_loss"] == pytest.approx(n.mean(), rel=1e-6)        # mean over the participants
    assert m["n"] == pytest.approx(n.mean(), rel=1e-6)                 # weighted mean, weights 1
    assert m["params_finite"] == 1.0


def test_custom_aggregators_get_zero_rows_for_non_participants():
    data = sized_clients()
    ids, valid = [0, 1, 2, 3, 4, 2], [True] * 5 + [False]

    def mean(updates, weights, key):
        agg = jax.tree.map(lambda u: jnp.tensordot(weights, u, 1) / weights.sum(), updates)
        row_abs = jnp.abs(updates["w"]).sum(1)
        return agg, {"nonparticipant_abs": jnp.sum(jnp.where(weights == 0, row_abs, 0.0))}

    out = run_round(poisoned(0.0)._replace(aggregate=mean), data, ids, valid)
    assert float(out.metrics["nonparticipant_abs"]) == 0.0               # 0, not NaN
    np.testing.assert_allclose(out.server_state.params["w"], np.full(3, np.mean([3, 4, 6, 7])), rtol=1e-6)

    seen = []

    @host_aggregator
    def host_mean(updates, weights, key):
        seen.append((updates["w"].copy(), weights.copy()))
        return jax.tree.map(lambda u: np.tensordot(weights, u, 1) / weights.sum(), updates), {}

    strategy = poisoned(0.0)._replace(aggregate=host_mean)
    out = run_round(strategy, data, ids, valid)
    out = engine.finish_on_host(strategy, jax.jit(strategy.server_update), out)
    rows, weights = seen[0]
    np.testing.assert_array_equal(weights, [1, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(rows[weights == 0], 0.0)
    np.testing.assert_array_equal(rows[weights > 0], np.repeat([[3.0], [4.0], [6.0], [7.0]], 3, 1))
    np.testing.assert_allclose(out.server_state.params["w"], np.full(3, 5.0), rtol=1e-6)
    assert float(out.metrics["params_finite"]) == 1.0


# ---------------------------------------------------------------- empty rounds

def logreg_for(data):
    return fedlab.MODELS["logreg"].factory(data.input_shape, data.num_classes)


EMPTY_STRATEGIES = {
    "fedavg": lambda: algorithms.fedavg(client_lr=0.1),
    "fedprox": lambda: algorithms.fedprox(client_lr=0.1, mu=0.1),
    "fednova": lambda: algorithms.fednova(client_lr=0.1),
    "fedadam": lambda: algorithms.fedadam(client_lr=0.1, server_lr=0.1),
    "fedyogi": lambda: algorithms.fedyogi(client_lr=0.1, server_lr=0.1),
    "fedadagrad": lambda: algorithms.fedadagrad(client_lr=0.1),
    "fedavgm": lambda: algorithms.fedavgm(client_lr=0.1),
    "qffl": lambda: algorithms.qffl(client_lr=0.1, q=2.0),
    "scaffold": lambda: algorithms.scaffold(client_lr=0.1),
}


@pytest.mark.parametrize("name", sorted(EMPTY_STRATEGIES))
def test_an_empty_round_leaves_the_server_state_bit_identical(name):
    data, strategy = toy_data(), EMPTY_STRATEGIES[name]()
    model, K = logreg_for(data), data.num_clients
    run, server_state, client_states = round_runner(strategy, data, model, local_steps=2)
    full = run(server_state, client_states, range(K), [True] * K)          # momenta now != 0
    before = full.server_state
    empty = run(full.server_state, full.client_states, range(K), [False] * K, seed=1)
    assert float(empty.metrics["participants"]) == 0.0
    assert float(empty.metrics["params_finite"]) == 1.0
    for old, new in zip(jax.tree.leaves((before, full.client_states)),
                        jax.tree.leaves((empty.server_state, empty.client_states))):
        assert np.all(np.isfinite(old))
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


@pytest.mark.parametrize("name", ["fedadam", "fedavgm", "qffl"])
def test_without_the_engine_guard_an_empty_round_would_move_these(name):
    """The test above is not vacuous: a zero aggregate moves momentum methods and makes q-FFL NaN."""
    data, strategy = toy_data(), EMPTY_STRATEGIES[name]()
    model, K = logreg_for(data), data.num_clients
    full = run_round(strategy, data, range(K), [True] * K, model=model, local_steps=2)
    zeros = optax.tree_utils.tree_zeros_like(full.server_state.params)
    moved = strategy.server_update(full.server_state, (zeros, jnp.float32(0.0)) if name == "qffl" else zeros)
    pairs = zip(jax.tree.leaves(moved.params), jax.tree.leaves(full.server_state.params))
    assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in pairs)


def test_an_empty_round_with_a_host_aggregator_skips_it_and_keeps_the_state():
    data = toy_data()
    calls = []

    @host_aggregator
    def host_mean(updates, weights, key):
        calls.append(weights)
        if weights.sum() == 0:
            raise ValueError("no client to aggregate")
        return jax.tree.map(lambda u: np.tensordot(weights, u, 1) / weights.sum(), updates), {"host": 1.0}

    strategy = algorithms.fedavgm(client_lr=0.1)._replace(aggregate=host_mean)
    model, K = logreg_for(data), data.num_clients
    run, server_state, client_states = round_runner(strategy, data, model)
    server_update = jax.jit(strategy.server_update)
    full = run(server_state, client_states, range(K), [True] * K)
    full = engine.finish_on_host(strategy, server_update, full)
    assert len(calls) == 1 and full.metrics["host"] == 1.0
    before = full.server_state
    empty = run(full.server_state, full.client_states, range(K), [False] * K, seed=1)
    empty = engine.finish_on_host(strategy, server_update, empty)
    assert len(calls) == 1                                     # not called on an empty round
    assert float(empty.metrics["params_finite"]) == 1.0 and "host" not in empty.metrics
    for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(empty.server_state)):
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


def test_simulate_poisson_run_with_empty_rounds_keeps_params_on_those_rounds():
    """1 of 6 clients a round: about a third of the rounds sample nobody."""
    data = toy_data()
    seen = []
    h = fedlab.simulate("fedavgm", "logreg", data, rounds=12, clients_per_round=1, sampling="poisson",
                        local_steps=2, batch_size=4, client_lr=0.1, progress=False, seed=3,
                        callbacks=[lambda e: seen.append((e.metrics["clients"], jax.device_get(e.params)))])
    empty = [r for r in range(1, len(seen)) if seen[r][0] == 0]
    assert empty and len(empty) < len(seen) - 1, [c for c, _ in seen]
    for r in empty:
        for a, b in zip(jax.tree.leaves(seen[r][1]), jax.tree.leaves(seen[r - 1][1])):
            np.testing.assert_array_equal(a, b)
    assert np.isfinite(h["train_loss"]).all()


def test_dp_still_noises_an_empty_round():
    data = toy_data()
    z, clip, m = 1.0, 1.0, 2
    strategy = dp(algorithms.fedavg(client_lr=0.1), clip=clip, clients_per_round=m,
                  num_clients=data.num_clients, noise_multiplier=z)
    assert strategy.update_when_empty and not algorithms.fedavg().update_when_empty
    model, K = logreg_for(data), data.num_clients
    run, before, client_states = round_runner(strategy, data, model)
    out = run(before, client_states, range(K), [False] * K)
    assert float(out.metrics["participants"]) == 0.0
    delta = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(out.server_state.params),
                                                             jax.tree.leaves(before.params))])
    assert np.all(np.isfinite(delta)) and np.all(delta != 0)
    # noise only: N(0, (z C / m)^2) per parameter; 18 parameters, so a loose band around z C / m
    assert 0.5 < delta.std() / (z * clip / m) < 1.5


# ---------------------------------------------------------------- divergence

def test_params_finite_reports_a_diverged_model():
    data = toy_data()
    model = fedlab.MODELS["mlp"].factory(data.input_shape, data.num_classes)
    K = data.num_clients
    for lr, finite in ((1e4, 0.0), (0.1, 1.0)):
        run, state, client_states = round_runner(algorithms.fedavg(client_lr=lr), data, model, chunk=K,
                                                 local_steps=5)
        seen = []
        for r in range(3):
            out = run(state, client_states, range(K), [True] * K, seed=r)
            state = out.server_state
            leaves_finite = all(np.all(np.isfinite(p)) for p in jax.tree.leaves(state.params))
            seen.append(float(out.metrics["params_finite"]))
            assert seen[-1] == float(leaves_finite)          # the metric is NumPy's verdict
        assert seen[-1] == finite, seen
    assert float(engine.params_finite({"a": jnp.ones(2), "b": jnp.array([1.0, jnp.inf])})) == 0.0
    assert float(engine.params_finite({"a": jnp.ones(2), "b": jnp.array([1.0, jnp.nan])})) == 0.0
    assert float(engine.params_finite([jnp.ones(2), jnp.arange(3)])) == 1.0


# ---------------------------------------------------------------- what DP may wrap

def test_strategy_flags_and_backward_compatible_fields():
    assert not any(getattr(algorithms, n)().model_update for n in ("fednova", "qffl", "scaffold"))
    assert all(getattr(algorithms, n)().model_update for n in ("fedavg", "fedprox", "fedadam", "fedavgm"))
    fields = Strategy._fields
    assert fields[11:13] == ("model_update", "update_when_empty") and fields[:6] == (
        "name", "server_init", "client_init", "client_step", "client_final", "server_update")
    s = Strategy(*([None] * 11))                             # the old 11 positional fields still work
    assert s.model_update is True and s.update_when_empty is False


@pytest.mark.parametrize("name", ["fednova", "qffl", "scaffold"])
@pytest.mark.parametrize("wrap", [lambda s: dp(s, **DP),
                                  lambda s: local_dp(s, clip=1.0, noise_multiplier=1.0)], ids=["dp", "local_dp"])
def test_dp_refuses_strategies_that_send_more_than_a_model_update(name, wrap):
    message = (rf"^(local_)?dp\(\) clips and noises a model update.*; {name} sends more than that "
               r"\(model_update=False.*must not be clipped or noised$")
    with pytest.raises(ValueError, match=message):
        wrap(getattr(algorithms, name)())
    wrap(algorithms.fedadam())                              # FedOpt's clients send a model delta


# ---------------------------------------------------------------- encrypted aggregation refuses NaN

@pytest.fixture(scope="module")
def small_keypair():
    return phe_paillier.generate_paillier_keypair(n_length=512)     # fast; 2048 for real use


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_paillier_refuses_nan_and_inf_before_encrypting(small_keypair, bad):
    public, private = small_keypair
    vectors = np.array([[0.5, bad, 0.25], [1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        paillier.encrypted_sum(vectors, public, private, packed=True)
    # the same vectors without the bad value sum exactly (to the fixed-point step)
    vectors[0, 1] = 0.0
    total = paillier.encrypted_sum(vectors, public, private, packed=True).total
    np.testing.assert_allclose(total, [1.5, 2.0, 3.25], atol=2 ** -15)


def test_paillier_aggregator_ignores_nan_of_a_dropped_client_and_refuses_a_participants(small_keypair):
    aggregate = paillier.paillier_aggregator(keypair=small_keypair)
    updates = {"w": np.array([[1.0, 2.0], [np.nan, np.nan], [3.0, 4.0]])}
    mean, _ = aggregate(updates, np.array([1.0, 0.0, 1.0]), None)
    np.testing.assert_allclose(mean["w"], [2.0, 3.0], atol=1e-4)
    with pytest.raises(ValueError, match="NaN or infinite"):
        aggregate(updates, np.array([1.0, 1.0, 1.0]), None)


def test_secure_sum_refuses_nan():
    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        secagg.secure_sum(np.array([[1.0, np.nan], [0.0, 1.0]]), entropy=np.random.default_rng(0).bytes)


# ---------------------------------------------------------------- degenerate data

def dataset(train_y, test_sizes, x_fn=None, feature_names=None, num_classes=2):
    rng = np.random.default_rng(1)
    train, test = [], []
    for y, t in zip(train_y, test_sizes):
        x = rng.normal(size=(len(y) + t, 3)).astype(np.float32)
        if x_fn is not None:
            x = x_fn(x)
        train.append((x[:len(y)], np.asarray(y)))
        test.append((x[len(y):], np.zeros(t, int)))
    return fedlab.FederatedDataset.from_clients("d", train, test, num_classes, feature_names=feature_names)


def test_check_passes_clean_data():
    assert dataset([[0, 1, 1], [1, 0]], [1, 2]).check() == []
    assert toy_data().check() == []


def test_check_errors_single_class_and_no_test_rows():
    with pytest.raises(ValueError, match="target has a single class in the training rows"):
        dataset([[1, 1, 1], [1, 1]], [1, 1]).check()
    with pytest.raises(ValueError, match="no test rows.*test_fraction"):
        dataset([[0, 1, 1], [1, 0]], [0, 0]).check()


def test_check_warns_clients_without_test_rows_and_constant_columns():
    d = dataset([[0, 1], [1, 0], [0, 0, 1]], [0, 2, 0])
    assert d.check() == ["2 of 3 clients have no test rows; per-client accuracy covers the other 1"]

    def constant_middle(x):
        x[:, 1] = 7.0
        return x

    named = dataset([[0, 1], [1, 0]], [1, 1], constant_middle, feature_names=("age", "zip", "income"))
    assert named.check() == ["1 constant feature column(s) carry no information: zip"]
    unnamed = dataset([[0, 1], [1, 0]], [1, 1], constant_middle)
    assert unnamed.check() == ["1 constant feature column(s) carry no information: 1 (column indices)"]
    regression = dataset([[0.5, 1.5], [2.0, 1.0]], [1, 1], num_classes=0)
    assert regression.check() == []                     # one distinct value per row is fine for regression
    image = dataset([[0, 1], [1, 0]], [1, 1], lambda x: constant_middle(x).reshape(-1, 3, 1))
    assert image.input_shape == (3, 1) and image.check() == []      # constant image borders are normal


def test_from_dataframe_and_load_federated_report_degenerate_tables(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=40), "const": 3.0, "label": rng.integers(0, 2, 40)})
    with pytest.warns(UserWarning, match=r"features: constant column\(s\) \['const'\]"):
        from_dataframe(df, "label")
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_federated(f"csv:{path}", num_clients=4, target="label")
    messages = [str(w.message) for w in caught]
    assert any("constant feature column(s) carry no information: const" in m for m in messages), messages
    assert data.num_clients == 4
    with pytest.raises(ValueError, match="test_fraction"):
        load_federated(f"csv:{path}", num_clients=4, target="label", test_fraction=0.0)
    df["label"] = 1
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match="single class"):
        load_federated(f"csv:{path}", num_clients=4, target="label")
