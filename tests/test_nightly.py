"""The nightly chain end to end, as `make run` runs it, on a tiny synthetic world."""

from __future__ import annotations

import subprocess
import sys

import pytest
from deltalake import DeltaTable

from tests.conftest import ROOT

TINY = ["data.users=40", "data.items=300", "data.history_days=90", "data.holdout_days=7"]


def nightly(tmp_path, env, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.nightly",
            "run.dt=2025-10-28",
            f"storage.warehouse={tmp_path / 'wh'}",
            *TINY,
            *extra,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_nightly_writes_every_table_and_a_rerun_duplicates_nothing(tmp_path, project_env):
    first = nightly(tmp_path, project_env)
    assert first.returncode == 0, first.stderr[-4000:]
    assert f"tables under {tmp_path / 'wh'}/" in first.stdout
    tables = (
        "behaviors",
        "items",
        "users",
        "env_signals",
        "quarantine",
        "planted_personas",
        "item_embeddings",
        "user_context",
    )
    counts = {t: len(DeltaTable(str(tmp_path / "wh" / t)).to_pandas()) for t in tables}
    assert all(n > 0 for n in counts.values()), counts

    second = nightly(tmp_path, project_env)
    assert second.returncode == 0, second.stderr[-4000:]
    assert {t: len(DeltaTable(str(tmp_path / "wh" / t)).to_pandas()) for t in tables} == counts
    runs = DeltaTable(str(tmp_path / "wh" / "runs")).to_pandas()
    # Two chains of (ingest, embed_items, compress, dq), each chain under one run id.
    assert set(runs.status) == {"success"} and runs.run_id.nunique() == 2
    assert sorted(runs.stage) == sorted(["ingest", "embed_items", "compress", "dq"] * 2)
    # A rerun of the same date recomputes its own partition instead of writing nothing.
    assert counts["item_embeddings"] == counts["items"]
    assert f"{counts['items']:,} embedded" in second.stdout
    assert "report   " in first.stdout and "_reports/dq/index.html" in first.stdout


@pytest.mark.slow
def test_bad_run_date_is_a_clear_error(tmp_path, project_env):
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.ingest", "run.dt=2025-13-45", f"storage.warehouse={tmp_path / 'wh'}"],
        cwd=ROOT,
        env=project_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "run.dt must be YYYY-MM-DD" in proc.stderr
