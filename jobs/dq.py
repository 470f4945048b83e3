"""Data-quality gate: runs each stage's great-expectations checkpoint on the tables it wrote for
the run date, appends the results to `dq_results`, builds Data Docs under `<warehouse>/_reports/dq/`,
and stops the run (exit 1) when a critical expectation failed.

    python -m jobs.dq run.dt=2025-10-28 [dq.stages=[ingest]]
"""

from __future__ import annotations

import re

from omegaconf import OmegaConf
from pyspark.sql import DataFrame, Row, Window
from pyspark.sql import functions as F

from jobs.mine_intents import users_in_scope
from jobs.stage import StageContext, main_for
from recgpt.agents.prompts import ROUTES
from recgpt.errors import RecGPTError
from recgpt.llm.request import EMBED_MARK
from recgpt.quality import CheckResult, CheckSpec, check_specs, gate, row_count_check
from recgpt.tables import DQ_RESULTS
from udfs.embeddings import current_embeddings
from udfs.quality import QualityRunner, derive_behaviors, derive_items, previous_row_counts, results_rows

STAGE = "dq"


def _latest_run(ctx: StageContext, stage: str) -> Row:
    runs = ctx.warehouse.read("runs", dt=ctx.dt) if ctx.warehouse.exists("runs") else None
    row = None
    if runs is not None:
        row = (
            runs.where((F.col("stage") == stage) & (F.col("status") == "success"))
            .orderBy(F.col("created_at").desc())
            .select("run_id", "rows_in")
            .first()
        )
    if row is None:
        raise RecGPTError(f"no successful {stage} run for dt={ctx.dt}: run `python -m jobs.{stage}` first")
    return row


def _has_run(ctx: StageContext, stage: str) -> bool:
    try:
        _latest_run(ctx, stage)
    except RecGPTError:
        return False
    return True


def ingest_frames(ctx: StageContext) -> tuple[dict[str, DataFrame], dict[str, CheckSpec]]:
    """What the latest successful ingest for the run date wrote, with derived columns, and the
    row-count expectations that do not compare with the previous run (quarantine: a share of
    the rows read)."""
    latest = _latest_run(ctx, "ingest")
    run_id = str(latest["run_id"])
    wh = ctx.warehouse
    mine = F.col("run_id") == F.lit(run_id)
    items = wh.read("items", dt=ctx.dt).where(mine)
    frames = {
        "behaviors": derive_behaviors(wh.read("behaviors").where(mine), items, str(ctx.cfg.ingest.until)),
        "items": derive_items(items),
        "quarantine": wh.read("quarantine", dt=ctx.dt).where(F.col("stage") == "ingest"),
    }
    if wh.exists("users"):
        frames["users"] = wh.read("users", dt=ctx.dt).where(mine)
    if wh.exists("env_signals"):
        frames["env_signals"] = wh.read("env_signals").where(mine)
    if wh.exists("planted_personas"):
        planted = wh.read("planted_personas", dt=ctx.dt).where(mine)
        if not planted.isEmpty():  # ground truth exists for synthetic sources only
            frames["planted_personas"] = planted
    limit = int(float(ctx.cfg.quality.quarantine_warn_fraction) * int(latest["rows_in"] or 0))
    counts = {
        "quarantine": CheckSpec(
            "quarantine",
            "expect_table_row_count_to_be_between",
            "warning",
            {"min_value": 0, "max_value": limit},
        )
    }
    return frames, counts


def embed_items_frames(ctx: StageContext) -> tuple[dict[str, DataFrame], dict[str, CheckSpec]]:
    """The vectors the latest embed_items run wrote for the date (with their length and norm), and
    the catalog snapshot joined to its current vectors (every item must have one)."""
    latest = _latest_run(ctx, "embed_items")
    model = str(ctx.cfg.embedding.model_name)
    written = ctx.warehouse.read("item_embeddings", dt=ctx.dt).where(
        F.col("run_id") == F.lit(str(latest["run_id"]))
    )
    squares = F.aggregate("embedding", F.lit(0.0).cast("double"), lambda acc, x: acc + x * x)
    frames = {
        "item_embeddings": written.withColumn("_length", F.size("embedding")).withColumn(
            "_norm", F.sqrt(squares)
        ),
        "item_embeddings_current": current_embeddings(ctx.warehouse, ctx.dt, model).withColumn(
            "_has_vector", F.col("embedding").isNotNull()
        ),
    }
    # Incremental: a run embeds only what changed, so its row count says nothing about health.
    counts = {
        "item_embeddings": CheckSpec(
            "item_embeddings", "expect_table_row_count_to_be_between", "warning", {"min_value": 0}
        )
    }
    return frames, counts


def compress_frames(ctx: StageContext) -> tuple[dict[str, DataFrame], dict[str, CheckSpec]]:
    """The contexts the latest compress run wrote, with consistency columns; and every user with
    a behaviour before the run date must have exactly one."""
    latest = _latest_run(ctx, "compress")
    contexts = ctx.warehouse.read("user_context", dt=ctx.dt).where(
        F.col("run_id") == F.lit(str(latest["run_id"]))
    )
    marks = F.size(F.split(F.col("hybrid_text"), re.escape(EMBED_MARK))) - 1
    frame = (
        contexts.withColumn("_marks_ok", marks == F.size("entity_ids"))
        .withColumn("_kept_ok", F.col("events_kept") <= F.col("events"))
        .withColumn("_hybrid_keeps_more", F.col("hybrid_dropped_buckets") <= F.col("v1_dropped_buckets"))
    )
    expected = int(latest["rows_in"] or 0)
    counts = {
        "user_context": CheckSpec(
            "user_context", "expect_table_row_count_to_equal", "critical", {"value": expected}
        )
    }
    return {"user_context": frame}, counts


def covisit_frames(ctx: StageContext) -> tuple[dict[str, DataFrame], dict[str, CheckSpec]]:
    """The recall the latest covisit run wrote, with per-user rank contiguity, score order and
    whether each user is one compress gave a history (the channel recalls for no one else).
    How many users get candidates depends on the data: the row count is checked for drift."""
    latest = _latest_run(ctx, "covisit")
    rows = ctx.warehouse.read("covisit_recall", dt=ctx.dt).where(
        F.col("run_id") == F.lit(str(latest["run_id"]))
    )
    with_history = (
        ctx.warehouse.read("user_context", dt=ctx.dt)
        .where(F.col("events_kept") > 0)
        .select("user_id", F.lit(True).alias("_user_known"))
    )
    per_user = Window.partitionBy("user_id")
    by_rank = per_user.orderBy("rank")
    frame = (
        rows.join(with_history, "user_id", "left")
        .withColumn("_user_known", F.coalesce("_user_known", F.lit(False)))
        .withColumn("_ranks_ok", F.max("rank").over(per_user) == F.count("*").over(per_user))
        # Rank r never scores above rank r-1.
        .withColumn("_order_ok", F.coalesce(F.lag("score").over(by_rank) >= F.col("score"), F.lit(True)))
    )
    return {"covisit_recall": frame}, {}


def mine_intents_frames(ctx: StageContext) -> tuple[dict[str, DataFrame], dict[str, CheckSpec]]:
    """The mined tables of the date (every pipeline variant that ran), with per-user tag counts
    and rank contiguity; and the coverage: each variant accounts for every user with a history,
    in user_intent_tags or in mining_failures, exactly once."""
    _latest_run(ctx, "mine_intents")
    wh, dt = ctx.warehouse, ctx.dt
    variant = ["pipeline", "context_mode"]
    agents = ctx.cfg.pipeline.agents
    tags = wh.read("user_intent_tags", dt=dt)
    per_user = Window.partitionBy(*variant, "user_id")
    # V1 has no arbiter: its routes' validated tags are kept, up to M per route.
    most = F.when(F.col("pipeline") == "v1_baseline", int(agents.m_tags) * len(ROUTES))
    tag_frame = (
        tags.withColumn("_words", F.size(F.split(F.trim("tag"), r"\s+")))
        .withColumn("_chars", F.length("tag"))
        .withColumn("_user_tags", F.count("*").over(per_user))
        .withColumn("_ranks_ok", F.max("rank").over(per_user) == F.col("_user_tags"))
        .withColumn("_count_ok", F.col("_user_tags") <= most.otherwise(int(agents.n_tags)))
    )
    failures = wh.read("mining_failures", dt=dt)
    tagged = tags.select(*variant, "user_id").distinct()
    failure_frame = failures.join(
        tagged.withColumn("_has_tags", F.lit(True)), [*variant, "user_id"], "left"
    ).withColumn("_has_tags", F.coalesce("_has_tags", F.lit(False)))
    outcomes = tagged.unionByName(failures.select(*variant, "user_id"))
    with_history = users_in_scope(ctx).count()
    variants = outcomes.select(*variant).distinct().count()
    frames = {
        "user_personas": wh.read("user_personas", dt=dt),
        "user_intent_tags": tag_frame,
        "mining_failures": failure_frame,
        "mining_coverage": outcomes,
    }
    counts = {
        "mining_coverage": CheckSpec(
            "mining_coverage",
            "expect_table_row_count_to_equal",
            "critical",
            {"value": with_history * variants},
        ),
        # How many users fail depends on the model; the share is a warning in the suite.
        "mining_failures": CheckSpec(
            "mining_failures", "expect_table_row_count_to_be_between", "warning", {"min_value": 0}
        ),
    }
    return frames, counts


def recall_frames(ctx: StageContext) -> tuple[dict[str, DataFrame], dict[str, CheckSpec]]:
    """The tag-recall rows of the date, and each recalled tag checked against the final tags it
    came from (a recall row for a tag the user does not have is lineage gone wrong)."""
    _latest_run(ctx, "recall")
    wh, dt = ctx.warehouse, ctx.dt
    keys = ["pipeline", "context_mode", "user_id"]
    tags = wh.read("user_intent_tags", dt=dt).select(*keys, F.col("rank").alias("tag_rank"), "tag")
    frame = (
        wh.read("tag_recall", dt=dt)
        .join(tags.withColumn("_tag_known", F.lit(True)), [*keys, "tag_rank", "tag"], "left")
        .withColumn("_tag_known", F.coalesce("_tag_known", F.lit(False)))
    )
    return {"tag_recall": frame}, {}


def evaluate_frames(ctx: StageContext) -> tuple[dict[str, DataFrame], dict[str, CheckSpec]]:
    """The date's metrics, with `_share` = the value of the metrics that are shares (hit rates,
    recalls, coverage, failure rate), which must lie in [0, 1]."""
    _latest_run(ctx, "evaluate")
    metrics = ctx.warehouse.read("eval_metrics", dt=ctx.dt)
    shares = F.col("metric").rlike(
        "^(hr[0-9]+|recall_at_.*|exclusive_recall|persona_recovery|novelty|catalog_coverage_.*|failure_rate)$"
    )
    return {"eval_metrics": metrics.withColumn("_share", F.when(shares, F.col("value")))}, {}


FRAMES = {
    "ingest": ingest_frames,
    "embed_items": embed_items_frames,
    "compress": compress_frames,
    "covisit": covisit_frames,
    "mine_intents": mine_intents_frames,
    "recall": recall_frames,
    "evaluate": evaluate_frames,
}


def run(ctx: StageContext) -> None:
    q = OmegaConf.to_container(ctx.cfg.quality, resolve=True)
    assert isinstance(q, dict)
    # Explicit stages must have run; by default, every checkpoint whose stage ran for the date.
    stages = list(ctx.cfg.dq.stages or [s for s in q["checkpoints"] if _has_run(ctx, s)])
    if not stages:
        raise RecGPTError(f"nothing to validate for dt={ctx.dt}: no stage with a checkpoint has run")
    skipped = [s for s in q["checkpoints"] if s not in stages]
    if skipped:
        ctx.report.details["skipped"] = f"no successful run for dt={ctx.dt}: {', '.join(skipped)}"
    runner = QualityRunner(str(q["reports_dir"]), str(q["assets_dir"]))
    history = ctx.warehouse.read(DQ_RESULTS) if ctx.warehouse.exists(DQ_RESULTS) else None
    previous = previous_row_counts(history, ctx.dt)
    drift = q["row_count_drift"]
    everything: list[CheckResult] = []
    for stage in stages:
        if stage not in FRAMES:
            raise RecGPTError(f"no data-quality checkpoint for stage {stage!r} (known: {sorted(FRAMES)})")
        results: list[CheckResult] = []
        frames, counts = FRAMES[stage](ctx)
        for table, df in frames.items():
            if table not in q["checkpoints"][stage]:
                continue
            specs = check_specs(table, q["suites"].get(table, []))
            specs.append(
                counts.get(table)
                or row_count_check(table, previous.get(table), float(drift["tolerance"]), drift["severity"])
            )
            results += runner.validate(stage, table, df, specs, run_name=f"{ctx.dt}_{ctx.lineage.run_id}")
        rows = results_rows(results, stage, runner.index)
        frame = ctx.spark.createDataFrame(
            rows,
            schema="checkpoint string, table_name string, expectation string, "
            "column_name string, severity string, success boolean, observed string, "
            "unexpected_count long, unexpected_percent double, details string, "
            "report string",
        )
        written = ctx.warehouse.write(
            frame, DQ_RESULTS, mode="replace", lineage=ctx.lineage, where={"dt": ctx.dt, "checkpoint": stage}
        )
        ctx.report.wrote(DQ_RESULTS.name, written.rows, written.version)
        everything += results
    runner.finish()
    failed = [r for r in everything if not r.success]
    ctx.report.rows_in = len(everything)
    ctx.report.rows_out = len(everything) - len(failed)
    critical = sum(r.severity == "critical" for r in failed)
    ctx.report.details["dq"] = (
        f"{len(everything)} expectations, {len(failed)} failed "
        f"({critical} critical, {len(failed) - critical} warning)"
    )
    for r in failed:
        if r.severity not in q["fail_on"]:
            ctx.report.details.setdefault("warnings", []).append(r.describe())
    ctx.report.details["report"] = runner.index
    gate(everything, q["fail_on"], runner.index)


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
