"""Offline evaluation inside Spark: one row per (pipeline variant, user) with the user's tags and
their recalled items, what the user did in the held-out window, the history's categories, the
planted personas and the co-visitation list; a mapInArrow scores each row with recgpt.metrics."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from recgpt.metrics import user_metrics
from recgpt.tables import BEHAVIORS, MINING_FAILURES, PLANTED_PERSONAS, TAG_RECALL, USER_INTENT_TAGS
from udfs.embeddings import embedder_for
from udfs.warehouse import Warehouse

SCORED = pa.schema(
    [
        pa.field("pipeline", pa.string()),
        pa.field("context_mode", pa.string()),
        pa.field("user_id", pa.string()),
        pa.field("tagged", pa.bool_()),
        pa.field("hr", pa.float64()),
        pa.field("recall_tags", pa.float64()),
        pa.field("recall_covisit", pa.float64()),
        pa.field("exclusive_recall", pa.float64()),
        pa.field("diversity", pa.float64()),
        pa.field("novelty", pa.float64()),
        pa.field("persona_recovery", pa.float64()),
        pa.field("tag_categories", pa.list_(pa.string())),
        pa.field("recalled", pa.list_(pa.string())),
    ]
)


def day_after(dt: str, days: int) -> str:
    return (_dt.date.fromisoformat(dt) + _dt.timedelta(days=days)).isoformat()


def heldout(
    wh: Warehouse, dt: str, window_days: int, behaviors: Sequence[str], categories: DataFrame
) -> DataFrame:
    """Per user with item interactions on [dt, dt + window_days): the distinct items and the
    category of the first interaction (earliest ts, then smallest item id)."""
    end = day_after(dt, window_days)
    events = (
        wh.read(BEHAVIORS, dt_from=dt, dt_to=day_after(dt, window_days - 1))
        .where(
            F.col("behavior").isin(list(behaviors))
            & F.col("item_id").isNotNull()
            & (F.col("ts") >= F.lit(dt).cast("timestamp"))
            & (F.col("ts") < F.lit(end).cast("timestamp"))
        )
        .select("user_id", "item_id", "ts")
        .join(categories, "item_id", "left")
    )
    first = Window.partitionBy("user_id").orderBy("ts", "item_id")
    return (
        events.withColumn("n", F.row_number().over(first))
        .groupBy("user_id")
        .agg(
            F.collect_set("item_id").alias("heldout"),
            F.max(F.when(F.col("n") == 1, F.col("category"))).alias("next_category"),
        )
    )


def history_categories(
    wh: Warehouse, dt: str, lookback_days: int, behaviors: Sequence[str], categories: DataFrame
) -> DataFrame:
    """Per user, over the reliable history the agents read (ts < dt): its distinct categories
    (`history_categories`) and the behaviours in each (`history_category_counts`, a map)."""
    since = day_after(dt, -lookback_days)
    return (
        wh.read(BEHAVIORS, dt_from=since, dt_to=day_after(dt, -1))
        .where(
            F.col("behavior").isin(list(behaviors))
            & (F.col("ts") < F.lit(dt).cast("timestamp"))
            & (F.col("ts") >= F.lit(since).cast("timestamp"))
        )
        .join(categories, "item_id")
        .groupBy("user_id", "category")
        .count()
        .groupBy("user_id")
        .agg(
            F.sort_array(F.collect_list("category")).alias("history_categories"),
            F.map_from_entries(F.collect_list(F.struct("category", "count"))).alias(
                "history_category_counts"
            ),
        )
    )


def category_counts(users: DataFrame, categories: DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, held-out) behaviour counts per category (columns category, count) over the
    evaluation rows of `users` (one row per user), for the report's category plot."""
    history = (
        users.select(F.explode("history_category_counts").alias("category", "n"))
        .groupBy("category")
        .agg(F.sum("n").alias("count"))
        .toPandas()
    )
    held = (
        users.select(F.explode("heldout").alias("item_id"))
        .join(categories, "item_id")
        .groupBy("category")
        .count()
        .toPandas()
    )
    return history, held


def planted(wh: Warehouse, dt: str) -> DataFrame | None:
    """Per user: the planted personas' category sets (synthetic data only), from the newest
    generation on or before dt."""
    if not wh.exists(PLANTED_PERSONAS):
        return None
    rows = wh.read(PLANTED_PERSONAS, dt_to=dt)
    latest = rows.agg(F.max("dt")).first()
    if latest is None or latest[0] is None:
        return None
    return (
        rows.where(F.col("dt") == F.lit(latest[0]))
        .groupBy("user_id")
        .agg(F.collect_list("categories").alias("planted"))
    )


def tags_with_items(wh: Warehouse, dt: str, categories: DataFrame, k: int) -> DataFrame:
    """Per (variant, user): the final tags best first, each with its k best recalled items,
    their categories and scores."""
    tags = wh.read(USER_INTENT_TAGS, dt=dt).select(
        "pipeline", "context_mode", "user_id", F.col("rank").alias("tag_rank"), "tag"
    )
    recalled = (
        wh.read(TAG_RECALL, dt=dt)
        .where(F.col("rank") <= k)
        .join(categories, "item_id", "left")
        .groupBy("pipeline", "context_mode", "user_id", "tag_rank")
        .agg(F.array_sort(F.collect_list(F.struct("rank", "item_id", "category", "score"))).alias("r"))
        .select(
            "pipeline",
            "context_mode",
            "user_id",
            "tag_rank",
            F.col("r.item_id").alias("items"),
            F.col("r.category").alias("categories"),
            F.col("r.score").alias("scores"),
        )
    )
    empty_s = F.array().cast("array<string>")
    per_tag = tags.join(recalled, ["pipeline", "context_mode", "user_id", "tag_rank"], "left").select(
        "pipeline",
        "context_mode",
        "user_id",
        F.struct(
            "tag_rank",
            "tag",
            F.coalesce("items", empty_s).alias("items"),
            F.coalesce("categories", empty_s).alias("categories"),
            F.coalesce("scores", F.array().cast("array<double>")).alias("scores"),
        ).alias("t"),
    )
    return per_tag.groupBy("pipeline", "context_mode", "user_id").agg(
        F.array_sort(F.collect_list("t")).alias("tags")
    )


def covisit_lists(wh: Warehouse, dt: str, k: int) -> DataFrame | None:
    """Per user: the co-visitation channel's k best items, best first."""
    if not wh.exists("covisit_recall"):
        return None
    return (
        wh.read("covisit_recall", dt=dt)
        .where(F.col("rank") <= k)
        .groupBy("user_id")
        .agg(F.array_sort(F.collect_list(F.struct("rank", "item_id"))).alias("c"))
        .select("user_id", F.col("c.item_id").alias("covisit"))
    )


def evaluation_rows(
    wh: Warehouse,
    dt: str,
    cfg: Mapping[str, Any],
    lookback_days: int,
    history_behaviors: Sequence[str],
) -> DataFrame:
    """One row per (variant, mined user) with everything the user's metrics need: the users of
    user_intent_tags and of mining_failures, so a user the mining failed counts (as a miss)."""
    categories = wh.read_snapshot("items", day_after(dt, int(cfg["window_days"]))).select(
        "item_id", "category"
    )
    keys = ["pipeline", "context_mode", "user_id"]
    base = wh.read(USER_INTENT_TAGS, dt=dt).select(*keys).distinct()
    if wh.exists(MINING_FAILURES):
        base = base.unionByName(wh.read(MINING_FAILURES, dt=dt).select(*keys)).distinct()
    rows = base.join(
        tags_with_items(wh, dt, categories, int(cfg["k"])), ["pipeline", "context_mode", "user_id"], "left"
    )
    rows = rows.join(
        heldout(wh, dt, int(cfg["window_days"]), cfg["behaviors"], categories), "user_id", "left"
    )
    rows = rows.join(
        history_categories(wh, dt, lookback_days, history_behaviors, categories), "user_id", "left"
    )
    personas = planted(wh, dt)
    rows = (
        rows.join(personas, "user_id", "left")
        if personas is not None
        else rows.withColumn("planted", F.lit(None).cast("array<array<string>>"))
    )
    covisit = covisit_lists(wh, dt, int(cfg["k"]))
    rows = (
        rows.join(covisit, "user_id", "left")
        if covisit is not None
        else rows.withColumn("covisit", F.lit(None).cast("array<string>"))
    )
    return rows


def scorer(
    embedding_cfg: Mapping[str, Any], k: int, category_items: int
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        embedder = embedder_for(embedding_cfg)
        for batch in batches:
            users = batch.to_pylist()
            texts = sorted({t["tag"] for u in users for t in (u["tags"] or ())})
            vectors = embedder.encode(texts) if texts else np.zeros((0, embedder.dimension))
            position = {tag: i for i, tag in enumerate(texts)}
            out: dict[str, list[Any]] = {name: [] for name in SCORED.names}
            for u in users:
                tags = u["tags"] or []
                tag_vectors = vectors[[position[t["tag"]] for t in tags]] if tags else None
                m = user_metrics(
                    [(t["items"], t["categories"], t["scores"]) for t in tags],
                    heldout=u["heldout"] or (),
                    next_category=u["next_category"],
                    history_categories=u["history_categories"] or (),
                    planted=u["planted"] or (),
                    covisit=u["covisit"] or (),
                    tag_vectors=tag_vectors,
                    k=k,
                    category_items=category_items,
                )
                for name in ("pipeline", "context_mode", "user_id"):
                    out[name].append(u[name])
                out["tagged"].append(bool(tags))
                for name in SCORED.names[4:]:
                    out[name].append(m[name])
            yield pa.RecordBatch.from_pydict(out, schema=SCORED)

    return run


def score_users(rows: DataFrame, embedding_cfg: Mapping[str, Any], k: int, category_items: int) -> DataFrame:
    """SCORED rows, one per input row; lazy."""
    return rows.mapInArrow(scorer(dict(embedding_cfg), k, category_items), from_arrow_schema(SCORED))
