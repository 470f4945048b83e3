"""Stage evaluate: how good were the intents mined for a run date? Every pipeline variant mined
for dt (V2 / V1, hybrid / text) is scored against what its users really did in the held-out window
after dt, next to the co-visitation channel; the figures go to `eval_metrics` and an HTML report.

    python -m jobs.evaluate run.dt=2025-10-28 [eval.window_days=14]

It needs behaviours through the window (a nightly run evaluates the run date `window_days` back).
A rerun replaces the date's metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf
from pyspark import StorageLevel
from pyspark.sql import DataFrame

from jobs.stage import StageContext, main_for
from recgpt.errors import ConfigError, NothingToDo, RecGPTError
from recgpt.metrics import mean_metrics, metric_docs, variant_metrics
from recgpt.report import ReportData, write_report
from recgpt.tables import EVAL_COMPARISONS, EVAL_METRICS, ITEMS
from udfs.evaluate import (
    Bootstrap,
    Variant,
    bootstrap_values,
    category_counts,
    comparisons,
    covisit_items,
    evaluation_rows,
    failed_users,
    heldout_users,
    intervals,
    item_categories,
    mined_variants,
    mining_tokens,
    popular_categories,
    recalled_items,
    sample_tags,
    score_users,
    variant_means,
)
from udfs.explain import explanation_metrics, explanation_samples
from udfs.judge import judge_metrics, judged_samples

STAGE = "evaluate"
# The eval_metrics columns the stage computes (lineage is stamped on write).
EVAL_METRICS_SCHEMA = (
    "pipeline string, context_mode string, model string, metric string, value double, users long, "
    "window_days int, ci95_low double, ci95_high double"
)
EVAL_COMPARISONS_SCHEMA = (
    "pipeline string, context_mode string, other string, metric string, difference double, "
    "ci95_low double, ci95_high double, users long, replicates int"
)


def variants_to_score(ctx: StageContext) -> DataFrame:
    """The (pipeline, context_mode, model) variants mined for the date, persisted; none is an
    error, or a skip with `eval.if_unmined=skip` (a scheduler evaluating a date before the job's
    first run)."""
    variants = mined_variants(ctx.warehouse, ctx.dt)
    if variants is not None:
        variants = variants.persist()
    if variants is None or variants.isEmpty():
        message = f"nothing mined for dt={ctx.dt}: run `python -m jobs.mine_intents run.dt={ctx.dt}` first"
        if str(ctx.cfg.eval.get("if_unmined", "fail")) == "skip":
            raise NothingToDo(message)
        raise RecGPTError(message)
    return variants


def metric_records(
    ctx: StageContext,
    variants: DataFrame,
    scored: DataFrame,
    per_variant: dict[Variant, dict[str, Any]],
    k: int,
    window: int,
    ci: dict[tuple[str, str, str], tuple[float, float]],
) -> pd.DataFrame:
    """The eval_metrics rows of every variant (recgpt.metrics.variant_metrics), from the scored
    users' means and the warehouse (catalog, co-visitation, failures, the LLM ledger), with the
    bootstrap intervals `ci` where a metric has one."""
    wh, dt = ctx.warehouse, ctx.dt
    catalog_size = wh.read_snapshot(ITEMS, dt).count()
    coverage, covisit = recalled_items(scored), covisit_items(wh, dt, k)
    tokens, failures = mining_tokens(wh, dt), failed_users(wh, dt)
    models = {(v["pipeline"], v["context_mode"]): str(v["model"]) for v in variants.collect()}
    records: list[dict[str, Any]] = []
    for key in sorted(models):
        values = variant_metrics(
            per_variant[key],
            k,
            failures.get(key, 0),
            tokens.get(key),
            coverage.get(key, 0),
            covisit,
            catalog_size,
        )
        records += [
            {"pipeline": key[0], "context_mode": key[1], "model": models[key], "metric": metric}
            | {"value": None if value is None else float(value), "users": int(n), "window_days": window}
            | dict(zip(("ci95_low", "ci95_high"), ci.get((*key, metric), (None, None)), strict=True))
            for metric, value, n in values
        ]
    return pd.DataFrame.from_records(records)


def run(ctx: StageContext) -> None:
    cfg = OmegaConf.to_container(ctx.cfg.eval, resolve=True)
    emb_cfg = OmegaConf.to_container(ctx.cfg.embedding, resolve=True)
    assert isinstance(cfg, dict) and isinstance(emb_cfg, dict)
    window, k = int(cfg["window_days"]), int(cfg["k"])
    if window <= 0:
        raise ConfigError(
            "eval.window_days must be > 0: set it (or data.holdout_days) to the days of behaviours "
            "ingested after dt"
        )
    wh, dt = ctx.warehouse, ctx.dt
    variants = variants_to_score(ctx)
    # Scored here and summarised for the report: read the behaviours once.
    lookback, history = int(ctx.cfg.compress.lookback_days), list(ctx.cfg.compress.keep_behaviors)
    rows = evaluation_rows(wh, dt, cfg, lookback, history).persist(StorageLevel.MEMORY_AND_DISK)
    # The popularity baseline's ranking: enough categories for any user's matched count.
    categories = item_categories(wh, dt.plus(window))
    popular = popular_categories(wh, dt, lookback, history, categories, k + 3)
    scored = score_users(rows, emb_cfg, k, int(cfg["category_items"]), popular).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    came_back = heldout_users(scored)
    if came_back == 0:
        raise RecGPTError(
            f"no interactions in the held-out window [{dt}, {dt.plus(window)}): ingest behaviours "
            "through it (data.ingest_until) or evaluate an older run date"
        )
    per_variant = variant_means(scored, mean_metrics(k))
    boot = Bootstrap(
        int(cfg["bootstrap"]["replicates"]), int(cfg["bootstrap"]["users"]), int(cfg["bootstrap"]["seed"])
    )
    values = bootstrap_values(scored, k, boot)
    metrics = metric_records(ctx, variants, scored, per_variant, k, window, intervals(values, k, boot))
    explained = explanation_metrics(wh, dt, int(cfg["explanation_pairs_per_item"]))
    judged = judge_metrics(wh, dt)
    for extra in (explained, judged):
        if not extra.empty:
            metrics = pd.concat([metrics, extra.assign(window_days=window)], ignore_index=True)
    written = wh.write(
        ctx.spark.createDataFrame(metrics, schema=EVAL_METRICS_SCHEMA),
        EVAL_METRICS,
        mode="replace",
        lineage=ctx.lineage,
    )
    paired = comparisons(values, k, boot)
    compared = wh.write(
        ctx.spark.createDataFrame(paired, schema=EVAL_COMPARISONS_SCHEMA),
        EVAL_COMPARISONS,
        mode="replace",
        lineage=ctx.lineage,
    )
    report_path = write_eval_report(ctx, rows, scored, metrics, paired, cfg, k)
    evaluated = int(scored.count())
    scored.unpersist()
    rows.unpersist()
    variants.unpersist()

    r = ctx.report
    r.rows_in, r.rows_out, r.rows_quarantined = evaluated, written.rows, 0
    r.wrote(EVAL_METRICS.name, written.rows, written.version)
    r.wrote(EVAL_COMPARISONS.name, compared.rows, compared.version)
    r.details["window"] = f"[{dt}, {dt.plus(window)}): {came_back:,} users with held-out interactions"
    for (pipeline, mode), agg in sorted(per_variant.items()):
        headline = (f"hr{k}", "exclusive_recall", "persona_recovery")
        r.details[f"{pipeline}/{mode}"] = ", ".join(
            f"{name} {agg[name]:.3f}" for name in headline if agg[name] is not None
        )
    r.details["report"] = str(report_path)


def write_eval_report(
    ctx: StageContext,
    rows: DataFrame,
    scored: DataFrame,
    metrics: pd.DataFrame,
    paired: pd.DataFrame,
    cfg: dict[str, Any],
    k: int,
) -> Path:
    """The HTML report: metrics of every variant, the tags of a sample of users, and the
    categories of the evaluated users' history and held-out interactions."""
    dt, window, sample_users = ctx.dt, int(cfg["window_days"]), int(cfg.get("report_users", 2000))
    tags = sample_tags(ctx.warehouse, dt, scored, sample_users)
    categories = item_categories(ctx.warehouse, dt.plus(window))
    history, held = category_counts(rows.dropDuplicates(["user_id"]), categories)
    data = ReportData(
        title=f"Offline evaluation · {ctx.cfg.data.source}",
        dt=dt.iso,
        run_id=ctx.lineage.run_id,
        metrics=metrics,
        comparisons=paired,
        tags=tags,
        explanations=explanation_samples(ctx.warehouse, dt, 10),
        judged=judged_samples(ctx.warehouse, dt),
        history_categories=history,
        heldout_categories=held,
        metric_docs=metric_docs(k),
        share_metrics=("novelty",),
        headline=(
            f"hr{k}",
            "exclusive_recall",
            f"recall_at_{k}_tags",
            f"recall_at_{k}_covisit",
            "persona_recovery",
        ),
        notes=(
            f"Held-out window: [{dt}, {dt.plus(window)}); interactions: " + ", ".join(cfg["behaviors"]),
            f"A tag's category is the most common category among its {cfg['category_items']} best "
            "recalled items (ties: larger summed cosine, then the better-ranked item).",
            "Users whose mining failed count as misses in HR, Recall and persona recovery.",
            f"Intervals: 95% percentile bootstrap over users ({cfg['bootstrap']['replicates']:,} "
            f"replicates, up to {cfg['bootstrap']['users']:,} users by a seeded hash); comparisons "
            "pair each user's two values.",
            f"Tag plots and samples: up to {sample_users:,} tagged users (seeded by user id hash).",
        ),
    )
    return write_report(Path(str(cfg["reports_dir"])) / f"dt={dt.iso}", data)


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
