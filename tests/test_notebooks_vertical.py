"""notebooks/05_vertical.ipynb runs end to end in smoke mode and draws its chart."""
from conftest import execute_notebook


def test_vertical_notebook_runs_and_shows_value_of_collaboration():
    nb = execute_notebook("05_vertical.ipynb")
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "encrypted and plaintext trees identical: True" in text
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)
