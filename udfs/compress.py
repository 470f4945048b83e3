"""Behaviour compression inside Spark: behaviours before the run date joined to item titles,
reliable-behaviour filtering and per-user capping in Spark, then users clustered by partition and
turned, a batch of users at a time, into their V1 and hybrid contexts with token counts from the
LLM's own tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from recgpt import context as C
from recgpt.llm.request import EMBED_MARK
from recgpt.rundate import RunDate
from recgpt.tables import USER_CONTEXT

_TOKENIZERS: dict[str, Any] = {}

OUT_SCHEMA = pa.schema([f for f in USER_CONTEXT.schema if f.name not in ("dt", "run_id", "created_at")])


def tokenizer_for(path: str) -> Any:
    if path not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
    return _TOKENIZERS[path]


def history(behaviors: DataFrame, items: DataFrame, dt: RunDate, cfg: Mapping[str, Any]) -> DataFrame:
    """Behaviours strictly before `dt`, of the kept types, one row per (user, day, behaviour,
    target), the newest `max_events_per_user` per user, with item title and category."""
    keep = [str(k) for k in cfg["keep_behaviors"]]
    since = dt.minus(int(cfg["lookback_days"]))
    events = behaviors.where(
        (F.col("ts") < F.lit(dt.iso).cast("timestamp"))
        & (F.col("ts") >= F.lit(since.iso).cast("timestamp"))
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


def counts_before(behaviors: DataFrame, dt: RunDate) -> DataFrame:
    return (
        behaviors.where(F.col("ts") < F.lit(dt.iso).cast("timestamp"))
        .groupBy("user_id")
        .agg(F.count("*").alias("events"))
    )


class TokenCounter:
    """Token counts from the LLM's own (fast) tokenizer, primed in one batch call per chunk of
    users: the bucket lines and full texts of a few hundred users are encoded together (the
    tokenizer parallelises a batch natively), and only the final joined contexts are counted one
    by one. Counts equal `len(tokenizer(text, add_special_tokens=False).input_ids)`."""

    def __init__(self, tokenizer: Any) -> None:
        self.backend = tokenizer.backend_tokenizer
        self.cache: dict[str, int] = {}

    def prime(self, texts: Iterable[str]) -> None:
        missing = list({t for t in texts if t and t not in self.cache})
        for text, enc in zip(
            missing, self.backend.encode_batch(missing, add_special_tokens=False), strict=True
        ):
            self.cache[text] = len(enc.ids)

    def __call__(self, text: str) -> int:
        if not text:
            return 0
        if text not in self.cache:
            self.cache[text] = len(self.backend.encode(text, add_special_tokens=False).ids)
        return self.cache[text]

    def clear(self) -> None:
        self.cache.clear()


def user_compressor(
    dt: RunDate, cfg: Mapping[str, Any], tokenizer_path: str
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """mapInArrow over history rows clustered by user (every row of a user in one partition,
    adjacent): one user_context row per user, a batch of users at a time."""
    budget = int(cfg["token_budget"])
    core_words = int(cfg["core_title_words"])
    keep = [str(k) for k in cfg["keep_behaviors"]]

    def contexts(users: list[list[dict[str, Any]]], count: TokenCounter) -> pa.RecordBatch:
        prepared = []
        for rows in users:
            events = C.reliable(
                (
                    C.Event(r["ts"], r["behavior"], r["item_id"], r["title"], r["category"], r["query"])
                    for r in rows
                    if r["behavior"] is not None  # the null row of a user with no reliable behaviour
                ),
                keep,
            )
            blocks = C.buckets(events, dt, core_words)
            prepared.append((rows[0], events, blocks, C.full_text(events)))
        count.prime(
            text.replace(EMBED_MARK, "")
            for _, _, blocks, full in prepared
            for text in (full, *(C.bucket_line(b, h)[0] for b in blocks for h in (False, True)))
        )
        out = []
        for first, events, blocks, full in prepared:
            v1 = C.compress(blocks, count, budget, hybrid=False)
            hybrid = C.compress(blocks, count, budget, hybrid=True)
            out.append(
                {
                    "user_id": first["user_id"],
                    "events": int(first["events"]),
                    "events_kept": len(events),
                    "first_ts": events[0].ts if events else None,
                    "last_ts": events[-1].ts if events else None,
                    "buckets": len(blocks),
                    "full_tokens": count(full),
                    "v1_text": v1.text,
                    "v1_tokens": v1.tokens,
                    "v1_dropped_buckets": v1.dropped_buckets,
                    "hybrid_text": hybrid.text,
                    "entity_ids": hybrid.entity_ids,
                    "hybrid_tokens": hybrid.tokens,
                    "hybrid_dropped_buckets": hybrid.dropped_buckets,
                }
            )
        count.clear()  # bounded memory: a chunk's texts are not reused by the next one
        return pa.RecordBatch.from_pylist(out, schema=OUT_SCHEMA)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        count = TokenCounter(tokenizer_for(tokenizer_path))
        carry: list[dict[str, Any]] = []  # the last user of a batch may continue in the next
        for batch in batches:
            users: list[list[dict[str, Any]]] = []
            for row in batch.to_pylist():
                if carry and carry[-1]["user_id"] != row["user_id"]:
                    users.append(carry)
                    carry = []
                carry.append(row)
            if users:
                yield contexts(users, count)
        if carry:
            yield contexts([carry], count)

    return run


def compress_users(
    behaviors: DataFrame, items: DataFrame, dt: RunDate, cfg: Mapping[str, Any], tokenizer_path: str
) -> DataFrame:
    """One user_context row (without lineage) per user with any behaviour before `dt`; users
    whose behaviours are all of dropped types get an empty context, not a missing row."""
    events = history(behaviors, items, dt, cfg)
    totals = counts_before(behaviors, dt)
    # The left join keeps users with no reliable behaviour as one row of nulls (an empty
    # context, not a missing row). Every row of a user ends up in one partition, adjacent: the
    # compressor takes whole batches of users at a time (one tokenizer call per batch) instead
    # of one Python call per user.
    rows = totals.join(events, "user_id", "left").select(
        "user_id", "ts", "behavior", "item_id", "query", "title", "category", "events"
    )
    clustered = rows.repartition("user_id").sortWithinPartitions("user_id")
    return clustered.mapInArrow(user_compressor(dt, dict(cfg), tokenizer_path), from_arrow_schema(OUT_SCHEMA))
