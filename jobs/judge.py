"""Stage judge: Agent-as-a-Judge grades of a night's tags and explanations. For a seeded sample
of the variant's users (`judge.sample_users`; every user when null) each final tag and each
written explanation (every mode) is judged per dimension — by a rule, an item-embedding cosine
or the judge model's P(yes) (recgpt/judge) — and graded S, A or B by the senior reviewer.

    python -m jobs.judge run.dt=2025-10-28 [pipeline=v1_baseline] [judge.model=qwen25_coder_1p5b_cpu]

Users go through the LLM-stage runner in staged waves; a rerun replaces the (dt, pipeline,
context_mode) partitions of tag_judgments and explanation_judgments, so it never duplicates.
"""

from __future__ import annotations

import sys
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from jobs.stage import StageContext, main_for, record_llm
from recgpt.config import load_config, plain
from recgpt.errors import RecGPTError
from recgpt.judge.verdicts import GRADES
from recgpt.llm.model_cache import require_on_disk
from recgpt.tables import EXPLANATION_JUDGMENTS, TAG_JUDGMENTS, USER_INTENT_TAGS
from sparkio.staging import Staging
from udfs import llm
from udfs.judge import JudgePlan, category_centroids, explode_judged, judge_inputs, judge_stage
from udfs.mining import catalog_brands
from udfs.mining_scope import variant_of
from udfs.waves import Waves

STAGE = "judge"
USES_LLM = True


def judge_llm(cfg: Any) -> dict[str, Any]:
    """The judge model's `llm` config: the `judge.model` group of conf/llm/, or the pipeline's
    own model when null (then the engine server the mining stage started serves the judge too)."""
    model = cfg.judge.get("model")
    if not model:
        return plain(cfg.llm)
    llm = plain(load_config([f"run.stage={STAGE}", f"llm={model}"]).llm)
    require_on_disk(llm, "judge")  # before any Spark work
    return llm


def run(ctx: StageContext) -> None:
    cfg = ctx.cfg
    variant = variant_of(cfg)
    if not ctx.warehouse.exists(USER_INTENT_TAGS):
        raise RecGPTError(
            f"no user_intent_tags table yet: run `python -m jobs.mine_intents run.dt={ctx.dt}` first"
        )
    judge_cfg = plain(cfg.judge)
    embedding = plain(cfg.embedding)
    plan = JudgePlan(
        judge={k: v for k, v in judge_cfg.items() if k != "model"},
        agents=plain(cfg.pipeline.agents),
        explain=plain(cfg.explain),
        embedding=embedding,
        brands=catalog_brands(ctx.warehouse, ctx.dt),
        festivals=[str(f["name"]) for f in cfg.calendar.festivals],
        centroids=category_centroids(ctx.warehouse, ctx.dt, str(embedding["model_name"])),
    )
    stage = judge_stage(plan, judge_llm(cfg), variant, int(judge_cfg["batch_users"]))
    of_variant = (F.col("pipeline") == variant["pipeline"]) & (
        F.col("context_mode") == variant["context_mode"]
    )
    sample = judge_cfg.get("sample_users")
    inputs = judge_inputs(
        ctx.spark,
        ctx.warehouse,
        ctx.dt,
        of_variant,
        None if sample is None else int(sample),
        int(judge_cfg["seed"]),
        int(judge_cfg["history_items"]),
        plain(cfg.calendar),
        int(cfg.explain.recent_days),
    ).persist(StorageLevel.MEMORY_AND_DISK)
    users = inputs.count()
    waves = Waves(ctx.spark, Staging(str(cfg.storage.warehouse), STAGE, ctx.dt, variant), {}, False, STAGE)
    print(
        f"[{STAGE}] {variant['pipeline']}/{variant['context_mode']}: {users:,} users",
        file=sys.stderr,
        flush=True,
    )
    interval = float(cfg.llm.get("progress_interval_s", 30))
    with llm.Progress(ctx.spark, stage.name, users, interval) as progress:
        waves.run(
            inputs, users, int(judge_cfg["wave_users"]), "key", lambda part: llm.run(part, stage, progress)
        )
    inputs.unpersist()
    outcomes = waves.staged()
    if outcomes is None:
        outcomes = ctx.spark.createDataFrame([], from_arrow_schema(stage.output_schema()))
    tags, lines = explode_judged(outcomes, {**variant, "prompt_version": str(judge_cfg["prompt_version"])})
    where = {"dt": ctx.dt, **variant}
    for spec, data in ((TAG_JUDGMENTS, tags), (EXPLANATION_JUDGMENTS, lines)):
        result = ctx.warehouse.write(data, spec, mode="replace", lineage=ctx.lineage, where=where)
        ctx.report.wrote(spec.name, result.rows, result.version)
    record_llm(ctx, outcomes, stage.name)
    bad = outcomes.where(F.col("error").isNotNull()).count()
    waves.drop()
    report(ctx, variant, users, bad)


def report(ctx: StageContext, variant: dict[str, str], users: int, bad: int) -> None:
    """Users in, grade shares of tags and explanations, the dimension failing most often."""
    where = (F.col("pipeline") == variant["pipeline"]) & (F.col("context_mode") == variant["context_mode"])
    r = ctx.report
    r.rows_in, r.rows_quarantined = users, bad
    r.details["variant"] = f"pipeline={variant['pipeline']} context_mode={variant['context_mode']}"
    rows_out = 0
    for name, spec in (("tags", TAG_JUDGMENTS), ("explanations", EXPLANATION_JUDGMENTS)):
        judged = ctx.warehouse.read(spec, dt=ctx.dt).where(where)
        counts = {g.grade: g["count"] for g in judged.groupBy("grade").count().collect()}
        total = sum(counts.values())
        rows_out += total
        if not total:
            r.details[name] = "none judged"
            continue
        shares = ", ".join(f"{g} {counts.get(g, 0) / total:.0%}" for g in GRADES)
        worst = (
            judged.select(F.explode("failed").alias("d"))
            .groupBy("d")
            .count()
            .orderBy(F.desc("count"), "d")
            .first()
        )
        failing = f"; most failed: {worst.d} ({worst['count']:,})" if worst else ""
        r.details[name] = f"{total:,} judged: {shares}{failing}"
    r.rows_out = rows_out


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
