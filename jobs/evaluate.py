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
from pyspark.sql import functions as F

from jobs.stage import StageContext, main_for
from recgpt.errors import ConfigError, NothingToDo, RecGPTError
from recgpt.report import ReportData, write_report
from recgpt.tables import EVAL_METRICS, LLM_CALLS, MINING_FAILURES, USER_INTENT_TAGS
from udfs.evaluate import category_counts, day_after, evaluation_rows, score_users

STAGE = "evaluate"
VARIANT = ["pipeline", "context_mode"]


def metric_docs(k: int) -> dict[str, str]:
    """One-line definitions, shown in the report (the README has the long form)."""
    return {
        f"hr{k}": f"users whose first held-out interaction's category is a category of their top-{k} tags",
        f"recall_at_{k}_tags": (
            f"held-out items among the user's {k} tag-recall items (round robin over tags)"
        ),
        f"recall_at_{k}_covisit": f"held-out items among the user's {k} co-visitation items",
        "exclusive_recall": f"held-out items in the tag channel's {k} and not in co-visitation's {k}",
        "persona_recovery": "planted personas sharing a category with one of the user's tags (synthetic)",
        "diversity": "mean pairwise cosine distance of the user's tag embeddings",
        "novelty": "share of the user's tag categories absent from the history",
        "catalog_coverage_tags": "catalog items in at least one user's tag-recall list",
        "catalog_coverage_covisit": "catalog items in at least one user's co-visitation list",
        "failure_rate": "mined users that ended in mining_failures",
        "tokens_per_user": "LLM prompt + generated tokens per mined user (llm_calls)",
        "tagged_users": "users with final tags",
        "heldout_users": "users with an interaction in the held-out window",
    }


def _variants(ctx: StageContext) -> DataFrame:
    """The (pipeline, context_mode, model) variants mined for the date; none is an error, or a
    skip with `eval.if_unmined=skip` (a scheduler evaluating a date before the job's first run)."""
    wh, dt = ctx.warehouse, ctx.dt
    frames = [
        wh.read(spec, dt=dt).select(*VARIANT, "model")
        for spec in (USER_INTENT_TAGS, MINING_FAILURES)
        if wh.exists(spec)
    ]
    variants = None
    if frames:
        variants = frames[0]
        for frame in frames[1:]:
            variants = variants.unionByName(frame)
        variants = variants.groupBy(*VARIANT).agg(F.first("model").alias("model")).persist()
    if variants is None or variants.isEmpty():
        message = f"nothing mined for dt={dt}: run `python -m jobs.mine_intents run.dt={dt}` first"
        if str(ctx.cfg.eval.get("if_unmined", "fail")) == "skip":
            raise NothingToDo(message)
        raise RecGPTError(message)
    return variants


def _ledger_tokens(ctx: StageContext) -> dict[tuple[str, str], int]:
    if not ctx.warehouse.exists(LLM_CALLS):
        return {}
    rows = (
        ctx.warehouse.read(LLM_CALLS, dt=ctx.dt)
        .where(F.col("stage").startswith("mine_intents."))
        .groupBy("stage")
        .agg(F.sum(F.col("prompt_tokens") + F.col("generated_tokens")).alias("tokens"))
        .collect()
    )
    out = {}
    for r in rows:
        _, pipeline, mode = str(r["stage"]).split(".", 2)
        out[(pipeline, mode)] = int(r["tokens"] or 0)
    return out


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
    variants = _variants(ctx)
    # Scored here and summarised for the report: read the behaviours once.
    rows = evaluation_rows(
        wh,
        dt,
        cfg,
        int(ctx.cfg.compress.lookback_days),
        list(ctx.cfg.compress.keep_behaviors),
    ).persist(StorageLevel.MEMORY_AND_DISK)
    scored = score_users(rows, emb_cfg, k, int(cfg["category_items"])).persist(StorageLevel.MEMORY_AND_DISK)
    heldout_users = scored.where(F.col("recall_tags").isNotNull()).select("user_id").distinct().count()
    if heldout_users == 0:
        raise RecGPTError(
            f"no interactions in the held-out window [{dt}, {day_after(dt, window)}): ingest behaviours "
            "through it (data.ingest_until) or evaluate an older run date"
        )

    means = [
        (f"hr{k}", "hr"),
        (f"recall_at_{k}_tags", "recall_tags"),
        (f"recall_at_{k}_covisit", "recall_covisit"),
        ("exclusive_recall", "exclusive_recall"),
        ("persona_recovery", "persona_recovery"),
        ("diversity", "diversity"),
        ("novelty", "novelty"),
    ]
    aggs = []
    for name, column in means:
        aggs += [F.avg(column).alias(name), F.count(column).alias(f"{name}__n")]
    per_variant = {
        (r["pipeline"], r["context_mode"]): r.asDict()
        for r in scored.groupBy(*VARIANT)
        .agg(*aggs, F.sum(F.col("tagged").cast("int")).alias("tagged"), F.count("*").alias("users"))
        .collect()
    }
    catalog_size = wh.read_snapshot("items", dt).count()
    coverage = {
        (r["pipeline"], r["context_mode"]): int(r["items"])
        for r in scored.select(*VARIANT, F.explode("recalled").alias("item_id"))
        .groupBy(*VARIANT)
        .agg(F.countDistinct("item_id").alias("items"))
        .collect()
    }
    covisit_items = _covisit_items(ctx, k)
    tokens = _ledger_tokens(ctx)
    failures = (
        {
            (r["pipeline"], r["context_mode"]): int(r["n"])
            for r in wh.read(MINING_FAILURES, dt=dt).groupBy(*VARIANT).agg(F.count("*").alias("n")).collect()
        }
        if wh.exists(MINING_FAILURES)
        else {}
    )

    records: list[dict[str, Any]] = []
    models = {(v["pipeline"], v["context_mode"]): str(v["model"]) for v in variants.collect()}
    for key in sorted(models):
        agg = per_variant[key]
        users, tagged, failed = int(agg["users"]), int(agg["tagged"]), failures.get(key, 0)
        mined = tagged + failed
        values: list[tuple[str, float | None, int]] = [
            (name, agg[name], agg[f"{name}__n"]) for name, _ in means
        ]
        values += [
            ("catalog_coverage_tags", coverage.get(key, 0) / max(catalog_size, 1), users),
            ("catalog_coverage_covisit", covisit_items / max(catalog_size, 1), users),
            ("failure_rate", failed / mined if mined else None, mined),
            ("tokens_per_user", tokens[key] / mined if key in tokens and mined else None, mined),
            ("tagged_users", tagged, users),
            ("heldout_users", agg[f"recall_at_{k}_tags__n"], users),
        ]
        records += [
            {"pipeline": key[0], "context_mode": key[1], "model": models[key], "metric": metric}
            | {"value": None if value is None else float(value), "users": int(n), "window_days": window}
            for metric, value, n in values
        ]

    metrics = pd.DataFrame.from_records(records)
    written = wh.write(
        ctx.spark.createDataFrame(
            metrics,
            schema="pipeline string, context_mode string, model string, "
            "metric string, value double, users long, window_days int",
        ),
        EVAL_METRICS,
        mode="replace",
        lineage=ctx.lineage,
    )
    report_path = _report(ctx, rows, scored, metrics, cfg, k)
    scored.unpersist()
    rows.unpersist()
    variants.unpersist()

    r = ctx.report
    r.rows_in, r.rows_out, r.rows_quarantined = int(scored.count()), written.rows, 0
    r.wrote(EVAL_METRICS.name, written.rows, written.version)
    r.details["window"] = (
        f"[{dt}, {day_after(dt, window)}): {heldout_users:,} users with held-out interactions"
    )
    for (pipeline, mode), agg in sorted(per_variant.items()):
        shown = ", ".join(
            f"{name} {agg[name]:.3f}"
            for name in (f"hr{k}", "exclusive_recall", "persona_recovery")
            if agg[name] is not None
        )
        r.details[f"{pipeline}/{mode}"] = shown
    r.details["report"] = str(report_path)


def _covisit_items(ctx: StageContext, k: int) -> int:
    if not ctx.warehouse.exists("covisit_recall"):
        return 0
    return (
        ctx.warehouse.read("covisit_recall", dt=ctx.dt)
        .where(F.col("rank") <= k)
        .select("item_id")
        .distinct()
        .count()
    )


def _report(
    ctx: StageContext, rows: DataFrame, scored: DataFrame, metrics: pd.DataFrame, cfg: dict[str, Any], k: int
) -> Path:
    """The HTML report: metrics of every variant, the tags of a sample of users, and the
    categories of the evaluated users' history and held-out interactions."""
    wh, dt = ctx.warehouse, ctx.dt
    sample_users = int(cfg.get("report_users", 2000))
    sample = (
        scored.where(F.col("tagged"))
        .select("user_id")
        .distinct()
        .orderBy(F.xxhash64("user_id"))
        .limit(sample_users)
    )
    tags = (
        wh.read(USER_INTENT_TAGS, dt=dt)
        .join(sample, "user_id")
        .join(scored.select(*VARIANT, "user_id", "tag_categories"), [*VARIANT, "user_id"])
        .select(
            *VARIANT,
            "user_id",
            "rank",
            "tag",
            F.element_at("tag_categories", F.col("rank")).alias("category"),
        )
        .toPandas()
    )
    categories = wh.read_snapshot("items", day_after(dt, int(cfg["window_days"]))).select(
        "item_id", "category"
    )
    history, held = category_counts(rows.dropDuplicates(["user_id"]), categories)
    data = ReportData(
        title=f"Offline evaluation · {ctx.cfg.data.source}",
        dt=dt,
        run_id=ctx.lineage.run_id,
        metrics=metrics,
        tags=tags,
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
            f"Held-out window: [{dt}, {day_after(dt, int(cfg['window_days']))}); interactions: "
            + ", ".join(cfg["behaviors"]),
            f"A tag's category is the most common category among its {cfg['category_items']} best "
            "recalled items (ties: larger summed cosine, then the better-ranked item).",
            "Users whose mining failed count as misses in HR, Recall and persona recovery.",
            f"Tag plots and samples: up to {sample_users:,} tagged users (seeded by user id hash).",
        ),
    )
    return write_report(Path(str(cfg["reports_dir"])) / f"dt={dt}", data)


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
