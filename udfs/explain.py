"""Explanations inside Spark: one input row per (user, recommended item) — the first recalled item
of each of the user's best tags, with the item's facts and the situation of the user's region —
and the program the LLM-stage runner runs on a batch of them: one outcome row per pair, holding
every mode's explanation or failure."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recgpt.explain import metrics as M
from recgpt.explain.explainer import Explainer, ToExplain
from recgpt.explain.prompts import ItemFacts
from recgpt.explain.rules import ExplanationRules
from recgpt.explain.settings import ExplainSettings
from recgpt.llm.engine import Engine
from recgpt.rundate import RunDate
from recgpt.tables import (
    BEHAVIORS,
    EXPLANATION_FAILURES,
    ITEM_EXPLANATIONS,
    ITEMS,
    LLM_CALLS,
    TAG_RECALL,
    USER_INTENT_TAGS,
    USERS,
)
from sparkio.warehouse import Warehouse
from sparkio.worker import per_process
from udfs.llm import LLMStage, Outcome
from udfs.mining import SITUATION_COLUMNS, situations

EXPLANATION = pa.struct(
    [
        pa.field("mode", pa.string()),
        pa.field("style_guide", pa.string()),
        pa.field("explanation", pa.string()),
        pa.field("failure_step", pa.string()),
        pa.field("failure_reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("rejected", pa.string()),
    ]
)
# A pair's outcome as the program's columns; the runner adds key, user_id, error, calls, model.
EXPLAINED = pa.schema(
    [
        pa.field("tag_rank", pa.int32()),
        pa.field("tag", pa.string()),
        pa.field("item_id", pa.string()),
        pa.field("explanations", pa.list_(EXPLANATION)),
    ]
)
ITEM_COLUMNS = ("title", "category", "category_path", "brand", "price")


def explain_inputs(
    spark: SparkSession,
    wh: Warehouse,
    dt: RunDate,
    variant: Column,
    items_per_user: int,
    sample_users: int | None,
    seed: int,
    calendar_cfg: Mapping[str, Any],
    recent_days: int,
) -> DataFrame:
    """One row per (user, item) to explain: for each of the user's `items_per_user` best tags
    of the variant, the tag's first recalled item; an item two tags recalled first is explained
    once, for the better tag. `sample_users`: a seeded sample of that many users (null: all).
    `recent_title`: the user's recent item of the same category (`recent_titles`)."""
    tags = (
        wh.read(USER_INTENT_TAGS, dt=dt)
        .where(variant & (F.col("rank") <= items_per_user))
        .select("user_id", F.col("rank").alias("tag_rank"), "tag", "persona")
    )
    first = (
        wh.read(TAG_RECALL, dt=dt)
        .where(variant & (F.col("rank") == 1))
        .select("user_id", "tag_rank", "item_id")
    )
    once = Window.partitionBy("user_id", "item_id").orderBy("tag_rank")
    pairs = (
        tags.join(first, ["user_id", "tag_rank"])
        .withColumn("_n", F.row_number().over(once))
        .where(F.col("_n") == 1)
        .drop("_n")
    )
    if sample_users is not None:
        users = (
            pairs.select("user_id")
            .distinct()
            .orderBy(F.xxhash64("user_id", F.lit(seed)), "user_id")
            .limit(int(sample_users))
        )
        pairs = pairs.join(users, "user_id", "left_semi")
    items = item_facts(wh.read_snapshot(ITEMS, dt))
    regions = (
        wh.read_snapshot(USERS, dt).select("user_id", "region")
        if wh.exists(USERS)
        else spark.createDataFrame([], "user_id string, region string")
    )
    situation = situations(spark, wh, dt, calendar_cfg)
    pairs = pairs.join(items, "item_id", "left")
    recent = recent_titles(wh, dt, pairs.select("user_id", "item_id", "category"), recent_days)
    return (
        pairs.join(recent, ["user_id", "item_id"], "left")
        .join(regions, "user_id", "left")
        .join(F.broadcast(situation), "region", "left")
        .select(
            F.concat_ws("#", "user_id", F.col("tag_rank").cast("string")).alias("key"),
            "user_id",
            F.col("tag_rank").cast("int").alias("tag_rank"),
            "tag",
            "persona",
            "item_id",
            *ITEM_COLUMNS,
            "recent_title",
            *SITUATION_COLUMNS,
        )
    )


def item_facts(items: DataFrame) -> DataFrame:
    """item_id and the facts an explanation may state (`ITEM_COLUMNS`; null where the catalog
    has no such column)."""
    return items.select(
        "item_id", *[F.col(c) if c in items.columns else F.lit(None).alias(c) for c in ITEM_COLUMNS]
    )


def recent_titles(wh: Warehouse, dt: RunDate, pairs: DataFrame, days: int) -> DataFrame:
    """user_id, item_id, recent_title: for each (user, recommended item) of `pairs` (user_id,
    item_id, category), the title (catalog as of dt) of the user's newest behaviour on another
    item of the same category in the `days` before dt, ties by item id; a pair without one, or
    `days` 0, has none. The explain stage shows it to the model and the judge checks the line
    against the same title."""
    schema = "user_id string, item_id string, recent_title string"
    if days <= 0:
        return pairs.sparkSession.createDataFrame([], schema)
    since = dt.minus(days)
    catalog = wh.read_snapshot(ITEMS, dt).select(
        F.col("item_id").alias("recent_id"), "category", F.col("title").alias("recent_title")
    )
    chosen = (
        wh.read(BEHAVIORS, dt_from=since, dt_to=dt)
        .where(
            F.col("item_id").isNotNull()
            & (F.col("ts") < F.lit(dt.iso).cast("timestamp"))
            & (F.col("ts") >= F.lit(since.iso).cast("timestamp"))
        )
        .join(pairs.select("user_id").distinct(), "user_id", "left_semi")
        .select("user_id", F.col("item_id").alias("recent_id"), "ts")
        .join(catalog, "recent_id")
    )
    newest = Window.partitionBy("user_id", "item_id").orderBy(F.col("ts").desc(), "recent_id")
    return (
        pairs.join(chosen, ["user_id", "category"])
        .where(F.col("recent_id") != F.col("item_id"))
        .withColumn("_n", F.row_number().over(newest))
        .where(F.col("_n") == 1)
        .select("user_id", "item_id", "recent_title")
    )


def pair_input(row: Mapping[str, Any]) -> ToExplain:
    """What the explainer reads about one pair; an item missing from the catalog snapshot (no
    title) raises ValueError and the pair becomes an error row."""
    if not row.get("title") or not row.get("category"):
        raise ValueError(
            f"item {row.get('item_id')!r} has no title or category in the catalog as of the date"
        )
    price = row.get("price")
    item = ItemFacts(
        item_id=str(row["item_id"]),
        title=str(row["title"]),
        category=str(row["category"]),
        category_path=row.get("category_path"),
        brand=row.get("brand"),
        price=float(price) if price is not None and math.isfinite(float(price)) else None,
    )
    return ToExplain(
        key=str(row["key"]),
        user_id=str(row["user_id"]),
        tag=str(row["tag"]),
        item=item,
        situation={c: row.get(c) for c in SITUATION_COLUMNS},
        persona=row.get("persona"),
        recent=row.get("recent_title"),
    )


# Per Python worker: the rules of a run (brands, echo phrases), built once and reused.
_RULES: dict[str, ExplanationRules] = {}


class ExplainProgram:
    def __init__(self, plan: ExplainPlan, engine: Engine) -> None:
        settings = ExplainSettings.from_config(plan.explain, plan.mode)
        key = json.dumps([plan.explain, plan.mode, sorted(plan.brands)], sort_keys=True, default=str)
        rules = per_process(_RULES, key, lambda: ExplanationRules.for_run(settings, plan.brands))
        self.explainer = Explainer(engine, settings, rules)

    def prepare(self, row: Mapping[str, Any]) -> tuple[ToExplain, int]:
        return pair_input(row), int(row["tag_rank"])

    def run(self, prepared: Sequence[tuple[ToExplain, int]]) -> list[Outcome]:
        pairs = [p for p, _ in prepared]
        return [
            Outcome(
                e.key,
                e.user_id,
                {
                    "tag_rank": rank,
                    "tag": pair.tag,
                    "item_id": pair.item.item_id,
                    "explanations": [
                        {
                            "mode": x.mode,
                            "style_guide": x.style_guide,
                            "explanation": x.text,
                            "failure_step": x.failure_step,
                            "failure_reason": x.failure_reason,
                            "detail": x.detail,
                            "rejected": x.rejected,
                        }
                        for x in e.explanations
                    ],
                },
                e.calls,
            )
            for e, pair, rank in zip(
                self.explainer.explain(pairs), pairs, (r for _, r in prepared), strict=True
            )
        ]


@dataclass(frozen=True)
class ExplainPlan:
    """Everything a worker needs to explain pairs, as plain picklable values."""

    explain: Mapping[str, Any]  # the `explain` config group
    mode: str  # the pipeline's own explanation mode
    brands: Sequence[str]  # the catalog's brands as of the date

    def __call__(self, engine: Engine) -> ExplainProgram:
        return ExplainProgram(self, engine)


def explain_stage(plan: ExplainPlan, llm_cfg: Mapping[str, Any], variant: Mapping[str, str]) -> LLMStage:
    partitions = plan.explain.get("partitions")
    return LLMStage(
        name=f"explain.{variant['pipeline']}.{variant['context_mode']}",
        llm=dict(llm_cfg),
        columns=EXPLAINED,
        build=plan,
        batch_rows=int(plan.explain["batch_rows"]),
        key="key",
        partitions=int(partitions) if partitions else None,
    )


def explode_explained(outcomes: DataFrame, made_by: Mapping[str, str]) -> tuple[DataFrame, DataFrame]:
    """(item_explanations rows, explanation_failures rows) without dt/run_id/created_at. A pair
    the runner could not prepare (an `error` row) fails at step `input` in every mode."""
    by = [F.lit(v).alias(k) for k, v in made_by.items()]
    model = F.coalesce(F.col("model"), F.lit("unknown")).alias("model")
    rows = outcomes.select(
        "user_id",
        "tag_rank",
        "tag",
        "item_id",
        "error",
        model,
        *by,
        F.explode_outer("explanations").alias("x"),
    )
    written = rows.where(F.col("x.explanation").isNotNull()).select(
        "user_id",
        "tag_rank",
        "tag",
        "item_id",
        F.col("x.mode").alias("explanation_mode"),
        F.col("x.style_guide").alias("style_guide"),
        F.col("x.explanation").alias("explanation"),
        F.size(F.split(F.trim(F.col("x.explanation")), r"\s+")).cast("int").alias("words"),
        "model",
        *made_by,
    )
    failed = rows.where(F.col("x.explanation").isNull()).select(
        "user_id",
        "tag_rank",
        "tag",
        "item_id",
        F.coalesce(F.col("x.mode"), F.lit("all")).alias("explanation_mode"),
        F.coalesce(F.col("x.failure_step"), F.lit("input")).alias("step"),
        F.coalesce(F.col("x.failure_reason"), F.col("error"), F.lit("no_output")).alias("reason"),
        F.col("x.detail").alias("detail"),
        F.col("x.rejected").alias("text"),
        "model",
        *made_by,
    )
    return written, failed


def explanation_metrics(wh: Warehouse, dt: RunDate, max_per_item: int) -> pd.DataFrame:
    """eval_metrics rows (pipeline, context_mode, model, metric, value, users) of the date's
    explanations per variant and mode: pass rate, mean words, diversity (of the written lines,
    and of every line the model wrote, rejected ones included) and distinct-1/2
    (`recgpt.explain.metrics`, over at most `max_per_item` users per item), and the prompt plus
    generated tokens, engine seconds and LLM calls (retries included) per attempted explanation
    (from the `llm_calls` ledger).
    `users` is the number of explanations a value is over. Empty when nothing was explained."""
    columns = ["pipeline", "context_mode", "model", "metric", "value", "users"]
    if not wh.exists(ITEM_EXPLANATIONS):
        return pd.DataFrame(columns=columns)
    keys = ["pipeline", "context_mode", "explanation_mode"]
    written = wh.read(ITEM_EXPLANATIONS, dt=dt)
    failed = wh.read(EXPLANATION_FAILURES, dt=dt) if wh.exists(EXPLANATION_FAILURES) else None
    ok = {
        (r.pipeline, r.context_mode, r.explanation_mode): (r.n, r.model)
        for r in written.groupBy(*keys)
        .agg(F.count("*").alias("n"), F.first("model").alias("model"))
        .collect()
    }
    bad: dict[tuple[str, str, str], int] = {}
    if failed is not None:
        for r in failed.groupBy(*keys).count().collect():
            bad[(r.pipeline, r.context_mode, r.explanation_mode)] = r["count"]
    lines_written = written.select(*keys, "item_id", "user_id", F.col("explanation").alias("text"))
    texts = _texts_by_item(lines_written, max_per_item)
    # Every line the model wrote, rules passed or not: the prompting method's own diversity.
    generated = lines_written
    if failed is not None:
        rejected = failed.where(F.col("text").isNotNull()).select(*keys, "item_id", "user_id", "text")
        generated = generated.unionByName(rejected)
    all_texts = _texts_by_item(generated, max_per_item)
    costs = _explanation_costs(wh, dt)
    rows = []
    for key in sorted({*ok, *(k for k in bad if k[2] != "all")}):
        pipeline, context_mode, mode = key
        n_ok, model = ok.get(key, (0, None))
        attempted = n_ok + bad.get(key, 0) + bad.get((pipeline, context_mode, "all"), 0)
        sample = texts.get(key, [])
        lines = [t for _, _, t in sample]
        value, pairs = M.diversity(sample, max_per_item)
        value_all, pairs_all = M.diversity(all_texts.get(key, []), max_per_item)
        figures = [
            ("pass_rate", n_ok / attempted if attempted else None, attempted),
            ("words", M.mean_words(lines), len(lines)),
            ("diversity", value, pairs),
            ("diversity_all", value_all, pairs_all),
            ("distinct1", M.distinct_n(lines, 1), len(lines)),
            ("distinct2", M.distinct_n(lines, 2), len(lines)),
        ]
        if mode in costs.get((pipeline, context_mode), {}):
            tokens, seconds, n_calls = costs[(pipeline, context_mode)][mode]
            figures += [
                ("tokens", tokens / attempted, attempted),
                ("seconds", seconds / attempted, attempted),
                ("calls", n_calls / attempted, attempted),
            ]
        model = model or "none"
        rows += [(pipeline, context_mode, model, f"explain_{name}_{mode}", v, n) for name, v, n in figures]
    return pd.DataFrame.from_records(rows, columns=columns)


def _texts_by_item(
    lines: DataFrame, max_per_item: int
) -> dict[tuple[str, str, str], list[tuple[str, str, str]]]:
    """(item_id, user_id, text) per (pipeline, context_mode, mode), at most `max_per_item` users
    per item (the first by user id)."""
    keys = ["pipeline", "context_mode", "explanation_mode"]
    per_item = Window.partitionBy(*keys, "item_id").orderBy("user_id")
    out: dict[tuple[str, str, str], list[tuple[str, str, str]]] = {}
    rows = lines.withColumn("_n", F.row_number().over(per_item)).where(F.col("_n") <= max_per_item).collect()
    for r in rows:
        out.setdefault((r.pipeline, r.context_mode, r.explanation_mode), []).append(
            (r.item_id, r.user_id, r.text)
        )
    return out


def _explanation_costs(
    wh: Warehouse, dt: RunDate
) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    """Per explained variant and mode: prompt plus generated tokens, engine seconds and the
    number of its calls, retries included (a meta line costs its style calls too)."""
    if not wh.exists(LLM_CALLS):
        return {}
    step = F.element_at(F.split("request_key", ":"), -1)
    calls = (
        wh.read(LLM_CALLS, dt=dt)
        .where(F.col("stage").startswith("explain."))
        .withColumn("mode", F.when(step == "style", F.lit("meta")).otherwise(step))
        .groupBy("stage", "mode")
        .agg(
            F.sum(F.col("prompt_tokens") + F.col("generated_tokens")).alias("tokens"),
            F.sum("latency_ms").alias("ms"),
            F.count("*").alias("calls"),
        )
        .collect()
    )
    out: dict[tuple[str, str], dict[str, tuple[float, float, int]]] = {}
    for r in calls:
        _, pipeline, context_mode = r.stage.split(".", 2)
        out.setdefault((pipeline, context_mode), {})[r.mode] = (
            float(r.tokens or 0),
            float(r.ms or 0) / 1000,
            int(r.calls),
        )
    return out


def explanation_samples(wh: Warehouse, dt: RunDate, users: int) -> pd.DataFrame | None:
    """The report's side-by-side sample: every mode's line (or failure reason) for the pairs of
    `users` users (the first by a hash of the id), per explained variant."""
    if not wh.exists(ITEM_EXPLANATIONS):
        return None
    keys = ["pipeline", "context_mode", "user_id", "tag_rank", "tag", "item_id", "explanation_mode"]
    written = wh.read(ITEM_EXPLANATIONS, dt=dt).select(
        *keys, "explanation", "style_guide", F.lit(None).alias("reason")
    )
    if wh.exists(EXPLANATION_FAILURES):
        failed = (
            wh.read(EXPLANATION_FAILURES, dt=dt)
            .where(F.col("explanation_mode") != "all")
            .select(*keys, F.lit(None).alias("explanation"), F.lit(None).alias("style_guide"), "reason")
        )
        written = written.unionByName(failed)
    chosen = written.select("user_id").distinct().orderBy(F.xxhash64("user_id"), "user_id").limit(users)
    return written.join(chosen, "user_id", "left_semi").toPandas()
