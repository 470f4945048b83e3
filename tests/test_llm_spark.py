"""LLM calls inside Spark: one engine per executor shared by every partition and stage, error rows
instead of failed tasks, and the llm_calls cost ledger."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from recgpt.llm.request import EMBED_MARK, encode_messages
from recgpt.llm.server import engine_starts
from recgpt.tables import LLM_CALLS
from sparkio.warehouse import Lineage
from tests.llm_support import SCHEMA_TOKENS, TEST_ENGINE, PersonaSplit, planner_messages
from udfs import llm as spark_llm
from udfs.llm_requests import generate

pytestmark = pytest.mark.slow


def request_rows(n: int, prefix: str) -> list[dict]:
    rows = [
        {
            "key": f"{prefix}-{i}",
            "user_id": f"u{i}",
            "messages": encode_messages(
                planner_messages(f"u{i}", [f"day {d}: viewed 'scarf {d}'" for d in range(1 + i % 5)])
            ),
            "history_message": 2,
        }
        for i in range(n)
    ]
    rows.append({"key": f"{prefix}-bad", "user_id": "ub", "messages": "not json", "history_message": None})
    rows.append(
        {
            "key": f"{prefix}-long",
            "user_id": "ul",
            "messages": encode_messages([{"role": "user", "content": "frost " * 4000}]),
            "history_message": None,
        }
    )
    rows.append(
        {
            "key": f"{prefix}-marks",
            "user_id": "um",
            "messages": encode_messages([{"role": "user", "content": f"item {EMBED_MARK}"}]),
            "history_message": None,
        }
    )
    return rows


@pytest.fixture(scope="module")
def cfg(llm_cfg):
    return {**llm_cfg, "sampling": {**llm_cfg["sampling"], "max_tokens": SCHEMA_TOKENS}}


def test_one_engine_serves_every_partition_and_stage_and_failures_become_rows(spark, warehouse, cfg):
    runs = []
    for stage in ("planner", "experts"):  # two stages, each a separate Spark job of 4 tasks
        df = spark.createDataFrame(
            request_rows(10, stage), "key string, user_id string, messages string, history_message int"
        )
        progress = spark_llm.Progress(spark, stage, total=13, interval_s=5)
        results = generate(
            df.repartition(4), cfg, schema=PersonaSplit, label=stage, progress=progress
        ).cache()
        with progress:
            rows = {r["key"]: r for r in results.collect()}
        assert progress.rows.value == 13
        assert progress.tokens.value == sum(c["generated_tokens"] for r in rows.values() for c in r["calls"])
        assert progress.line().startswith(f"[{stage}] 13/13 rows")
        runs.append((stage, results, rows))

    # However many tasks, partitions and stages: one engine on this machine (started by the first
    # task, unless an earlier test of the session already had).
    starts = engine_starts(cfg)
    assert len(starts) == 1, f"expected one engine start on this executor, got {starts}"
    engines = {r["engine"] for _, _, rows in runs for r in rows.values()}
    assert engines == {f"{starts[0]['host']}:{starts[0]['pid']}"}

    for stage, _, rows in runs:
        assert len(rows) == 13, "every request row comes back exactly once"
        good = [rows[f"{stage}-{i}"] for i in range(10)]
        for r in good:
            assert r["error"] is None, r["error"]
            assert len(PersonaSplit.model_validate_json(r["parsed_json"]).personas) >= 1
            [call] = r["calls"]
            assert call["step"] == stage and call["request_key"] == r["key"]
            assert call["prompt_tokens"] > 0 and call["generated_tokens"] > 0 and call["attempts"] >= 1
        assert (
            rows[f"{stage}-bad"]["error"].startswith("bad_request:") and rows[f"{stage}-bad"]["calls"] == []
        )
        assert rows[f"{stage}-long"]["error"].startswith("prompt_too_long")
        assert (
            rows[f"{stage}-marks"]["error"].startswith("bad_request:")
            and "embedding" in rows[f"{stage}-marks"]["error"]
        )

    # Cost ledger: one row per request sent to the engine (the unparseable row and the one whose
    # marks have no embeddings never were; the too-long one was, and was refused), replaced (not
    # duplicated) when the stage reruns.
    stage, results, rows = runs[0]
    lineage = Lineage.now("2025-10-28", "run-1")
    spark_llm.write_ledger(warehouse, results, stage, lineage)
    spark_llm.write_ledger(warehouse, results, stage, Lineage.now("2025-10-28", "run-2"))
    spark_llm.write_ledger(warehouse, runs[1][1], "experts", lineage)
    ledger = warehouse.read(LLM_CALLS, dt="2025-10-28")
    assert ledger.count() == 22
    planner = ledger.where("stage = 'planner'")
    assert {r["run_id"] for r in planner.select("run_id").collect()} == {"run-2"}
    summary = spark_llm.summarize(results)["planner"]
    assert summary["calls"] == 11 and summary["errors"] == 1
    ledger_tokens = planner.agg({"generated_tokens": "sum"}).first()[0]
    generated = sum(c["generated_tokens"] for r in rows.values() for c in r["calls"])
    assert ledger_tokens == summary["generated_tokens"] == generated
    assert json.loads(json.dumps(summary))  # plain ints: goes into the runs table details


def test_a_stage_records_its_ledger_summary_and_quality(spark, tmp_path, cfg):
    from jobs.stage import open_context, record_llm, render_summary
    from recgpt.config import load_config
    from recgpt.quality import check_specs
    from udfs.quality import QualityRunner

    conf = load_config(
        [
            "run.dt=2025-10-28",
            "run.run_id=step-test",
            f"storage.warehouse={tmp_path / 'wh'}",
            f"llm.server.state_dir={cfg['server']['state_dir']}",
            f"llm.sampling.max_tokens={SCHEMA_TOKENS}",
            *TEST_ENGINE,
        ]
    )
    ctx = open_context(conf, "mine_intents", spark=spark)

    df = spark.createDataFrame(
        request_rows(6, "s"), "key string, user_id string, messages string, history_message int"
    )
    llm_cfg = OmegaConf.to_container(conf.llm, resolve=True)
    results = generate(df, llm_cfg, schema=PersonaSplit, label="planner").cache()
    assert results.count() == 9
    record_llm(ctx, results, "mine_intents.test")
    summary = ctx.report.details["llm"]["planner"]
    assert summary["calls"] == 7 and summary["errors"] == 1 and summary["generated_tokens"] > 0
    text = render_summary(ctx, 1.0, "success", None)
    assert "llm_calls[mine_intents.test]" in text and "7 calls" in text and "generated tok" in text

    ledger = ctx.warehouse.read(LLM_CALLS, dt="2025-10-28")
    assert ledger.count() == 7
    assert {r["stage"] for r in ledger.select("stage").collect()} == {"mine_intents.test"}

    # The ledger's great-expectations suite passes on what was written and catches duplicates.
    specs = check_specs("llm_calls", OmegaConf.to_container(conf.quality.suites.llm_calls, resolve=True))
    runner = QualityRunner(str(tmp_path / "reports"), str(conf.quality.assets_dir))
    ok = runner.validate("mine_intents", "llm_calls", ledger, specs, "ok")
    assert all(r.success for r in ok if r.severity == "critical"), [r.describe() for r in ok if not r.success]
    doubled = ledger.unionByName(ledger.limit(1))
    bad = runner.validate("mine_intents", "llm_calls", doubled, specs, "dup")
    failed = {r.expectation for r in bad if not r.success}
    assert "expect_compound_columns_to_be_unique" in failed
    # Same engine as the first test: the stage reused it rather than starting another.
    assert len(engine_starts(cfg)) == 1
