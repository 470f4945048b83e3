"""Item embeddings inside Spark: item texts and content hashes as Spark expressions, the
sentence-transformers model once per Python worker (mapInArrow), and current vectors per item."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from recgpt.embeddings import FIELD_SEP, Embedder
from recgpt.rundate import RunDate
from recgpt.tables import ITEM_EMBEDDINGS, ITEMS
from sparkio.warehouse import Warehouse
from sparkio.worker import per_process

_EMBEDDERS: dict[str, Embedder] = {}

VECTORS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("dimension", pa.int32(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)


def embedder_for(cfg: Mapping[str, Any]) -> Embedder:
    return per_process(_EMBEDDERS, json.dumps(cfg, sort_keys=True, default=str), lambda: Embedder(cfg))


def _trimmed(col: Column) -> Column:
    value = F.trim(col)
    return F.when(value != "", value)


def item_texts(items: DataFrame, model_name: str) -> DataFrame:
    """item_id, text, content_hash — the same rule as recgpt.embeddings.item_text/content_hash,
    as Spark expressions so a catalog of millions is hashed without Python."""
    text = F.concat_ws(
        " | ",
        _trimmed(F.col("title")),
        _trimmed(F.coalesce(F.col("category_path"), F.col("category"))),
        _trimmed(F.col("brand")),
    )
    hashed = F.substring(F.sha2(F.concat(F.lit(model_name + FIELD_SEP), F.col("text")), 256), 1, 16)
    return items.select("item_id", text.alias("text")).select("item_id", "text", hashed.alias("content_hash"))


def embed_runner(cfg: Mapping[str, Any]) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        embedder = embedder_for(cfg)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            texts = batch.column("text").to_pylist()
            vectors = embedder.encode(texts)
            flat = pa.array(vectors.reshape(-1), type=pa.float32())
            offsets = pa.array(range(0, vectors.size + 1, embedder.dimension), type=pa.int32())
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column("item_id"),
                    batch.column("content_hash"),
                    batch.column("text"),
                    pa.array([embedder.name] * batch.num_rows, type=pa.string()),
                    pa.array([embedder.dimension] * batch.num_rows, type=pa.int32()),
                    pa.ListArray.from_arrays(offsets, flat),
                ],
                schema=VECTORS,
            )

    return run


def embed(texts: DataFrame, cfg: Mapping[str, Any]) -> DataFrame:
    """Vectors (VECTORS schema) for rows of item_id, text, content_hash; lazy."""
    return texts.select("item_id", "content_hash", "text").mapInArrow(
        embed_runner(dict(cfg)), from_arrow_schema(VECTORS)
    )


def current_embeddings(warehouse: Warehouse, as_of: RunDate, model_name: str) -> DataFrame:
    """Each item of the catalog snapshot as of `as_of` with the vector of its current text."""
    items = item_texts(warehouse.read_snapshot(ITEMS, as_of), model_name)
    vectors = (
        warehouse.read(ITEM_EMBEDDINGS, dt_to=as_of)
        .where(F.col("model") == model_name)
        .select("item_id", "content_hash", "embedding", "dimension")
        .dropDuplicates(["item_id", "content_hash"])
    )
    return items.join(vectors, ["item_id", "content_hash"], "left")
