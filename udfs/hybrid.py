"""Hybrid inference inside Spark: LLM request rows whose messages hold entity marks get their
`embeds` column, one adaptor vector per mark, from the item embeddings; `context.mode` picks the
V1 text or the hybrid form of a user's context with nothing else changed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from recgpt import adaptor as A
from recgpt.errors import ConfigError
from recgpt.llm.request import encode_block

ContextMode = Literal["text", "hybrid"]

_ADAPTORS: dict[str, Any] = {}


def context_columns(contexts: DataFrame, mode: str) -> DataFrame:
    """`context` (the text the prompt shows) and `entity_ids` (empty in text mode) per user."""
    if mode == "text":
        return contexts.select(
            "user_id", F.col("v1_text").alias("context"), F.array().cast("array<string>").alias("entity_ids")
        )
    if mode == "hybrid":
        return contexts.select("user_id", F.col("hybrid_text").alias("context"), "entity_ids")
    raise ConfigError(f"context.mode must be text or hybrid, not {mode!r}")


def _adaptor(folder: str) -> Any:
    if folder not in _ADAPTORS:
        _ADAPTORS[folder] = A.load(folder)[0]
    return _ADAPTORS[folder]


def block_runner(folder: str) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    schema = pa.schema([pa.field("key", pa.string()), pa.field("embeds", pa.list_(pa.binary()))])

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        adaptor = _adaptor(folder)
        for batch in batches:
            keys = batch.column("key").to_pylist()
            vectors = batch.column("vectors").to_pylist()
            out = []
            for vs in vectors:
                present = [v for v in vs if v is not None]
                if not present:
                    out.append([])
                    continue
                slots = A.entity_vectors(adaptor, np.asarray(present, dtype=np.float32))
                out.append([encode_block(slot[None, :]) for slot in slots])
            yield pa.RecordBatch.from_arrays(
                [pa.array(keys, pa.string()), pa.array(out, pa.list_(pa.binary()))], schema=schema
            )

    return run


def attach_entity_blocks(requests: DataFrame, vectors: DataFrame, adaptor_folder: str) -> DataFrame:
    """`requests` (key, entity_ids, ...) with an `embeds` column: one [1, hidden] block per
    entity id, in order, from `vectors` (item_id, embedding) through the adaptor. An entity
    without a vector yields no block, so the request fails as a bad request with the count
    mismatch named, instead of silently reading a wrong slot."""
    exploded = requests.select("key", F.posexplode("entity_ids").alias("pos", "item_id"))
    joined = exploded.join(vectors.select("item_id", "embedding"), "item_id", "left")
    ordered = joined.groupBy("key").agg(
        F.transform(
            F.array_sort(F.collect_list(F.struct("pos", "embedding"))), lambda s: s["embedding"]
        ).alias("vectors")
    )
    out_schema = from_arrow_schema(
        pa.schema([pa.field("key", pa.string()), pa.field("embeds", pa.list_(pa.binary()))])
    )
    blocks = ordered.mapInArrow(block_runner(adaptor_folder), out_schema)
    with_blocks = requests.join(blocks, "key", "left")
    return with_blocks.withColumn("embeds", F.coalesce(F.col("embeds"), F.array().cast("array<binary>")))
