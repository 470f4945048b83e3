"""Behaviour compression inside Spark: behaviours before the run date joined to item titles,
reliable-behaviour filtering and per-user capping in Spark, then one Arrow group per user turned
into its V1 and hybrid contexts with token counts from the LLM's own tokenizer."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from recgpt import context as C
from recgpt.tables import USER_CONTEXT

_TOKENIZERS: dict[str, Any] = {}

OUT_SCHEMA = pa.schema([f for f in USER_CONTEXT.schema if f.name not in ("dt", "run_id", "created_at")])


def tokenizer_for(path: str) -> Any:
    if path not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
    return _TOKENIZERS[path]


def history(behaviors: DataFrame, items: DataFrame, dt: str, cfg: Mapping[str, Any]) -> DataFrame:
    """Behaviours strictly before `dt`, of the kept types, one row per (user, day, behaviour,
    target), the newest `max_events_per_user` per user, with item title and category."""
    keep = [str(k) for k in cfg["keep_behaviors"]]
    since = (_dt.date.fromisoformat(dt) - _dt.timedelta(days=int(cfg["lookback_days"]))).isoformat()
    events = behaviors.where(
        (F.col("ts") < F.lit(dt).cast("timestamp"))
        & (F.col("ts") >= F.lit(since).cast("timestamp"))
        & F.col("behavior").isin(keep)
    )
    target = F.when(F.col("behavior") == "search", F.lower(F.trim("query"))).otherwise(F.col("item_id"))
    deduped = (
        events.withColumn("_target", target)
        .where(F.col("_target").isNotNull() & (F.col("_target") != ""))
        .withColumn("_day", F.to_date("ts"))
        .groupBy("user_id", "_day", "behavior", "_target")
        .agg(F.min("ts").alias("ts"), F.first("item_id").alias("item_id"), F.first("query").alias("query"))
    )
    newest = Window.partitionBy("user_id").orderBy(F.col("ts").desc(), F.col("_target"))
    capped = (
        deduped.withColumn("_rank", F.row_number().over(newest))
        .where(F.col("_rank") <= int(cfg["max_events_per_user"]))
        .drop("_rank", "_day", "_target")
    )
    titles = items.select("item_id", "title", "category")
    return capped.join(F.broadcast(titles) if cfg.get("broadcast_items") else titles, "item_id", "left")


def counts_before(behaviors: DataFrame, dt: str) -> DataFrame:
    return (
        behaviors.where(F.col("ts") < F.lit(dt).cast("timestamp"))
        .groupBy("user_id")
        .agg(F.count("*").alias("events"))
    )


def user_compressor(dt: str, cfg: Mapping[str, Any], tokenizer_path: str) -> Callable[[pa.Table], pa.Table]:
    as_of = _dt.date.fromisoformat(dt)
    budget = int(cfg["token_budget"])
    core_words = int(cfg["core_title_words"])
    keep = [str(k) for k in cfg["keep_behaviors"]]

    def run(table: pa.Table) -> pa.Table:
        tok = tokenizer_for(tokenizer_path)

        def count(text: str) -> int:
            return len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0

        rows = table.to_pylist()
        user = rows[0]["user_id"]
        events = C.reliable(
            (
                C.Event(r["ts"], r["behavior"], r["item_id"], r["title"], r["category"], r["query"])
                for r in rows
                if r["behavior"] is not None  # the placeholder row of every user
            ),
            keep,
        )
        blocks = C.buckets(events, as_of, core_words)
        v1 = C.compress(blocks, count, budget, hybrid=False)
        hybrid = C.compress(blocks, count, budget, hybrid=True)
        out = {
            "user_id": user,
            "events": int(rows[0]["events"]),
            "events_kept": len(events),
            "first_ts": events[0].ts if events else None,
            "last_ts": events[-1].ts if events else None,
            "buckets": len(blocks),
            "full_tokens": count(C.full_text(events)),
            "v1_text": v1.text,
            "v1_tokens": v1.tokens,
            "v1_dropped_buckets": v1.dropped_buckets,
            "hybrid_text": hybrid.text,
            "entity_ids": hybrid.entity_ids,
            "hybrid_tokens": hybrid.tokens,
            "hybrid_dropped_buckets": hybrid.dropped_buckets,
        }
        return pa.Table.from_pylist([out], schema=OUT_SCHEMA)

    return run


def compress_users(
    behaviors: DataFrame, items: DataFrame, dt: str, cfg: Mapping[str, Any], tokenizer_path: str
) -> DataFrame:
    """One user_context row (without lineage) per user with any behaviour before `dt`; users
    whose behaviours are all of dropped types get an empty context, not a missing row."""
    events = history(behaviors, items, dt, cfg)
    totals = counts_before(behaviors, dt)
    # A placeholder row keeps users with no reliable behaviour in the output.
    placeholders = totals.select(
        "user_id",
        F.lit(None).cast("timestamp").alias("ts"),
        F.lit(None).cast("string").alias("behavior"),
        F.lit(None).cast("string").alias("item_id"),
        F.lit(None).cast("string").alias("query"),
        F.lit(None).cast("string").alias("title"),
        F.lit(None).cast("string").alias("category"),
    )
    rows = events.select("user_id", "ts", "behavior", "item_id", "query", "title", "category").unionByName(
        placeholders
    )
    rows = rows.join(totals, "user_id")
    return rows.groupBy("user_id").applyInArrow(
        user_compressor(dt, dict(cfg), tokenizer_path), from_arrow_schema(OUT_SCHEMA)
    )
