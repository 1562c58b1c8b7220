"""The command-line contract: outputs, dataset kinds, and one-line errors naming the flag."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import fedlab
from fedlab.cli import main


def test_python_m_fedlab_run_writes_history_and_self_contained_report(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fedlab", "run", "--dataset", "synthetic:1,1", "--partition", "natural",
           "--model", "logreg", "--algorithm", "fedprox", "--mu", "1.0", "--clients", "30",
           "--clients-per-round", "10", "--local-epochs", "2", "--batch-size", "10", "--lr", "0.01",
           "--rounds", "3", "--stragglers", "0.9", "--seed", "0", "--eval-every", "2", "--out", str(out),
           "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    h = pd.read_csv(out / "history.csv")
    assert list(h["round"]) == [1, 2, 3]
    assert {"train_loss", "test_accuracy", "seconds", "bytes_up"} <= set(h.columns)
    assert h["test_accuracy"].notna().tolist() == [False, True, True]
    assert (h["participants"] == 10).all()        # FedProx keeps the 9 stragglers' partial work
    page = (out / "report.html").read_text()
    assert "Plotly.newPlot" in page and "<script src=\"http" not in page


def test_npz_dataset_implies_its_clients(tmp_path, capsys):
    rng = np.random.default_rng(0)
    parts = [(rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n)) for n in (20, 30, 25)]
    data = fedlab.FederatedDataset.from_clients("packed", parts, [(x[:5], y[:5]) for x, y in parts], 3)
    data.to_npz(tmp_path / "d.npz")
    assert main(["run", "--dataset", f"npz:{tmp_path / 'd.npz'}", "--rounds", "2", "--local-steps", "3",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    h = pd.read_csv(tmp_path / "o" / "history.csv")
    assert (h["clients"] == 3).all()


def test_csv_with_a_column_partition(tmp_path, capsys):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"x1": rng.normal(size=300), "x2": rng.normal(size=300),
                       "region": rng.choice(["north", "south", "east"], 300)})
    df["bought"] = (df["x1"] + 0.5 * df["x2"] > 0).map({True: "yes", False: "no"})
    df.to_csv(tmp_path / "shop.csv", index=False)
    assert main(["run", "--dataset", f"csv:{tmp_path / 'shop.csv'}", "--target", "bought",
                 "--partition", "column:region", "--rounds", "5", "--local-steps", "10", "--lr", "0.5",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    h = pd.read_csv(tmp_path / "o" / "history.csv")
    assert (h["clients"] == 3).all() and h["test_accuracy"].iloc[-1] > 0.8
    assert main(["run", "--dataset", f"csv:{tmp_path / 'shop.csv'}", "--target", "price",
                 "--out", str(tmp_path / "p")]) == 2
    assert "--target: column 'price' not in" in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [
    (["--clients-per-round", "31"], "--clients-per-round must be an integer in [1, 30]"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--rounds", "0"], "--rounds must be an integer >= 1"),
    (["--partition", "dirichlet:-1", "--dataset", "digits"], "--partition"),
    (["--algorithm", "fedavgx"], "unknown algorithm 'fedavgx'"),
    (["--mu", "1.0"], "--mu does not apply to --algorithm fedavg"),
    (["--algorithm", "fedprox", "--mu", "-1"], "--mu must be >= 0"),
    (["--dataset", "csv:nowhere.csv", "--target", "y"], "--dataset: file 'nowhere.csv' not found"),
    (["--stragglers", "1.5"], "--stragglers must be in [0, 1)"),
])
def test_bad_values_exit_2_with_one_line_naming_the_flag(argv, flag, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", "--rounds", "1", "--out", str(out), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedlab: error: ") and flag in err and "\n" not in err
    assert not out.exists()        # nothing half-written


def test_list_shows_every_registry(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name in ("fedavg", "fedprox", "logreg", "mlp", "cnn", "synthetic", "digits", "lending_club",
                 "caravan", "dirichlet", "natural", "column"):
        assert f"  {name} " in text

