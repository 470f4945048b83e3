"""The nightly chain end to end, as `make run` runs it, on a tiny synthetic world."""

from __future__ import annotations

import datetime
import subprocess
import sys
from typing import Any

import pytest
from deltalake import DeltaTable
from omegaconf import OmegaConf

from recgpt.calendar import Calendar
from recgpt.config import load_config
from recgpt.env_signals import situation_rows
from recgpt.explain.prompts import ItemFacts
from recgpt.explain.rules import ExplanationRules, Facts
from recgpt.explain.settings import ExplainSettings
from tests.conftest import ROOT
from tests.dag_support import CHAIN_TABLES, DT, failure_report, table_counts


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
    # The engine server the mining started served explain and judge too (kept up through recall)
    # and was stopped once judge, the last LLM stage, was done, by the chain (its state file
    # gone), not left holding its memory through evaluate and dq.
    assert "stopped after judge" in first.stdout and "stopped after mine_intents" not in first.stdout
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
    chain += ["explain", "judge", "evaluate", "dq"]
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


def situation_of_every_region(wh) -> dict[str, Any]:
    """Every region's situation on DT at once (season, festivals, weather, trends): the facts a
    line may state are the item's and its user's region's, so this is a superset of those."""
    cfg = OmegaConf.to_container(load_config(["run.stage=test"]).calendar, resolve=True)
    feed = DeltaTable(str(wh / "env_signals")).to_pandas()
    day = datetime.date.fromisoformat(DT)
    weather = {(r.region, day): r.weather or "" for r in feed.itertuples()}
    trends = {(r.region, day): list(r.trends) for r in feed.itertuples() if r.trends is not None}
    rows = situation_rows(Calendar.from_config(cfg), [day], weather=weather, trends=trends)
    merged: dict[str, Any] = {"season": " ".join({r["season"] or "" for r in rows})}
    merged["weather"] = " ".join(sorted({r["weather"] or "" for r in rows}))
    for name in ("festivals", "trends"):
        merged[name] = sorted({x for r in rows for x in r[name] or ()})
    return merged


def recent_of_every_pair(wh, items, pairs: set[tuple[str, str]], days: int) -> dict[tuple[str, str], str]:
    """(user, item) -> the title of the user's newest behaviour on another item of the item's
    category in the `days` before DT (ties by item id): what the prompt showed as `<recent>`."""
    seen = DeltaTable(str(wh / "behaviors")).to_pandas()
    end = datetime.datetime.fromisoformat(f"{DT}T00:00:00+00:00")
    seen = seen[seen.item_id.notna() & (seen.ts < end) & (seen.ts >= end - datetime.timedelta(days=days))]
    seen = seen.assign(category=seen.item_id.map(items.category)).sort_values(
        ["ts", "item_id"], ascending=[False, True]
    )
    found = {}
    for user, item in pairs:
        mine = seen[(seen.user_id == user) & (seen.category == items.category[item]) & (seen.item_id != item)]
        if len(mine):
            found[(user, item)] = items.title[mine.item_id.iloc[0]]
    return found


@pytest.mark.slow
def test_nightly_explains_each_users_recalled_items_and_writes_only_lines_that_pass(nightly_run):
    """The explain stage on the real model: every (user, item) pair of the tags' first recalled
    items is written or failed in every mode, once; every written line passes the rules again
    when re-checked here; meta lines carry their style guide; evaluate scored the modes."""
    assert nightly_run.proc.returncode == 0, failure_report(nightly_run.proc)
    wh = nightly_run.warehouse
    written = DeltaTable(str(wh / "item_explanations")).to_pandas()
    failed = DeltaTable(str(wh / "explanation_failures")).to_pandas()
    recalled = DeltaTable(str(wh / "tag_recall")).to_pandas()
    firsts = recalled[recalled["rank"] == 1]
    tags = DeltaTable(str(wh / "user_intent_tags")).to_pandas()
    top = tags[tags["rank"] <= 2].merge(  # explain.items_per_user=2 in the test world
        firsts, left_on=["user_id", "rank"], right_on=["user_id", "tag_rank"], suffixes=("", "_r")
    )
    pairs = set(top.drop_duplicates(["user_id", "item_id"]).apply(lambda r: (r.user_id, r.item_id), axis=1))
    modes = ("meta", "single", "template")
    for mode in modes:
        done = written[written.explanation_mode == mode]
        lost = failed[failed.explanation_mode == mode]
        got = set(zip(done.user_id, done.item_id, strict=True)) | set(
            zip(lost.user_id, lost.item_id, strict=True)
        )
        assert got == pairs and len(done) + len(lost) == len(pairs), mode
    assert not written.duplicated(["user_id", "item_id", "explanation_mode"]).any()
    assert set(written.explanation_mode) <= set(modes) and (written.explanation_mode == "template").any()
    assert written[written.explanation_mode == "meta"].style_guide.notna().all()
    assert written[written.explanation_mode != "meta"].style_guide.isna().all()

    explain_cfg = OmegaConf.to_container(load_config(["run.stage=test"]).explain, resolve=True)
    settings = ExplainSettings.from_config(explain_cfg, "meta")
    items = (
        DeltaTable(str(wh / "items")).to_pandas().drop_duplicates("item_id", keep="last").set_index("item_id")
    )
    rules = ExplanationRules.for_run(settings, [b for b in items.brand.dropna().unique()])
    env = situation_of_every_region(wh)
    recent = recent_of_every_pair(wh, items, pairs, int(explain_cfg["recent_days"]))
    assert recent, "no explained user chose another item of the category lately"
    for row in written.itertuples():
        item = items.loc[row.item_id]
        facts = Facts.of(
            settings,
            row.tag,
            ItemFacts(row.item_id, item.title, item.category, item.category_path, item.brand, item.price),
            env,
            recent.get((row.user_id, row.item_id)),
        )
        assert rules.check(row.explanation, facts) is None, (row.explanation_mode, row.explanation)

    metrics = DeltaTable(str(wh / "eval_metrics")).to_pandas()
    assert {f"explain_pass_rate_{m}" for m in modes} <= set(metrics.metric)
    rates = metrics[metrics.metric.str.startswith("explain_pass_rate_")].set_index("metric").value
    assert rates["explain_pass_rate_template"] == pytest.approx(
        (written.explanation_mode == "template").sum() / len(pairs)
    )


@pytest.mark.slow
def test_nightly_judges_every_tag_and_written_line_on_the_real_model(nightly_run):
    """The judge stage on the real model: every final tag and every written explanation of the
    tiny world is judged once in every dimension, graded by the reviewer's rules from its own
    verdicts, and its judge-model calls are in the ledger."""
    from recgpt.judge.verdicts import EXPLANATION_DIMENSIONS, TAG_DIMENSIONS

    assert nightly_run.proc.returncode == 0, failure_report(nightly_run.proc)
    wh = nightly_run.warehouse
    tags = DeltaTable(str(wh / "user_intent_tags")).to_pandas()
    written = DeltaTable(str(wh / "item_explanations")).to_pandas()
    judged_tags = DeltaTable(str(wh / "tag_judgments")).to_pandas()
    judged_lines = DeltaTable(str(wh / "explanation_judgments")).to_pandas()
    key = ["pipeline", "context_mode", "user_id"]
    assert sorted(map(tuple, judged_tags[[*key, "tag_rank", "tag"]].values.tolist())) == sorted(
        map(tuple, tags[[*key, "rank", "tag"]].values.tolist())
    )
    assert sorted(
        map(tuple, judged_lines[[*key, "tag_rank", "explanation_mode", "explanation"]].values.tolist())
    ) == (sorted(map(tuple, written[[*key, "tag_rank", "explanation_mode", "explanation"]].values.tolist())))
    share = float(load_config(["run.stage=test"]).judge.excellence_share)
    for table, dimensions in ((judged_tags, TAG_DIMENSIONS), (judged_lines, EXPLANATION_DIMENSIONS)):
        assert set(table.judge_model) == {"SmolLM2-135M-Instruct"}
        for row in table.itertuples():
            verdicts = list(row.verdicts)
            assert [v["dimension"] for v in verdicts] == list(dimensions)
            failed = [v["dimension"] for v in verdicts if v["verdict"] == "fail"]
            assert list(row.failed) == failed
            strong = sum(bool(v["strong"]) for v in verdicts) / len(verdicts)
            assert row.grade == ("B" if failed else "S" if strong >= share else "A")
            by = {v["dimension"]: v["judged_by"] for v in verdicts}
            assert by["validity" if "validity" in by else "safety"] == "rule"
            # The judge model answered: its P(yes) is a probability, not left unjudged.
            llm = [v for v in verdicts if v["judged_by"] == "llm"]
            assert llm and all(v["verdict"] != "unjudged" and 0 <= v["score"] <= 1 for v in llm)
    calls = DeltaTable(str(wh / "llm_calls")).to_pandas()
    judge_calls = calls[calls.stage.str.startswith("judge.")]
    assert len(judge_calls) == len(judged_tags) + len(judged_lines)
    assert (judge_calls.generated_tokens == 1).all()
