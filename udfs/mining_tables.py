"""mine_intents' outcome rows as its tables: personas, ranked tags and failures per user, with what
a resumed run keeps from the tables of an earlier one, and the figures of the stage summary
(tokens per user, duplicate rate, validation rejections)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from recgpt.errors import RecGPTError
from recgpt.rundate import RunDate
from recgpt.tables import MINING_FAILURES, USER_INTENT_TAGS, USER_PERSONAS, TableSpec
from sparkio.warehouse import Warehouse

TABLES: dict[str, TableSpec] = {
    "personas": USER_PERSONAS,
    "tags": USER_INTENT_TAGS,
    "failures": MINING_FAILURES,
}
LINEAGE = ("dt", "run_id", "created_at")


def explode_outcomes(outcomes: DataFrame, mined_by: Mapping[str, str]) -> dict[str, DataFrame]:
    """The stage's tables (without dt/run_id/created_at) from outcome rows. A user the runner
    could not prepare (an `error` row) is a failure at step `input` with the runner's reason."""
    by = [F.lit(v).alias(k) for k, v in mined_by.items()]
    model = F.coalesce(F.col("model"), F.lit("unknown")).alias("model")
    personas = outcomes.select("user_id", F.posexplode("personas").alias("pos", "p"), model, *by).select(
        "user_id",
        (F.col("pos") + 1).cast("int").alias("persona_rank"),
        F.col("p.name").alias("name"),
        F.col("p.description").alias("description"),
        F.col("p.evidence").alias("evidence"),
        F.col("p.signals").alias("signals"),
        "model",
        *mined_by,
    )
    tags = outcomes.select("user_id", F.explode("tags").alias("t"), model, *by).select(
        "user_id",
        "t.rank",
        "t.tag",
        "t.persona",
        "t.score",
        "t.reason",
        "t.evidence_item_ids",
        "model",
        *mined_by,
    )
    failures = outcomes.where(F.col("failure_step").isNotNull() | F.col("error").isNotNull()).select(
        "user_id",
        F.coalesce("failure_step", F.lit("input")).alias("step"),
        F.coalesce("failure_reason", "error").alias("reason"),
        "rejected",
        "failed_calls",
        model,
        *by,
    )
    return {"personas": personas, "tags": tags, "failures": failures}


def variant_rows(wh: Warehouse, spec: TableSpec, dt: RunDate, variant: Mapping[str, str]) -> DataFrame:
    rows = wh.read(spec, dt=dt)
    for column, value in variant.items():
        rows = rows.where(F.col(column) == value)
    return rows


def refuse_other_model(
    wh: Warehouse, dt: RunDate, variant: Mapping[str, str], settings: Mapping[str, Any]
) -> None:
    """A resume may not add users mined by another model or prompt version to the date's tags."""
    if not wh.exists(USER_INTENT_TAGS):
        return
    mixed = (
        variant_rows(wh, USER_INTENT_TAGS, dt, variant)
        .where(
            (F.col("model") != settings["model"]) | (F.col("prompt_version") != settings["prompt_version"])
        )
        .select("model", "prompt_version")
        .distinct()
        .collect()
    )
    if mixed:
        found = ", ".join(f"{r.model} / {r.prompt_version}" for r in mixed)
        raise RecGPTError(
            f"resume=true, but user_intent_tags for {dt} holds tags of {found}, not "
            f"{settings['model']} / {settings['prompt_version']}: rerun without resume"
        )


def kept_rows(
    wh: Warehouse, dt: RunDate, variant: Mapping[str, str], staged: DataFrame | None
) -> dict[str, DataFrame]:
    """On resume, the rows an earlier final write left in the tables, except those of users whose
    outcome is staged (staged outcomes win). Persisted: the tables are replaced later."""
    kept = {}
    for key, spec in TABLES.items():
        if wh.exists(spec):
            rows = variant_rows(wh, spec, dt, variant)
            if staged is not None:
                rows = rows.join(staged.select("user_id"), "user_id", "left_anti")
            kept[key] = rows.persist(StorageLevel.MEMORY_AND_DISK)
    return kept


def done_users(spark: SparkSession, staged: DataFrame | None, kept: Mapping[str, DataFrame]) -> DataFrame:
    """Users whose outcome already exists: in a finished wave (`staged`), or in the tables (tags or
    failure)."""
    done = staged.select("user_id") if staged is not None else spark.createDataFrame([], "user_id string")
    for key in ("tags", "failures"):
        if key in kept:
            done = done.unionByName(kept[key].select("user_id"))
    return done.distinct()


def table_rows(spark: SparkSession, spec: TableSpec, frames: list[DataFrame | None]) -> DataFrame:
    """The union of the non-empty `frames` in the table's column order (lineage left out)."""
    columns = [c for c in spec.column_names if c not in LINEAGE]
    present = [f.select(*columns) for f in frames if f is not None]
    data = (
        present[0] if present else spark.createDataFrame([], from_arrow_schema(spec.schema)).select(*columns)
    )
    for extra in present[1:]:
        data = data.unionByName(extra)
    return data


def summary_figures(outcomes: DataFrame) -> dict[str, Any]:
    """Tokens per user, proposed tags, duplicate rate, validation rejections, V2's fallbacks and
    the failed calls of outcome rows (a user's tokens summed over its rows)."""
    totals = outcomes.select(
        F.countDistinct("user_id").alias("users"),  # a rescued user has two outcome rows
        F.sum("proposed").alias("proposed"),
        F.sum("duplicates").alias("dups"),
        F.sum(F.aggregate("calls", F.lit(0).cast("long"), lambda a, c: a + c["prompt_tokens"])).alias(
            "prompt"
        ),
        F.sum(F.aggregate("calls", F.lit(0).cast("long"), lambda a, c: a + c["generated_tokens"])).alias(
            "gen"
        ),
    ).first()
    assert totals is not None
    users = max(int(totals["users"]), 1)
    proposed = int(totals["proposed"] or 0)
    figures: dict[str, Any] = {
        "tokens": (
            f"per user: {int(totals['prompt'] or 0) / users:,.0f} prompt + "
            f"{int(totals['gen'] or 0) / users:,.0f} generated"
        ),
        "duplicate_rate": round(int(totals["dups"] or 0) / max(proposed, 1), 4),
        "proposed_tags": proposed,
    }
    for column in ("rejected", "fallbacks", "failed_calls"):
        counts = json_counts(outcomes, column)
        if counts:
            figures[column] = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
    examples = rejected_examples(outcomes)
    if examples:
        figures["rejected_examples"] = "; ".join(
            f"{code}: " + ", ".join(f'"{text}" {n:,}' for text, n in found)
            for code, found in sorted(examples.items())
        )
    return figures


def rejected_examples(outcomes: DataFrame, per_rule: int = 3) -> dict[str, list[tuple[str, int]]]:
    """Per rejection rule, the `per_rule` examples most users' outcomes kept (ties by text),
    with how many: ranked in Spark, the driver receives at most `per_rule` rows a rule."""
    counted = (
        outcomes.where(F.col("rejected_examples").isNotNull())
        .select(
            F.explode(F.from_json("rejected_examples", "map<string,array<string>>")).alias("code", "texts")
        )
        .select("code", F.explode("texts").alias("text"))
        .groupBy("code", "text")
        .count()
    )
    ranked = counted.withColumn(
        "n", F.row_number().over(Window.partitionBy("code").orderBy(F.col("count").desc(), F.col("text")))
    ).where(F.col("n") <= per_rule)
    out: dict[str, list[tuple[str, int]]] = {}
    for r in ranked.orderBy("code", "n").collect():
        out.setdefault(str(r.code), []).append((str(r.text), int(r["count"])))
    return out


def json_counts(outcomes: DataFrame, column: str) -> dict[str, int]:
    """The sum over outcome rows of a column of JSON counts ({"code": n}), added up in Spark:
    the driver receives one row per code, never one per user."""
    totals = (
        outcomes.where(F.col(column).isNotNull())
        .select(F.explode(F.from_json(column, "map<string,int>")).alias("code", "n"))
        .groupBy("code")
        .agg(F.sum("n").alias("n"))
        .collect()
    )
    return {str(r.code): int(r.n) for r in totals}


def user_counts(wh: Warehouse, dt: RunDate, variant: Mapping[str, str]) -> tuple[int, int]:
    """(users tagged, users failed) in the date's tables for the variant."""
    tagged = variant_rows(wh, USER_INTENT_TAGS, dt, variant).select("user_id").distinct().count()
    failed = variant_rows(wh, MINING_FAILURES, dt, variant).count()
    return tagged, failed


def sample_line(wh: Warehouse, dt: RunDate, variant: Mapping[str, str], n_tags: int) -> str | None:
    """One user's tags for the summary (the first user may have fewer than N)."""
    sample = (
        variant_rows(wh, USER_INTENT_TAGS, dt, variant).orderBy("user_id", "rank").limit(n_tags).collect()
    )
    if not sample:
        return None
    shown = "; ".join(f"{r.rank}. {r.tag} ({r.persona})" for r in sample if r.user_id == sample[0].user_id)
    return f"{sample[0].user_id}: {shown}"
