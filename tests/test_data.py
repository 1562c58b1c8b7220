"""fedlab.data: partitioner invariants and skew, the FedProx generator, loaders, bad input."""
from __future__ import annotations

import math

import jax
import numpy as np
import pandas as pd
import pytest

from fedlab.core.registry import DATASETS, PARTITIONS
from fedlab.data import (CentralDataset, FederatedDataset, federate, from_csv, from_dataframe,
                         generate_synthetic, load_federated, make_partition)
from fedlab.data import loaders
from fedlab.data.synthetic import feature_variances


@pytest.fixture(scope="module")
def digits():
    return loaders.digits(None, None)


@pytest.fixture(scope="module")
def lending():
    return loaders.lending_club(None, None)


@pytest.fixture(scope="module")
def caravan():
    return loaders.caravan(None, None)


def label_hist(part, y, num_classes):
    return np.stack([np.bincount(y[i], minlength=num_classes) for i in part.client_indices])


def assert_exact_cover(part, n):
    rows = np.concatenate(part.client_indices)
    assert len(rows) == n                                      # nothing duplicated ...
    np.testing.assert_array_equal(np.sort(rows), np.arange(n))  # ... nothing lost
    assert min(len(i) for i in part.client_indices) >= 1


# ---- partitioners --------------------------------------------------------------------------
RANDOM_SPECS = ["iid", "dirichlet:0.5", "dirichlet:0.05", "shards", "shards:3", "quantity:1.5",
                "quantity_dirichlet:0.5", "feature_shift:0.2"]


@pytest.mark.parametrize("spec", RANDOM_SPECS)
def test_partition_covers_every_row_once_and_depends_only_on_key(digits, spec):
    k0, k1 = jax.random.key(0), jax.random.key(1)
    a = make_partition(digits, spec, 20, k0)
    assert len(a.client_indices) == 20
    assert_exact_cover(a, digits.num_examples)
    again = make_partition(digits, spec, 20, k0)
    for i, j in zip(a.client_indices, again.client_indices):
        np.testing.assert_array_equal(i, j)
    other = make_partition(digits, spec, 20, k1)
    assert any(len(i) != len(j) or np.any(i != j) for i, j in zip(a.client_indices, other.client_indices))


def test_natural_and_column_partitions_follow_the_column(lending):
    part = make_partition(lending, "natural", None, jax.random.key(0))
    assert_exact_cover(part, lending.num_examples)
    counts = lending.columns["addr_state"].value_counts().sort_index()
    assert part.client_names == tuple(counts.index)
    np.testing.assert_array_equal([len(i) for i in part.client_indices], counts.to_numpy())
    for name, rows in zip(part.client_names, part.client_indices):
        assert set(lending.columns["addr_state"].iloc[rows]) == {name}
    col = make_partition(lending, "column:term", None, jax.random.key(0))
    assert col.client_names == ("term_36", "term_60")
    np.testing.assert_array_equal([len(i) for i in col.client_indices],
                                  lending.columns["term"].value_counts().sort_index().to_numpy())


def test_dirichlet_huge_alpha_is_near_iid_and_tiny_alpha_near_one_class(digits):
    glob = np.bincount(digits.y, minlength=10) / digits.num_examples
    tv, eff_classes, top_share = {}, {}, {}
    for alpha in ("10000", "0.01"):
        tvs, effs, tops = [], [], []
        for seed in range(4):
            part = make_partition(digits, f"dirichlet:{alpha}", 10, jax.random.key(seed))
            hist = label_hist(part, digits.y, 10)
            frac = hist / hist.sum(1, keepdims=True)
            tvs.append(0.5 * np.abs(frac - glob).sum(1).mean())
            effs.append((1.0 / (frac**2).sum(1)).mean())       # inverse Simpson: classes in use
            tops.append((hist.max(0) / hist.sum(0)).mean())    # share of a class on its top client
        tv[alpha], eff_classes[alpha], top_share[alpha] = map(np.mean, (tvs, effs, tops))
    assert tv["10000"] < 0.05 and eff_classes["10000"] > 9.0
    assert tv["0.01"] > 0.7 and eff_classes["0.01"] < 2.0 and top_share["0.01"] > 0.9


def test_dirichlet_min_size_fix_up(digits):
    part = make_partition(digits, "dirichlet:0.01", 50, jax.random.key(3))
    assert min(len(i) for i in part.client_indices) == 10      # the default, some clients topped up
    part = make_partition(digits, "dirichlet:0.01,30", 50, jax.random.key(3))
    assert min(len(i) for i in part.client_indices) >= 30
    assert_exact_cover(part, digits.num_examples)


@pytest.mark.parametrize("per_client", [1, 2])
def test_shards_give_at_most_per_client_labels(digits, per_client):
    part = make_partition(digits, f"shards:{per_client}", 50, jax.random.key(0))
    hist = label_hist(part, digits.y, 10)
    assert (hist > 0).sum(1).max() <= per_client
    sizes = hist.sum(1)                    # near-equal shards, as in FedAvg: within 10% of N / K
    assert sizes.max() - sizes.min() <= 0.1 * sizes.mean()


def test_quantity_sizes_follow_the_power_law(lending):
    n, k, exponent, m = lending.num_examples, 20, 1.5, 10
    part = make_partition(lending, f"quantity:{exponent}", k, jax.random.key(0))
    assert_exact_cover(part, n)
    sizes = np.sort([len(i) for i in part.client_indices])[::-1]
    ranks = np.arange(1, k + 1)
    expected = (n - k * m) * ranks**-exponent / np.sum(ranks**-exponent)
    assert np.abs(sizes - m - expected).max() <= 1.0           # largest-remainder rounding
    slope = np.polyfit(np.log(ranks), np.log(sizes - m), 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.02)
    # IID labels: each client's label mix is close to the global one (2 classes)
    hist = label_hist(part, lending.y, 2)
    p, size = np.mean(lending.y == 0), hist.sum(1)
    assert np.all(np.abs(hist[:, 0] / size - p) < 4.5 * np.sqrt(p * (1 - p) / size))


def test_feature_shift_noise_rises_linearly():
    n, k, sigma = 4000, 5, 0.8
    central = CentralDataset("zeros", np.zeros((n, 3), np.float32), np.zeros(n, np.int32), 2)
    fed = federate(central, f"feature_shift:{sigma}", k, jax.random.key(0), test_fraction=0.25)
    for c in range(k):
        x = np.concatenate([fed.client(c, "train")[0], fed.client(c, "test")[0]]).ravel()
        want = sigma * c / (k - 1)
        if c == 0:
            assert np.all(x == 0)
        else:                                       # std of a sample std: want / sqrt(2 len)
            assert np.std(x) == pytest.approx(want, rel=5 / math.sqrt(2 * len(x)))


def test_federate_splits_each_client_without_loss(digits):
    n = digits.num_examples
    ids = np.arange(n, dtype=np.float32)
    central = CentralDataset("ids", ids[:, None], digits.y, 10, weights=ids * 2)
    key = jax.random.key(5)
    part = make_partition(central, "dirichlet:0.3", 12, jax.random.fold_in(key, 0))
    fed = federate(central, "dirichlet:0.3", 12, key, test_fraction=0.3)
    for c, rows in enumerate(part.client_indices):             # federate uses key's stage-0 subkey
        tr, te = fed.client(c, "train"), fed.client(c, "test")
        got = np.concatenate([tr[0][:, 0], te[0][:, 0]]).astype(np.int64)
        np.testing.assert_array_equal(np.sort(got), rows)
        assert len(te[1]) == min(math.floor(len(rows) * 0.3 + 0.5), len(rows) - 1)
        np.testing.assert_array_equal(tr[1], digits.y[tr[0][:, 0].astype(np.int64)])
    np.testing.assert_array_equal(fed.train_weights, fed.x_train[:, 0] * 2)
    # the heterogeneity report agrees with an independent count
    hist = fed.label_histogram()
    client = np.repeat(np.arange(12), fed.train_counts)
    np.testing.assert_array_equal(hist.to_numpy(), pd.crosstab(client, fed.y_train).reindex(
        columns=range(10), fill_value=0).to_numpy())
    assert (fed.summary()["classes"].to_numpy() == (hist.to_numpy() > 0).sum(1)).all()


def test_registries_list_everything():
    assert {"iid", "dirichlet", "shards", "quantity", "quantity_dirichlet", "feature_shift",
            "natural", "column"} <= set(PARTITIONS.names())
    assert {"synthetic", "synthetic_iid", "digits", "lending_club", "caravan", "csv",
            "npz"} <= set(DATASETS.names())
    assert PARTITIONS["dirichlet"].knobs() == {"alpha": 0.5, "min_size": 10}


# ---- FedProx synthetic -------------------------------------------------------------------------
def test_synthetic_matches_the_fedprox_definition():
    alpha, beta, k = 0.5, 2.0, 300
    d = generate_synthetic(jax.random.key(0), k, alpha, beta)
    n = len(d.y)
    assert d.x.shape == (n, 60) and d.W.shape == (k, 60, 10) and d.b.shape == (k, 10)
    # labels: y = argmax(x W_k + b_k), recomputed row by row
    for c in range(k):
        rows = d.client_ids == c
        scores = np.einsum("nd,dc->nc", d.x[rows].astype(np.float64), d.W[c]) + d.b[c]
        np.testing.assert_array_equal(d.y[rows], scores.argmax(1))
    # x ~ N(v_k, diag(j^-1.2)): per-feature variance around the client mean
    var = ((d.x - d.v[d.client_ids]) ** 2).mean(0)
    np.testing.assert_allclose(var, feature_variances(), rtol=5 * math.sqrt(2 / n))
    # W_k ~ N(u_k, 1), b_k ~ N(u_k, 1), v_k ~ N(B_k, 1)
    resid = np.concatenate([(d.W - d.W.mean((1, 2), keepdims=True)).ravel(),
                            (d.v - d.v.mean(1, keepdims=True)).ravel()])
    assert resid.var() == pytest.approx(1.0, rel=0.02)
    # u_k ~ N(0, alpha), B_k ~ N(0, beta) (variances), estimated from the drawn W and v:
    # var(mean of W_k's 600 entries) = alpha + 1/600, var(mean of v_k's 60) = beta + 1/60
    tol = 4 * math.sqrt(2 / (k - 1))
    assert d.W.mean((1, 2)).var() == pytest.approx(alpha + 1 / 600, rel=tol)
    assert d.v.mean(1).var() == pytest.approx(beta + 1 / 60, rel=tol)
    # sizes: 50 + floor(LogNormal(4, 2))
    phi = lambda t: 0.5 * (1 + math.erf(t / math.sqrt(2)))                 # noqa: E731
    assert d.sizes.min() >= 50
    for threshold in (55, 403):
        p = 1 - phi((math.log(threshold) - 4) / 2)
        frac = np.mean(d.sizes - 50 >= threshold)
        assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / k)


def test_synthetic_iid_shares_one_model_and_distribution():
    d = generate_synthetic(jax.random.key(1), 5, iid=True)
    assert np.all(d.W == d.W[0]) and np.all(d.b == d.b[0]) and np.all(d.v == 0)


def test_synthetic_dataset_defaults_and_determinism():
    fed = load_federated("synthetic:1,1")
    assert fed.num_clients == 30 and fed.input_shape == (60,) and fed.num_classes == 10
    again = load_federated("synthetic:1,1")
    np.testing.assert_array_equal(fed.x_train, again.x_train)
    other = load_federated("synthetic:1,1", seed=1)
    assert other.x_train.shape != fed.x_train.shape or np.any(other.x_train != fed.x_train)
    assert load_federated("synthetic:0.5,0.5", num_clients=7).num_clients == 7
    assert load_federated("synthetic:1,1", "dirichlet:0.5", num_clients=12).num_clients == 12


# ---- loaders ------------------------------------------------------------------------------------
def test_digits_loader(digits):
    assert digits.x.shape == (1797, 8, 8, 1) and digits.x.min() == 0 and digits.x.max() == 1
    fed = load_federated("digits", num_clients=15)
    assert fed.num_clients == 15 and fed.input_shape == (8, 8, 1) and fed.num_classes == 10
    assert len(fed.y_train) + len(fed.y_test) == 1797 and fed.name == "digits/iid"


def test_lending_club_loader(lending):
    raw = lending.columns
    assert lending.x.shape[0] == len(raw) == 9857 and np.isfinite(lending.x).all()
    assert lending.class_names == ("bad", "good") and lending.num_classes == 2
    # one-hot blocks: each categorical column contributes exactly one 1 per row
    for col in ("term", "sub_grade", "verification_status", "emp_length"):
        block = [i for i, f in enumerate(lending.feature_names) if f.startswith(col + "=")]
        assert len(block) == raw[col].nunique()
        np.testing.assert_array_equal(lending.x[:, block].sum(1), 1)
    assert "addr_state" not in " ".join(lending.feature_names)   # the client column is not a feature
    # balanced weights: every class carries the same total weight, N / classes
    totals = np.bincount(lending.y, weights=lending.weights)
    np.testing.assert_allclose(totals, [len(raw) / 2] * 2, rtol=1e-5)
    fed = load_federated("lending_club")
    assert fed.num_clients == 50 and fed.train_weights is not None
    np.testing.assert_array_equal(fed.train_counts + fed.test_counts,
                                  raw["addr_state"].value_counts().sort_index().to_numpy())


def test_caravan_loader(caravan):
    raw = caravan.columns
    assert caravan.x.shape[0] == 5822 and np.isfinite(caravan.x).all()
    assert caravan.class_names == ("No", "Yes") and np.sum(caravan.y == 1) == 348
    assert sum(f.startswith("MOSTYPE=") for f in caravan.feature_names) == raw["MOSTYPE"].nunique()
    fed = load_federated("caravan")
    assert fed.num_clients == 10 and fed.client_names[0] == "1 Successful hedonists"
    np.testing.assert_array_equal(fed.train_counts + fed.test_counts,
                                  raw["MOSHOOFD"].value_counts().sort_index().to_numpy())


def test_from_dataframe_imputes_and_encodes():
    df = pd.DataFrame({"a": [1.0, np.nan, 3.0, 10.0], "color": ["red", None, "blue", "red"],
                       "shop": ["s1", "s1", "s2", "s2"], "y": [0, 1, 0, 1]})
    c = from_dataframe(df, "y", client_column="shop")
    assert c.feature_names == ("a", "a_missing", "color=blue", "color=missing", "color=red")
    a = np.array([1.0, 3.0, 3.0, 10.0])                        # NaN -> median of 1, 3, 10
    np.testing.assert_allclose(c.x[:, 0], (a - a.mean()) / a.std(), rtol=1e-6)
    np.testing.assert_array_equal(c.x[:, 1], [0, 1, 0, 0])
    np.testing.assert_array_equal(c.x[:, 2:], [[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    assert c.client_names == ("s1", "s2") and list(c.client_ids) == [0, 0, 1, 1]
    assert c.num_classes == 2
    reg = from_dataframe(df.assign(y=[0.5, 1.5, 2.5, 3.5]), "y", ["a"])
    assert reg.num_classes == 0 and reg.y.dtype == np.float32
    as_float = from_dataframe(df.assign(y=[0.0, 1.0, 1.0, 0.0]), "y", ["a"])   # 0/1 stored as float
    assert as_float.num_classes == 2 and as_float.class_names == ("0.0", "1.0")
    nullable = from_dataframe(df.assign(a=pd.array([1, None, 3, 10], dtype="Int64")), "y", ["a"])
    np.testing.assert_allclose(nullable.x[:, 0], c.x[:, 0], rtol=1e-6)


def test_csv_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x1": rng.normal(size=300), "x2": rng.integers(0, 5, 300),
                       "store": rng.choice(["north", "south", "east"], 300),
                       "label": rng.choice(["buy", "skip"], 300)})
    path = tmp_path / "shop.csv"
    df.to_csv(path, index=False)
    fed = load_federated(f"csv:{path}", "column:store", target="label")
    assert fed.client_names == ("east", "north", "south")
    np.testing.assert_array_equal(fed.train_counts + fed.test_counts,
                                  df["store"].value_counts().sort_index().to_numpy())
    central = from_csv(path, "label", client_column="store")
    direct = from_dataframe(df, "label", client_column="store")
    np.testing.assert_allclose(central.x, direct.x, rtol=1e-6)
    # the store column stays a feature under column:store (features default to all but target)
    assert "store=east" in fed.feature_names
    npz = tmp_path / "fed.npz"
    fed.to_npz(npz)
    back = load_federated(f"npz:{npz}")
    for field in ("x_train", "y_train", "train_offsets", "x_test", "y_test", "test_offsets"):
        np.testing.assert_array_equal(getattr(back, field), getattr(fed, field))


# ---- bad input --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    pd.DataFrame({"a": [1, 2, 3, 4], "b": ["x", "y", "x", "y"], "y": [0, 1, 1, 0]}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="digits", partition="dirichlet:-1"), "partition: dirichlet alpha must be > 0, got -1"),
    (dict(dataset="digits", partition="dirichlet:0"), "partition: dirichlet alpha must be > 0, got 0"),
    (dict(dataset="digits", partition="dirichlet:abc"), "partition: dirichlet alpha must be a number, got 'abc'"),
    (dict(dataset="digits", partition="dirichlet:1,2,3"), "partition: dirichlet takes at most 2"),
    (dict(dataset="digits", partition="iid", num_clients=0), "num_clients: must be between 1 and 1797, got 0"),
    (dict(dataset="digits", partition="iid", num_clients=5000), "num_clients: must be between 1 and 1797"),
    (dict(dataset="digits", partition="shards:0"), "partition: shards per client must be"),
    (dict(dataset="digits", partition="shards:2.5"), "partition: shards shards_per_client must be an integer, got '2.5'"),
    (dict(dataset="digits", partition="shards:2", num_clients=2), "num_clients: shards needs"),
    (dict(dataset="digits", partition="quantity:-2"), "partition: quantity exponent must be >= 0"),
    (dict(dataset="digits", partition="feature_shift:-0.1"), "partition: feature_shift sigma"),
    (dict(dataset="digits", partition="natural"), "partition: natural needs a dataset with its own"),
    (dict(dataset="digits", partition="column:a"), "partition: column:COL needs a dataset with named"),
    (dict(dataset="digits", partition="dirichlett:1"), "partition: unknown partition 'dirichlett' (did you mean 'dirichlet'?)"),
    (dict(dataset="digit"), "dataset: unknown dataset 'digit' (did you mean 'digits'?)"),
    (dict(dataset="digits", target="label"), "target: only csv:PATH and parquet:PATH datasets take a target"),
    (dict(dataset="digits", test_fraction=1.0), "test_fraction: must be in [0, 1), got 1.0"),
    (dict(dataset="digits", seed=1.5), "seed: must be an integer"),
    (dict(dataset="synthetic:-1,1"), "dataset: synthetic alpha must be >= 0, got -1"),
    (dict(dataset="synthetic:1,1", partition="natural", num_clients=0), "num_clients: must be an integer >= 1"),
    (dict(dataset="lending_club", partition="column:nope"), "partition: column 'nope' not in ["),
    (dict(dataset="lending_club", partition="natural", num_clients=10), "num_clients: the natural partition of 'lending_club' has 50"),
    (dict(dataset="csv:/no/such.csv", target="y"), "dataset: file '/no/such.csv' not found"),
    (dict(dataset="npz:/no/such.npz"), "dataset: file '/no/such.npz' not found"),
])
def test_bad_input_names_the_parameter(kwargs, message):
    with pytest.raises(ValueError) as err:
        load_federated(**kwargs)
    assert str(err.value).startswith(message), str(err.value)


def test_bad_table_input(table_csv):
    with pytest.raises(ValueError, match=r"^target: column 'foo' not in \['a', 'b', 'y'\]"):
        load_federated(f"csv:{table_csv}", target="foo")
    with pytest.raises(ValueError, match=r"^target: csv:.* needs a target column"):
        load_federated(f"csv:{table_csv}")
    df = pd.read_csv(table_csv)
    with pytest.raises(ValueError, match=r"^target: column 'y' has 1 missing values"):
        from_dataframe(df.assign(y=[0, None, 1, 0]), "y")
    with pytest.raises(ValueError, match=r"^features: column 'c' not in"):
        from_dataframe(df, "y", ["a", "c"])
    with pytest.raises(ValueError, match=r"^client_column: column 'z' not in"):
        from_dataframe(df, "y", client_column="z")
    with pytest.raises(ValueError, match=r"^df: columns \['a'\] have missing values"):
        from_dataframe(df.assign(a=[1, None, 2, 3]), "y", impute=False)
    with pytest.raises(ValueError, match=r"^features: categorical column 'b' has 2 distinct"):
        from_dataframe(df, "y", max_levels=1)


def test_nan_in_federated_data_is_rejected(tmp_path):
    good = load_federated("digits", num_clients=3)
    x = good.x_train.copy()
    x[5, 0, 0, 0] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, X_train=x, y_train=good.y_train, train_offsets=good.train_offsets,
             X_test=good.x_test, y_test=good.y_test, test_offsets=good.test_offsets)
    with pytest.raises(ValueError, match=r"^dataset: .*x_train contains NaN"):
        load_federated(f"npz:{path}")
    with pytest.raises(ValueError, match=r"^partition: npz datasets come partitioned"):
        load_federated(f"npz:{path}", "iid")
    with pytest.raises(ValueError, match="x contains NaN"):
        CentralDataset("bad", np.array([[np.nan]], np.float32), np.zeros(1, np.int32), 2)
    assert isinstance(good, FederatedDataset)
