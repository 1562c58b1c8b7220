"""fedlab.report's tables and figures against hand computations."""
import pandas as pd
import pytest

from fedlab.report import runs_figure, tail_summary


def test_tail_summary_and_runs_figure_on_a_hand_made_table():
    loss_a, loss_b = [4.0, 2.0, 3.0, 1.0], [1.0, 1.0, 1.0, 1.0]
    table = pd.DataFrame({"round": [1, 2, 3, 4] * 4, "train_loss": (loss_a + loss_b) * 2,
                          "method": ["a"] * 4 + ["b"] * 4 + ["a"] * 4 + ["b"] * 4,
                          "dataset": ["x"] * 8 + ["y"] * 8})
    s = tail_summary(table.sample(frac=1, random_state=0), ["dataset", "method"], last=2)   # row order must not matter
    assert s.loc[("x", "a"), "final"] == pytest.approx((3.0 + 1.0) / 2)
    assert s.loc[("x", "a"), "instability"] == pytest.approx((2 + 1 + 2) / 3)
    assert s.loc[("y", "b")].tolist() == [1.0, 0.0]
    fig = runs_figure(table, col="dataset")
    assert len(fig.data) == 4 and {t.name for t in fig.data} == {"a", "b"}
    with pytest.raises(ValueError, match="no column"):
        runs_figure(table, row="stragglers")
