"""Data-quality gate: runs each stage's great-expectations checkpoint on the tables it wrote for
the run date, appends the results to `dq_results`, builds Data Docs under `<warehouse>/_reports/dq/`,
and stops the run (exit 1) when a critical expectation failed.

    python -m jobs.dq run.dt=2025-10-28 [dq.stages=[ingest]]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs.stage import StageContext, main_for
from recgpt.config import plain
from recgpt.errors import RecGPTError
from recgpt.quality import CheckResult, gate, outcome, table_checks, warning_lines
from recgpt.tables import DQ_RESULTS
from udfs.checkpoints import (
    CheckpointTables,
    StageRun,
    compress_tables,
    covisit_tables,
    embed_items_tables,
    evaluate_tables,
    explain_tables,
    ingest_tables,
    judge_tables,
    latest_run,
    latest_runs,
    mine_intents_tables,
    recall_tables,
)
from udfs.quality import QualityRunner, previous_row_counts, results_frame

STAGE = "dq"
# The stages that have a checkpoint (what each validates: udfs/checkpoints.py).
CHECKPOINTED = (
    "ingest",
    "embed_items",
    "compress",
    "covisit",
    "mine_intents",
    "recall",
    "explain",
    "judge",
    "evaluate",
)


def checkpoint_tables(ctx: StageContext, stage: str, run: StageRun) -> CheckpointTables:
    """What `stage`'s checkpoint validates for the run date, given the stage's latest `run`."""
    wh, dt, cfg = ctx.warehouse, ctx.dt, ctx.cfg
    if stage == "ingest":
        until, fraction = str(cfg.ingest.until), float(cfg.quality.quarantine_warn_fraction)
        return ingest_tables(wh, dt, run, until, fraction)
    if stage == "embed_items":
        return embed_items_tables(wh, dt, run, str(cfg.embedding.model_name))
    if stage == "compress":
        return compress_tables(wh, dt, run)
    if stage == "covisit":
        return covisit_tables(wh, dt, run)
    if stage == "mine_intents":
        agents = cfg.pipeline.agents
        return mine_intents_tables(wh, dt, cfg.mine.get("users_file"), int(agents.n_tags), int(agents.m_tags))
    if stage == "recall":
        return recall_tables(wh, dt)
    if stage == "explain":
        return explain_tables(wh, dt)
    if stage == "judge":
        return judge_tables(wh, dt)
    assert stage == "evaluate", stage
    return evaluate_tables(wh, dt)


def validate_stage(
    ctx: StageContext,
    runner: QualityRunner,
    stage: str,
    runs: Mapping[str, StageRun],
    q: dict[str, Any],
    previous: dict[str, int],
) -> list[CheckResult]:
    """Run `stage`'s checkpoint on what its latest run (in `runs`) wrote and replace its
    dq_results rows for the run date."""
    if stage not in CHECKPOINTED:
        raise RecGPTError(f"no data-quality checkpoint for stage {stage!r} (known: {sorted(CHECKPOINTED)})")
    tables = checkpoint_tables(ctx, stage, latest_run(runs, stage, ctx.dt))
    results: list[CheckResult] = []
    for table, df in tables.frames.items():
        if table not in q["checkpoints"][stage]:
            continue
        specs = table_checks(
            table,
            q["suites"].get(table, []),
            tables.row_counts.get(table),
            previous.get(table),
            q["row_count_drift"],
        )
        results += runner.validate(stage, table, df, specs, run_name=f"{ctx.dt.iso}_{ctx.lineage.run_id}")
    frame = results_frame(ctx.spark, results, stage, runner.index)
    where = {"dt": ctx.dt, "checkpoint": stage}
    written = ctx.warehouse.write(frame, DQ_RESULTS, mode="replace", lineage=ctx.lineage, where=where)
    ctx.report.wrote(DQ_RESULTS.name, written.rows, written.version)
    return results


def run(ctx: StageContext) -> None:
    q = plain(ctx.cfg.quality)
    wh, dt = ctx.warehouse, ctx.dt
    # Explicit stages must have run; by default, every checkpoint whose stage ran for the date.
    runs = latest_runs(wh, dt)
    stages = list(ctx.cfg.dq.stages or [s for s in q["checkpoints"] if s in runs])
    if not stages:
        raise RecGPTError(f"nothing to validate for dt={dt}: no stage with a checkpoint has run")
    skipped = [s for s in q["checkpoints"] if s not in stages]
    if skipped:
        ctx.report.details["skipped"] = f"no successful run for dt={dt}: {', '.join(skipped)}"
    runner = QualityRunner(str(q["reports_dir"]), str(q["assets_dir"]), int(q["local_max_rows"]))
    previous = dict(previous_row_counts(wh.read(DQ_RESULTS) if wh.exists(DQ_RESULTS) else None, dt))
    everything: list[CheckResult] = []
    try:
        for stage in stages:
            everything += validate_stage(ctx, runner, stage, runs, q, previous)
    finally:
        # The Data Docs show what was validated, also when a later checkpoint broke off the run.
        runner.finish()

    r = ctx.report
    r.rows_in = len(everything)
    r.rows_out = sum(res.success for res in everything)
    r.details["dq"] = outcome(everything)
    if warnings := warning_lines(everything, q["fail_on"]):
        r.details["warnings"] = warnings
    r.details["report"] = runner.index
    gate(everything, q["fail_on"], runner.index)


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
