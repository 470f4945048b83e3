"""The nightly chain end to end, as `make run` runs it, on a tiny synthetic world."""

from __future__ import annotations

import subprocess
import sys

import pytest
from deltalake import DeltaTable

from tests.conftest import ROOT
from tests.dag_support import CHAIN_TABLES, failure_report, table_counts


def mined(wh) -> tuple[set[str], set[str]]:
    tags = DeltaTable(str(wh / "user_intent_tags")).to_pandas()
    failures = DeltaTable(str(wh / "mining_failures")).to_pandas()
    assert not tags.duplicated(["dt", "pipeline", "context_mode", "user_id", "rank"]).any()
    assert set(tags.context_mode) <= {"hybrid"} and set(failures.context_mode) <= {"hybrid"}
    return set(tags.user_id), set(failures.user_id)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the whole chain, mining on the real model
def test_nightly_writes_every_table(nightly_run):
    first, state, wh = nightly_run.proc, nightly_run.llm_state, nightly_run.warehouse
    assert first.returncode == 0, failure_report(first)
    # The engine server the mining started was stopped once mine_intents was done, by the chain
    # (its state file gone), not left holding its memory through recall, evaluate and dq.
    assert "stopped after mine_intents" in first.stdout
    # It was started once, by the chain while the adaptor trained; the mining tasks found it up.
    assert "starting the engine server for mine_intents in the background" in first.stdout
    assert "engine server for mine_intents up (started early" in first.stdout
    assert len([line for line in (state / "engine_starts.log").read_text().splitlines() if line]) == 1
    assert not list(state.glob("*.json"))
    assert f"tables under {wh}/" in first.stdout
    counts = table_counts(wh, CHAIN_TABLES)
    assert all(n > 0 for n in counts.values()), counts
    # Every user with a history got tags or a failure row with its reason, never both or neither.
    contexts = DeltaTable(str(wh / "user_context")).to_pandas()
    with_history = set(contexts[contexts.events_kept > 0].user_id)
    tagged, failed = mined(wh)
    assert tagged | failed == with_history and not tagged & failed
    assert tagged, "no user got tags from the bundled model"
    assert "mine_intents" in first.stdout and "adaptor" in first.stdout

    # The rerun of the same date (duplicating nothing) is tests/test_dag.py's: Airflow on a copy.
    runs = DeltaTable(str(wh / "runs")).to_pandas()
    # One chain under one run id.
    chain = ["ingest", "embed_items", "compress", "covisit", "train_adaptor", "mine_intents", "recall"]
    chain += ["evaluate", "dq"]
    assert set(runs.status) == {"success"} and runs.run_id.nunique() == 1
    assert sorted(runs.stage) == sorted(chain)
    assert counts["item_embeddings"] == counts["items"]
    assert "report   " in first.stdout and "_reports/dq/index.html" in first.stdout
    # Every tagged user's tags were recalled, and the evaluation's report is where it says.
    recalled = DeltaTable(str(wh / "tag_recall")).to_pandas()
    assert set(recalled.user_id) == tagged
    assert not recalled.duplicated(["pipeline", "context_mode", "user_id", "tag_rank", "rank"]).any()
    report = wh / "_reports" / "eval" / "dt=2025-10-28" / "index.html"
    assert report.is_file() and str(report) in first.stdout
    # The run ends with what to look at: a few users' best tags and the two reports.
    ending = first.stdout.split("nightly dt=2025-10-28 done in", 1)[1]
    tags = DeltaTable(str(wh / "user_intent_tags")).to_pandas()
    first_user = min(tagged)
    best = tags[(tags.user_id == first_user) & (tags["rank"] == 1)].tag.item()
    assert "tags (a few users, best first):" in ending and f"   {first_user}: {best} (" in ending
    assert f"evaluation report: {report}" in ending and "data-quality report: " in ending
    metrics = DeltaTable(str(wh / "eval_metrics")).to_pandas()
    assert {"hr30", "exclusive_recall", "recall_at_30_tags", "persona_recovery"} <= set(metrics.metric)


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
