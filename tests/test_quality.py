"""fedlab.data.quality: seeded corruption does what it says, detection finds it from shareable
statistics (precision and recall computed independently), and the Experiment / CLI contract."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import precision_score, recall_score

import fedlab
from fedlab.data import quality
from fedlab.data.loaders import load_federated


@pytest.fixture(scope="module")
def shops_csv(tmp_path_factory):
    """20 IID shops of 60 rows: two numeric features, one category, a balanced binary label."""
    rng = np.random.default_rng(0)
    n = 1200
    x1, x2 = rng.normal(50, 10, n), rng.gamma(2.0, 3.0, n)
    y = np.where(0.1 * (x1 - 50) - 0.2 * (x2 - 6) + rng.normal(0, 0.2, n) > 0, "buy", "skip")
    df = pd.DataFrame({"price": x1, "visits": x2, "channel": rng.choice(["app", "web"], n),
                       "shop": np.repeat([f"s{k:02d}" for k in range(20)], 60), "y": y})
    path = tmp_path_factory.mktemp("quality") / "shops.csv"
    df.to_csv(path, index=False)
    return str(path), df


def test_parse_corrupt_and_bad_specs():
    spec = quality.parse_corrupt("missing:0.2, scale:10,format:price*0.01,shift:-1")
    assert spec == {"missing": 0.2, "scale": 10.0, "format": ("price", 0.01), "shift": -1.0}
    assert quality.parse_corrupt(quality.corrupt_spec_text(spec)) == spec
    assert quality.parse_corrupt("format:price") == {"format": ("price", 100.0)}
    for bad, words in (("missing:1.5", "missing rate must be in [0, 1]"), ("label_noise:nan", "finite"),
                       ("bogus:1", "unknown corruption 'bogus'"), ("scale:0", "scale factor must be > 0"),
                       ("duplicates:", "needs a value"), ("missing:0.1,missing:0.2", "given twice")):
        with pytest.raises(ValueError, match="corrupt") as err:
            quality.parse_corrupt(bad)
        assert words in str(err.value)


def test_corrupt_table_against_hand_counts():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"a": rng.normal(size=4000), "b": rng.integers(0, 5, 4000), "y": rng.choice(["p", "q", "r"], 4000)})
    key = fedlab.data._random.as_key(3)
    out = quality.corrupt_table(df, {"missing": 0.25}, "y", ["a", "b"], key, ("p", "q", "r"))
    assert out[["a", "b"]].isna().to_numpy().mean() == pytest.approx(0.25, abs=0.02)
    assert out["y"].equals(df["y"])
    out = quality.corrupt_table(df, {"label_noise": 0.3}, "y", ["a", "b"], key, ("p", "q", "r"))
    assert (out["y"] != df["y"]).mean() == pytest.approx(0.3, abs=0.02)      # always another class
    out = quality.corrupt_table(df, {"scale": 10.0, "format": ("b", 100.0)}, "y", ["a", "b"], key)
    np.testing.assert_allclose(out["a"], 10 * df["a"]) and np.testing.assert_allclose(out["b"], 1000 * df["b"])
    out = quality.corrupt_table(df, {"duplicates": 0.2}, "y", ["a", "b"], key)
    assert len(out) == 4800 and out.duplicated().sum() >= 790
    out = quality.corrupt_table(df, {"shift": 2.0}, "y", ["a"], key)
    np.testing.assert_allclose(out["a"] - df["a"], 2 * df["a"].std(ddof=0))


def test_clean_tables_equal_load_federated(shops_csv):
    path, _ = shops_csv
    tables = quality.load_tables(f"csv:{path}", "column:shop", target="y", seed=4)
    ref = load_federated(f"csv:{path}", "column:shop", target="y", seed=4)
    np.testing.assert_allclose(tables.data.x_train, ref.x_train, atol=1e-5)
    np.testing.assert_array_equal(tables.data.y_test, ref.y_test)
    assert not tables.corrupted.any() and len(tables.train) == 20


def test_statistics_are_what_each_client_would_compute(shops_csv):
    path, _ = shops_csv
    tables = quality.load_tables(f"csv:{path}", "column:shop", target="y", corrupt="missing:0.3",
                                 corrupt_clients=0.25)
    stats = quality.client_statistics(tables)
    for k, t in enumerate(tables.train):
        assert stats.missing.iloc[k]["price"] == t["price"].isna().mean()
        assert stats.mean.iloc[k]["visits"] == pytest.approx(t["visits"].mean())
        assert stats.q90.iloc[k]["price"] == pytest.approx(np.nanquantile(t["price"], 0.9))
        assert stats.labels.iloc[k]["buy"] == (t["y"] == "buy").sum()
    assert tables.corrupted.sum() == 5
    # the test rows of a corrupted client stay clean: its test x never takes an imputed value alone
    assert np.isfinite(tables.data.x_test).all()


@pytest.mark.parametrize("corrupt", ["scale:10", "missing:0.3", "duplicates:0.3", "shift:1.5",
                                     "format:visits*100", "label_noise:0.45"])
def test_injected_corruption_is_detected(shops_csv, corrupt, tmp_path):
    path, _ = shops_csv
    tables = quality.load_tables(f"csv:{path}", "column:shop", target="y", corrupt=corrupt,
                                 corrupt_clients=0.2, seed=2)
    report = (quality.audit(tables, rounds=15) if corrupt.startswith("label") else quality.assess(tables))
    quality.write_quality(report, tmp_path)
    table = pd.read_csv(tmp_path / "quality.csv")
    assert list(table.columns[:3]) == ["client", "flagged", "corrupted"]
    assert set(quality.CHECKS) <= set(table.columns)
    truth, flags = table["corrupted"].to_numpy(bool), table["flagged"].to_numpy(bool)
    assert truth.sum() == 4
    assert recall_score(truth, flags) == 1.0
    assert precision_score(truth, flags) >= 0.8
    assert "heatmap" in (tmp_path / "quality.html").read_text()


def test_robust_z_against_hand_computation():
    v = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    mad = 1.4826 * np.median(np.abs(v - 3.0))
    np.testing.assert_allclose(quality.robust_z(v), (v - 3.0) / mad)
    np.testing.assert_allclose(quality.robust_z(v, noise=2.0), (v - 3.0) / np.sqrt(mad ** 2 + 4))


def test_reweight_leaves_flagged_clients_out(shops_csv):
    """Quality weighting with factor 0 for some clients equals FedAvg on the others' data alone
    (same sampling: every client each round, full-batch steps)."""
    data = fedlab.data.load_federated(f"csv:{shops_csv[0]}", "column:shop", target="y")
    factors = np.ones(20)
    factors[[3, 7]] = 0
    strategy = quality.reweight(fedlab.ALGORITHMS["fedavg"].factory(client_lr=0.1), factors)
    kw = dict(rounds=3, local_epochs=1, batch_size=64, progress=False)
    h = fedlab.simulate(strategy, "logreg", data, **kw)
    assert (h["participants"] == 18).all()
    keep = [k for k in range(20) if factors[k]]
    sub = fedlab.FederatedDataset.from_clients("sub", [data.client(k) for k in keep],
                                               [data.client(k, "test") for k in keep], 2)
    ref = fedlab.simulate("fedavg", "logreg", sub, client_lr=0.1, **kw)
    np.testing.assert_allclose(h.params["W"], ref.params["W"], atol=1e-6)


def test_experiment_fields_validate_and_round_trip(shops_csv):
    path, _ = shops_csv
    e = fedlab.Experiment(dataset=f"csv:{path}", dataset_options={"target": "y"}, partition="column:shop",
                          corrupt="label_noise:0.4,scale:10", corrupt_clients=0.3, client_weighting="quality",
                          rounds=2)
    assert fedlab.Experiment.from_dict(e.to_dict()) == e
    assert fedlab.Experiment.from_json(e.to_json()) == e
    command = e.to_command()
    assert "--corrupt label_noise:0.4,scale:10" in command and "--client-weighting quality" in command
    from fedlab.cli import build_parser, experiment_from_args
    assert experiment_from_args(build_parser().parse_args(__import__("shlex").split(command)[3:])) == e
    for bad, words in ((dict(corrupt_clients=1.5), "corrupt_clients"), (dict(corrupt_clients=float("nan")), "corrupt_clients"),
                       (dict(client_weighting="median"), "client_weighting"), (dict(corrupt="x:1"), "corrupt"),
                       (dict(quality_threshold=0), "quality_threshold")):
        with pytest.raises(ValueError, match=words):
            e.replace(**bad)
    with pytest.raises(ValueError, match="table dataset"):
        fedlab.Experiment(dataset="synthetic", corrupt="missing:0.1")
    built = e.build()
    assert built.quality is not None and built.quality["corrupted"].sum() == 6
    assert built.strategy.name == "fedavg+quality"


def test_quality_command(shops_csv, tmp_path, capsys):
    from fedlab.cli import main

    path, _ = shops_csv
    out = tmp_path / "q"
    code = main(["quality", "--dataset", f"csv:{path}", "--target", "y", "--partition", "column:shop",
                 "--corrupt", "missing:0.3", "--corrupt-clients", "0.2", "--out", str(out)])
    assert code == 0 and "precision 1.00, recall 1.00" in capsys.readouterr().out
    assert (out / "quality.html").is_file()
    code = main(["quality", "--dataset", f"csv:{path}", "--target", "y", "--corrupt", "format:nope",
                 "--out", str(out)])
    assert code == 2 and "format column 'nope'" in capsys.readouterr().err


def test_islands_equal_each_client_training_alone():
    """The local strategy (islands): with full-batch steps, client k's kept model equals FedAvg
    run on client k's data alone, and compare_parties' island column scores it."""
    from conftest import toy_data
    from fedlab.collaboration import island_scores

    data = toy_data(num_clients=4)
    kw = dict(rounds=3, local_epochs=1, batch_size=64, progress=False, client_lr=0.1)
    h = fedlab.simulate("local", "logreg", data, **kw)
    assert (h["bytes_up"] == 0).all() and (h["bytes_down"] == 0).all()    # nothing sent either way
    model = fedlab.MODELS["logreg"].factory(data.input_shape, data.num_classes)
    scores = island_scores(model, h.state.client_states, data)
    for k in range(4):
        alone = fedlab.FederatedDataset.from_clients("one", [data.client(k)], [data.client(k, "test")], 3)
        ref = fedlab.simulate("fedavg", "logreg", alone, **kw)
        np.testing.assert_allclose(h.state.client_states["W"][k], ref.params["W"], atol=1e-6)
        xt, yt = data.client(k, "test")
        pred = (xt @ np.asarray(ref.params["W"]) + np.asarray(ref.params["b"])).argmax(1)
        assert scores[k] == pytest.approx(np.mean(pred == yt))


def test_scenario_presets_name_registered_datasets():
    from fedlab.data.scenarios import SCENARIOS, presets

    found = presets()
    assert set(found) == set(SCENARIOS)
    for name, experiment in found.items():
        assert experiment.dataset in SCENARIOS[name] and experiment.dataset in fedlab.DATASETS
        assert fedlab.Experiment.from_dict(experiment.to_dict()) == experiment
