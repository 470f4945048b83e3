"""The analyst notebooks run top to bottom on a warehouse the nightly chain wrote, and draw their plots."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_and_they_are_stored_without_outputs():
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        # Outputs would carry one warehouse's data into the repository.
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name


@pytest.mark.slow
@pytest.mark.timeout(1800)  # includes the nightly run that writes the warehouse, when it runs first
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_and_plots(path, nightly_run, monkeypatch, tmp_path):
    wh, proc = nightly_run.warehouse, nightly_run.proc
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    monkeypatch.setenv("RECGPT_WAREHOUSE", str(wh))
    nb = nbformat.read(path, as_version=4)
    # Raises CellExecutionError (with the cell and its traceback) on the first failing cell.
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    nbformat.write(nb, tmp_path / path.name)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    plots = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(plots) >= 3, f"{path.name}: {len(plots)} plots in the executed output"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"warehouse {wh}" in text and "latest run date: 2025-10-28" in text


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_example_queries_run_on_a_nightly_warehouse(nightly_run):
    import duckdb
    from deltalake import DeltaTable

    wh, proc = nightly_run.warehouse, nightly_run.proc
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Three example queries**") :]
    sql = section[section.index("```sql") + len("```sql") : section.index("```", section.index("```sql") + 6)]
    statements = [s for s in sql.split(";") if s.strip()]
    assert len(statements) == 3
    con = duckdb.connect()
    for name in ("user_intent_tags", "user_personas", "users", "env_signals", "llm_calls", "eval_metrics"):
        con.register(name, DeltaTable(str(wh / name)).to_pyarrow_dataset())
    top, _user, cost = (con.sql(s).df() for s in statements)
    assert len(top) and list(top.columns) == ["region", "tag", "users"]
    assert top.groupby("region").size().max() <= 5
    assert set(cost.pipeline) == {"v2"} and cost.hr30.notna().all() and (cost.tokens_per_user > 0).all()
