"""Issue 15: a real dataset larger than memory, converted to memory-mapped arrays and partitioned by
a column (fedlab.data.disk); only the sampled clients' rows are staged each round."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pandas as pd
import pytest

import fedlab
from fedlab.cli import build_parser, experiment_from_args, main
from fedlab.data.disk import DiskDataset, write_disk

from conftest import ROOT

FEATURES = ["f0", "f1", "f2", "f3"]


def _table(seed=0, clients=30):
    """A shuffled table: 4 numeric features (one integer), a 3-class label, a store column."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 40, clients)
    store = np.repeat(np.arange(clients) * 7 + 100, sizes)[rng.permutation(sizes.sum())]
    x = rng.normal(size=(len(store), 4)) * [1, 2, 3, 4] + [0, 1, 2, 3]
    df = pd.DataFrame(x[:, :3], columns=FEATURES[:3])
    df["f3"] = np.round(x[:, 3] * 10).astype(np.int64)
    df["store"] = store
    df["label"] = np.array(["cat", "dog", "eel"])[(x[:, 0] > 0).astype(int) + (x[:, 1] > 1)]
    return df


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk")
    df = _table()
    df.to_parquet(root / "t.parquet", row_group_size=50, index=False)
    df.to_csv(root / "t.csv", index=False)
    write_disk(root / "t.parquet", root / "t.disk", client_column="store", target="label", batch_rows=7)
    return root, df


def _expected_layout(df, test_fraction=0.2):
    """The layout computed in memory with pandas: clients in sorted order, each client's rows in file
    order, its last round(test_fraction * n) rows for testing (at least one training row)."""
    order = df.sort_values("store", kind="stable")
    sizes = order.groupby("store").size().to_numpy()
    test = np.minimum(np.floor(test_fraction * sizes + 0.5).astype(int), sizes - 1)
    position = order.groupby("store").cumcount().to_numpy()
    is_train = position < np.repeat(sizes - test, sizes)
    return order, sizes, test, is_train


def test_conversion_equals_pandas(files):
    """batch_rows=7 (many batches, clients split across them): the arrays equal the pandas layout;
    the CSV converts to the same arrays; mean/std are those of the training rows only."""
    root, df = files
    order, sizes, test, is_train = _expected_layout(df)
    d = DiskDataset(root / "t.disk")
    np.testing.assert_array_equal(d.x, order[FEATURES].to_numpy(np.float32))
    np.testing.assert_array_equal(d.y, pd.factorize(order["label"], sort=True)[0])
    np.testing.assert_array_equal(d.offsets, np.concatenate([[0], np.cumsum(sizes)]))
    np.testing.assert_array_equal(d.train_counts, sizes - test)
    np.testing.assert_array_equal(d.test_counts, test)
    assert d.names() == [str(s) for s in sorted(df["store"].unique())]
    assert d.class_names == ("cat", "dog", "eel") and d.num_classes == 3 and d.input_shape == (4,)
    train_x = order[FEATURES].to_numpy(np.float64)[is_train]
    np.testing.assert_allclose(d.mean, train_x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(d.std, train_x.std(0), rtol=1e-6)
    assert d.meta["train_class_counts"] == np.bincount(d.y[is_train], minlength=3).tolist()
    d.validate()
    assert d.check() == []

    write_disk(root / "t.csv", root / "csv.disk", client_column="store", target="label", batch_rows=5)
    c = DiskDataset(root / "csv.disk")
    np.testing.assert_array_equal(c.x, d.x)
    np.testing.assert_array_equal(c.y, d.y)
    np.testing.assert_array_equal(c.offsets, d.offsets)
    assert c.names() == d.names()
    np.testing.assert_allclose(c.std, d.std, rtol=1e-12)

    # all clients in memory: (x - mean) / std of the training and test rows
    mem = d.evaluation_data()
    x_std = (order[FEATURES].to_numpy(np.float32) - d.mean) / d.std
    np.testing.assert_array_equal(mem.x_train, x_std[is_train])
    np.testing.assert_array_equal(mem.x_test, x_std[~is_train])
    np.testing.assert_array_equal(mem.train_counts, d.train_counts)


def test_split_and_standardization_by_hand(tmp_path):
    """Client a: rows 1..5 in file order, test_fraction 0.4 -> its last 2 rows test; client b: one row,
    which stays for training. Mean/std over the 4 training rows (1, 2, 3 of a and the row of b)."""
    df = pd.DataFrame({"c": ["a", "b", "a", "a", "a", "a"], "v": [1.0, 10.0, 2.0, 3.0, 4.0, 5.0],
                       "y": [0, 1, 0, 1, 1, 0]})
    df.to_parquet(tmp_path / "h.parquet", index=False)
    d = DiskDataset(write_disk(tmp_path / "h.parquet", tmp_path / "h", client_column="c", target="y",
                               test_fraction=0.4, batch_rows=2))
    assert d.names() == ["a", "b"]
    np.testing.assert_array_equal(d.train_counts, [3, 1])
    np.testing.assert_array_equal(d.test_counts, [2, 0])
    np.testing.assert_array_equal(d.x[:, 0], [1, 2, 3, 4, 5, 10])
    np.testing.assert_array_equal(d.y, [0, 0, 1, 1, 0, 1])
    assert d.mean[0] == pytest.approx(4.0)                                  # (1 + 2 + 3 + 10) / 4
    assert d.std[0] == pytest.approx(np.sqrt(((1 - 4) ** 2 + 4 + 1 + 36) / 4))
    assert d.check() == ["1 of 2 clients have no test rows; per-client accuracy covers the other 1"]
    with pytest.raises(ValueError, match=r"no test rows.*test_fraction > 0 \(write_disk"):
        DiskDataset(write_disk(tmp_path / "h.parquet", tmp_path / "h0", client_column="c", target="y",
                               test_fraction=0.0)).check()
    staged = d.stage([1, 0])
    assert staged.x.shape == (4, 1)                                         # 4 rows: a power of two
    np.testing.assert_array_equal(staged.offsets, [0, 3])
    np.testing.assert_allclose(np.asarray(staged.x)[:, 0], (np.array([1, 2, 3, 10]) - 4) / d.std[0], rtol=1e-6)
    # a float target with fractional values is a regression, standardized with the training rows
    df["y"] = [0.5, 1.5, 2.0, 2.5, 9.0, 9.0]
    df.to_parquet(tmp_path / "r.parquet", index=False)
    r = DiskDataset(write_disk(tmp_path / "r.parquet", tmp_path / "r", client_column="c", target="y",
                               test_fraction=0.4))
    assert r.num_classes == 0 and r.y.dtype == np.float32
    fit = np.array([0.5, 2.0, 2.5, 1.5])
    assert r.target_scale == pytest.approx((fit.mean(), fit.std()))
    np.testing.assert_allclose(r.evaluation_data().y_test, (np.array([9.0, 9.0]) - fit.mean()) / fit.std(), rtol=1e-6)


def _numeric(h):
    cols = [c for c in h.select_dtypes("number").columns if c not in ("seconds", "elapsed")]
    return cols, h[cols].to_numpy(float)


@pytest.mark.parametrize("algorithm, extra", [("fedavg", {}), ("scaffold", {}),
                                              ("fedavg", {"sampling": "poisson", "stragglers": 0.5})])
def test_disk_run_equals_memory_run(files, algorithm, extra):
    """The History (every column but wall time), final model and client states of a DiskDataset run equal
    the run on the same standardized rows loaded in memory, to 1e-6."""
    root, _ = files
    d = DiskDataset(root / "t.disk")
    runs = [fedlab.simulate(algorithm, "logreg", data, rounds=2, clients_per_round=8, local_steps=5, batch_size=4,
                            progress=False, seed=3, **extra) for data in (d, d.evaluation_data())]
    (cols_d, disk), (cols_m, memory) = _numeric(runs[0]), _numeric(runs[1])
    assert cols_d == cols_m and "test_accuracy" in cols_d and "personal_acc_mean" in cols_d
    assert runs[0].status == runs[1].status == "completed"
    np.testing.assert_allclose(disk, memory, atol=1e-6, rtol=1e-6)
    if "sampling" in extra:
        assert len(set(runs[0]["clients"])) > 1                  # Poisson: the round sizes vary
    for a, b in zip(jax.tree.leaves((runs[0].params, runs[0].state.client_states)),
                    jax.tree.leaves((runs[1].params, runs[1].state.client_states))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-6)


_DEVICES = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np, fedlab
    from fedlab.data.disk import DiskDataset
    d = DiskDataset(sys.argv[1])
    out = []
    for devices in (1, 4):
        h = fedlab.simulate("scaffold", "logreg", d, rounds=2, clients_per_round=8, local_steps=3, batch_size=4,
                            devices=devices, progress=False)
        out.append(np.asarray(h[["local_loss", "train_loss", "test_accuracy"]], float).tolist())
    print(json.dumps(out))
""")


def test_four_devices_equal_one_device(files):
    root, _ = files
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""}
    done = subprocess.run([sys.executable, "-c", _DEVICES, str(root / "t.disk")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, four = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(four, one, atol=1e-5, rtol=1e-5)


def test_errors_named_and_nothing_left_behind(files, tmp_path):
    root, df = files
    src = root / "t.parquet"
    for kwargs, message in (
            (dict(client_column="shop", target="label"), r"client_column: column 'shop' not in \['f0'"),
            (dict(client_column="store", target="y"), r"target: column 'y' not in \["),
            (dict(client_column="store", target="label", features=["f0", "nope"]), r"features: columns \['nope'\]"),
            (dict(client_column="store", target="f0", features=["label"]), r"features: columns \['label'\] are not numeric"),
            (dict(client_column="store", target="label", test_fraction=1.0), r"test_fraction: must be in \[0, 1\), got 1.0"),
            (dict(client_column="store", target="label", test_fraction=-0.1), r"test_fraction: must be in \[0, 1\)")):
        with pytest.raises(ValueError, match=message):
            write_disk(src, tmp_path / "out", **kwargs)
    (tmp_path / "t.txt").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="source: must be a .parquet or .csv file"):
        write_disk(tmp_path / "t.txt", tmp_path / "out", client_column="a", target="b")
    with pytest.raises(ValueError, match="out_dir: .* already exists"):
        write_disk(src, root / "t.disk", client_column="store", target="label")
    # a failure in the second pass (a NaN feature in the last rows) leaves nothing behind
    bad = df.copy()
    bad.loc[len(bad) - 1, "f1"] = np.nan
    bad.to_parquet(tmp_path / "bad.parquet", index=False)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ValueError, match="features: column 'f1' has missing values"):
        write_disk(tmp_path / "bad.parquet", tmp_path / "out", client_column="store", target="label", batch_rows=16)
    assert sorted(os.listdir(tmp_path)) == before
    with pytest.raises(ValueError, match="out_dir: .* is not a converted dataset"):
        DiskDataset(tmp_path)
    with pytest.raises(ValueError, match="client_data: 'disk' needs a csv:PATH or parquet:PATH dataset partitioned"):
        fedlab.Experiment(dataset="synthetic_iid", client_data="disk")
    with pytest.raises(ValueError, match="holdout_clients: not available with client_data 'disk'"):
        fedlab.Experiment(dataset=f"parquet:{src}", dataset_options={"target": "label"}, partition="column:store",
                          client_data="disk", holdout_clients=0.2)


def test_cli_runs_from_disk(files, tmp_path, monkeypatch, capsys):
    """python -m fedlab run --dataset parquet:PATH --target --partition column:COL --client-data disk: the
    file is converted once into $FEDLAB_CACHE/disk and trained from there (with --compilation-cache the
    compiled programs go to $FEDLAB_CACHE/jax, though this process opened another cache first); a
    second run reuses it."""
    from conftest import _JAX_CACHE

    root, _ = files
    monkeypatch.setenv("FEDLAB_CACHE", str(tmp_path / "cache"))
    args = ["run", "--dataset", f"parquet:{root / 't.parquet'}", "--target", "label", "--partition", "column:store",
            "--client-data", "disk", "--rounds", "2", "--clients-per-round", "5", "--local-steps", "3",
            "--eval-clients", "30"]
    jax.jit(lambda v: v + 1)(np.float32(0))     # opens this process's compilation cache, if not yet open
    try:
        assert main(args + ["--out", str(tmp_path / "run"), "--compilation-cache"]) == 0
    finally:        # back to this test process's own compilation cache
        fedlab.enable_compilation_cache(_JAX_CACHE)
    assert sorted(os.listdir(tmp_path / "cache")) == ["disk", "jax"] and os.listdir(tmp_path / "cache" / "jax")
    converted = os.listdir(tmp_path / "cache" / "disk")
    assert len(converted) == 1 and converted[0].startswith("t-")
    stamp = os.stat(tmp_path / "cache" / "disk" / converted[0] / "x.npy").st_mtime_ns
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["round"].tolist() == [1, 2] and (history["clients"] == 5).all()
    exp = json.loads((tmp_path / "run" / "experiment.json").read_text())
    assert exp["client_data"] == "disk" and exp["dataset"] == "parquet"
    d = DiskDataset(tmp_path / "cache" / "disk" / converted[0])
    e = fedlab.Experiment(**exp)
    assert experiment_from_args(build_parser().parse_args(shlex.split(e.to_command())[3:])) == e
    h = e.run(progress=False)
    np.testing.assert_allclose(h["test_accuracy"], history["test_accuracy"], atol=1e-6)
    assert os.stat(d.path / "x.npy").st_mtime_ns == stamp                # converted once
    assert d.num_clients == 30 and h.attrs["evaluated_clients"] == 30
    # a sample of clients is evaluated (no personal models: those need every client)
    h = fedlab.Experiment(**{**exp, "eval_clients": 10, "rounds": 1}).run(progress=False)
    assert h.attrs["evaluated_clients"] == 10 and "personal_acc_mean" not in h
