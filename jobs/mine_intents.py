"""Stage mine_intents: every user with a reliable history as of the run date gets interest tags
from the agents — V2 (Global Planner -> one Expert per persona -> Decision Arbiter) or the V1
baseline (independent routes) — validated before anything is written.

    python -m jobs.mine_intents run.dt=2025-10-28 [context.mode=text] [pipeline=v1_baseline] [resume=true]

Users are mined in waves through the LLM-stage runner; each finished wave is staged before the
next starts, and the tables are written from the staged waves at the end, one replace per table
for (dt, pipeline, context_mode). A killed run resumed with `resume=true` skips the users of
finished waves (and users already in the tables), so it ends with the same tables as an
uninterrupted run; without `resume` a rerun recomputes everything idempotently. Before the write,
the run-wide rule on generic tags drops the tags too many users got, and the users it leaves
without a tag are mined once more with those tags banned (staged beside the waves).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.stage import StageContext, main_for, record_llm
from recgpt.agents.generic import GENERIC_TAG, ONLY_GENERIC_TAGS, GenericRule
from recgpt.agents.settings import AgentSettings
from recgpt.config import plain
from recgpt.errors import RecGPTError
from recgpt.tables import RUNS, USER_CONTEXT
from sparkio.staging import Staging
from udfs import llm
from udfs.generic_tags import (
    GENERIC_TAG_CUT,
    GenericTags,
    both_minings,
    category_reader,
    drop_generic,
    with_counts,
)
from udfs.mining import (
    MiningPlan,
    mining_inputs,
    mining_plan,
    mining_stage,
    resume_settings,
)
from udfs.mining_scope import contexts_in_scope, variant_of
from udfs.mining_tables import (
    TABLES,
    done_users,
    explode_outcomes,
    kept_rows,
    refuse_other_model,
    sample_line,
    summary_figures,
    table_rows,
    user_counts,
)
from udfs.waves import Waves

STAGE = "mine_intents"
# The stage calls the LLM: the nightly chain starts its engine server during the stage before.
USES_LLM = True


def plan_for(ctx: StageContext, variant: dict[str, str]) -> MiningPlan:
    """The mining plan of this run (udfs.mining.mining_plan)."""
    return mining_plan(ctx.cfg, ctx.warehouse, ctx.dt, variant)


def scoped_inputs(ctx: StageContext, plan: MiningPlan) -> tuple[DataFrame, int, int]:
    """Mining inputs of the users in scope (persisted), how many, and how many in scope have no
    reliable history (not mined)."""
    cfg, users_file = ctx.cfg, ctx.cfg.mine.get("users_file") or None
    inputs = mining_inputs(
        ctx.spark,
        ctx.warehouse,
        ctx.dt,
        plan.mode,
        {
            "embedding_model": plan.embedding["model_name"],
            "bought_days": plan.agents["validation"]["bought_days"],
            "calendar": plain(cfg.calendar),
        },
    )
    contexts = contexts_in_scope(ctx.spark, ctx.warehouse, ctx.dt, users_file)
    if users_file:
        inputs = inputs.join(contexts.select("user_id"), "user_id", "left_semi")
    inputs = inputs.persist(StorageLevel.MEMORY_AND_DISK)
    return inputs, inputs.count(), contexts.where(F.col("events_kept") == 0).count()


def run(ctx: StageContext) -> None:
    variant = variant_of(ctx.cfg)
    if not ctx.warehouse.exists(USER_CONTEXT):
        raise RecGPTError("no user_context table: run `python -m jobs.compress` for this date first")
    plan = plan_for(ctx, variant)
    stage = mining_stage(plan, plain(ctx.cfg.llm), ctx.cfg.mine)
    inputs, total, without_history = scoped_inputs(ctx, plan)
    waves, staged, kept = open_waves(ctx, plan, variant)
    todo = inputs.join(done_users(ctx.spark, staged, kept), "user_id", "left_anti")
    mine_waves(ctx, stage, waves, todo, total, f"{plan.pipeline}/{plan.mode}")
    mined_by = {**variant, "prompt_version": str(plan.agents["prompt_version"])}
    write_tables(ctx, stage, waves, inputs, kept, plan, mined_by)
    waves.drop()
    for frame in (*kept.values(), inputs):
        frame.unpersist()
    report(ctx, variant, plan, total, without_history)


def open_waves(
    ctx: StageContext, plan: MiningPlan, variant: dict[str, str]
) -> tuple[Waves, DataFrame | None, dict[str, DataFrame]]:
    """This run's staged waves: fresh, or with `resume=true` the finished waves of the killed run
    (their rows, or None) plus the rows an earlier final write left in the tables, once both are
    known to be mined with this run's settings."""
    settings = resume_settings(plan, str(ctx.cfg.llm.model_name), ctx.cfg.mine.get("users_file"))
    resume = bool(ctx.cfg.get("resume", False))
    if resume:
        refuse_other_model(ctx.warehouse, ctx.dt, variant, settings)
    staging = Staging(str(ctx.cfg.storage.warehouse), STAGE, ctx.dt, variant)
    waves = Waves(ctx.spark, staging, settings, resume, STAGE)
    staged = waves.staged()
    kept = kept_rows(ctx.warehouse, ctx.dt, variant, staged) if resume else {}
    return waves, staged, kept


def mine_waves(
    ctx: StageContext, stage: llm.LLMStage, waves: Waves, todo: DataFrame, total: int, label: str
) -> None:
    """The users still to do (of `total` with history) through the runner, a staged wave at a
    time, with progress."""
    todo = todo.persist(StorageLevel.MEMORY_AND_DISK)
    n_todo, wave_users = todo.count(), int(ctx.cfg.mine.wave_users)
    print(
        f"[{STAGE}] {label}: {total:,} users with history, {total - n_todo:,} already done, "
        f"{n_todo:,} to mine in {waves.count(n_todo, wave_users)} wave(s)",
        file=sys.stderr,
        flush=True,
    )
    interval = float(ctx.cfg.llm.get("progress_interval_s", 30))
    expected = tokens_per_user(ctx, label, float(ctx.cfg.mine.progress_tokens_per_user))
    with llm.Progress(ctx.spark, stage.name, n_todo, interval, tokens_per_row=expected) as progress:
        waves.run(todo, n_todo, wave_users, "user_id", lambda part: llm.run(part, stage, progress))
    todo.unpersist()


def tokens_per_user(ctx: StageContext, label: str, prior: float) -> float:
    """Generated tokens a user is expected to take, for the progress lines' time left: the newest
    successful run of this variant among the stage's last runs in `runs` (its tokens over the
    users it mined), else `prior`."""
    pipeline, mode = label.split("/")
    if not ctx.warehouse.exists(RUNS):
        return prior
    runs = (
        ctx.warehouse.read(RUNS)
        .where((F.col("stage") == STAGE) & (F.col("status") == "success"))
        .orderBy(F.col("created_at").desc())
        .select("rows_out", "rows_quarantined", "details")
        .limit(50)
        .collect()
    )
    for run in runs:
        details = json.loads(run.details or "{}")
        if not str(details.get("variant", "")).startswith(f"pipeline={pipeline} context_mode={mode}"):
            continue
        mined = (run.rows_out or 0) + (run.rows_quarantined or 0)
        tokens = sum(int(step.get("generated_tokens") or 0) for step in (details.get("llm") or {}).values())
        return tokens / mined if mined and tokens else prior
    return prior


def write_tables(
    ctx: StageContext,
    stage: llm.LLMStage,
    waves: Waves,
    inputs: DataFrame,
    kept: dict[str, DataFrame],
    plan: MiningPlan,
    mined_by: dict[str, str],
) -> None:
    """Each table's (dt, variant) replaced by the staged outcomes plus what a resume kept, after
    the run-wide rule on generic tags (`apply_generic_rule`); the ledger and the LLM summary from
    the outcomes."""
    variant = {k: mined_by[k] for k in ("pipeline", "context_mode")}
    outcomes = waves.staged()
    parts = explode_outcomes(outcomes, mined_by) if outcomes is not None else {}
    rows = {key: table_rows(ctx.spark, spec, [parts.get(key), kept.get(key)]) for key, spec in TABLES.items()}
    settings = AgentSettings.from_config(plan.agents)
    rule = GenericRule.of(settings)
    mined = rows["tags"]
    if rule is not None:
        rows["tags"] = mined = mined.persist(StorageLevel.MEMORY_AND_DISK)  # counted, then written
        rescue = Rescue(stage, waves, inputs, plan, mined_by) if settings.validation.generic_rescue else None
        outcomes = apply_generic_rule(ctx, rule, rows, outcomes, rescue)
    for key, spec in TABLES.items():
        written = ctx.warehouse.write(
            rows[key], spec, mode="replace", lineage=ctx.lineage, where={"dt": ctx.dt, **variant}
        )
        ctx.report.wrote(spec.name, written.rows, written.version)
    if outcomes is not None:
        record_llm(ctx, outcomes, stage.name)
        ctx.report.details.update(summary_figures(outcomes))
    mined.unpersist()


@dataclass(frozen=True)
class Rescue:
    """What the rescue of users left without a tag needs: the run's stage, staging, inputs and plan."""

    stage: llm.LLMStage
    waves: Waves
    inputs: DataFrame
    plan: MiningPlan
    mined_by: dict[str, str]


def apply_generic_rule(
    ctx: StageContext,
    rule: GenericRule,
    rows: dict[str, DataFrame],
    outcomes: DataFrame | None,
    rescue: Rescue | None,
) -> DataFrame | None:
    """The run-wide rule on generic tags over the tables' `rows` (replaced in place). With
    `rescue`, the users it leaves without a tag are mined once more with the run's generic tags
    banned (`mine_again`), their rows replaced by the new ones, and the rule counted again over
    all (a tag the rescued users push over the limit goes for every user). Returns the run's
    outcomes with the rescue's, for the ledger and the summary."""
    categories = category_reader(ctx.warehouse, ctx.dt)
    calls = outcomes.select("user_id", "rejected", "failed_calls") if outcomes is not None else None
    first = drop_generic(ctx.spark, rows["tags"], rows["failures"], rule, categories, calls)
    rows["tags"], rows["failures"] = first.tags, first.failures
    ctx.report.details.update(first.figures())
    if rescue is None or first.emptied is None:
        return outcomes
    again = mine_again(ctx, rescue, first)
    ctx.report.details["generic_rescue"] = rescue_line(again, len(first.dropped))
    fresh, redone = explode_outcomes(again, rescue.mined_by), again.select("user_id")
    # A rescued user that fails again names the rejections and failed calls of both minings;
    # computed once (a row per rescued user) for the failure rows and the second pass's counts.
    counts = both_minings(first.failures, again).localCheckpoint()
    fresh["failures"] = with_counts(fresh["failures"], counts)
    for key, spec in TABLES.items():
        rows[key] = table_rows(ctx.spark, spec, [rows[key].join(redone, "user_id", "left_anti"), fresh[key]])
    calls = counts
    if outcomes is not None:
        others = outcomes.join(redone, "user_id", "left_anti")
        calls = others.select("user_id", "rejected", "failed_calls").unionByName(counts)
    second = drop_generic(ctx.spark, rows["tags"], rows["failures"], rule, categories, calls)
    rows["tags"], rows["failures"] = second.tags, second.failures
    if second.dropped:
        ctx.report.details["generic_tags_after_rescue"] = second.figures()["generic_tags"]
    ctx.report.details[GENERIC_TAG] = first.rows_dropped + second.rows_dropped
    ctx.report.details[GENERIC_TAG_CUT] = first.rows_cut + second.rows_cut
    return again if outcomes is None else outcomes.unionByName(again)


def mine_again(ctx: StageContext, rescue: Rescue, generic: GenericTags) -> DataFrame:
    """The outcomes of the users the rule on generic tags left without a tag, mined once more
    with the run's generic tags banned (`Miner.rescue`), staged beside the waves (a resumed run
    redoes them)."""
    assert generic.emptied is not None
    todo = rescue.inputs.join(generic.emptied, "user_id", "left_semi")
    n_todo = todo.count()
    avoid = tuple(sorted(generic.dropped))
    print(
        f"[{STAGE}] {n_todo:,} user(s) left without a tag: mined again, {len(avoid):,} generic tag(s) banned",
        file=sys.stderr,
        flush=True,
    )
    stage = replace(rescue.stage, build=replace(rescue.plan, rescue=avoid))
    uri = f"{rescue.waves.staging.uri}/rescue"
    interval = float(ctx.cfg.llm.get("progress_interval_s", 30))
    with llm.Progress(ctx.spark, f"{stage.name}.rescue", n_todo, interval) as progress:
        llm.run(todo, stage, progress).write.mode("overwrite").parquet(uri)
    return ctx.spark.read.parquet(uri)


def rescue_line(outcomes: DataFrame, banned: int) -> str:
    """The stage summary's line on the rescue."""
    counts = outcomes.select(
        F.count("*").alias("users"), F.sum(F.when(F.size("tags") > 0, 1).otherwise(0)).alias("tagged")
    ).first()
    assert counts is not None
    users, tagged = int(counts["users"]), int(counts["tagged"] or 0)
    return (
        f"{users:,} user(s) left without a tag mined again with the {banned:,} generic tag(s) banned: "
        f"{tagged:,} tagged, {users - tagged:,} still without ({ONLY_GENERIC_TAGS})"
    )


def report(
    ctx: StageContext, variant: dict[str, str], plan: MiningPlan, total: int, without_history: int
) -> None:
    """Users in, tagged and failed, the variant and one user's tags, for the summary."""
    tagged, failed = user_counts(ctx.warehouse, ctx.dt, variant)
    r = ctx.report
    r.rows_in, r.rows_out, r.rows_quarantined = total + without_history, tagged, failed
    r.details["users"] = (
        f"{total:,} with history: {tagged:,} tagged, {failed:,} failed (mining_failures); "
        f"{without_history:,} without reliable history not mined"
    )
    r.details["variant"] = f"pipeline={plan.pipeline} context_mode={plan.mode}" + (
        f" adaptor={Path(plan.adaptor_folder).name}" if plan.adaptor_folder else ""
    )
    cores = plan.agents["tag"].get("cores") or []
    r.details["tag_cores"] = (
        f"{len(cores)} catalog phrase(s): " + ", ".join(cores[:8]) + (" ..." if len(cores) > 8 else "")
        if cores
        else "none: tags of any words (tag.grounding.source null)"
    )
    sample = sample_line(ctx.warehouse, ctx.dt, variant, int(plan.agents["n_tags"]))
    if sample:
        r.details["sample"] = sample


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
