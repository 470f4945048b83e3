"""Training data of the entity adaptor from the warehouse: catalog items with their current vectors
(self-perception) and users' compressed contexts (distillation), brought to the driver as rows."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recgpt.context import core_title
from recgpt.rundate import RunDate
from recgpt.tables import ITEMS, USER_CONTEXT
from sparkio.warehouse import Warehouse
from udfs.embeddings import current_embeddings


def item_vectors(wh: Warehouse, dt: RunDate, embedding_model: str) -> DataFrame:
    """The catalog items as of dt that have a vector for their current text (item_id,
    content_hash, embedding, dimension, text)."""
    return current_embeddings(wh, dt, embedding_model).where(F.col("embedding").isNotNull())


def self_perception_items(
    wh: Warehouse, vectors: DataFrame, dt: RunDate, n: int, seed: int, core_words: int
) -> list[dict[str, Any]]:
    """Up to `n` items of `vectors` with item_id, embedding, core title (`core_words` words) and
    category, in a seeded hash order: the same items whatever the partitioning, without
    collecting the catalog to the driver."""
    items = vectors.join(wh.read_snapshot(ITEMS, dt).select("item_id", "title", "category"), "item_id")
    picked = items.orderBy(F.xxhash64("item_id", F.lit(seed)), "item_id").limit(n).toPandas()
    return [
        {
            "item_id": str(r.item_id),
            "embedding": r.embedding,
            "title": core_title(r.title, core_words),
            "category": r.category,
        }
        for r in picked.itertuples()
    ]


def distillation_contexts(wh: Warehouse, dt: RunDate) -> list[dict[str, Any]]:
    """user_id, v1_text, hybrid_text, entity_ids of every user with a reliable history on dt,
    ordered by user id (so a seeded shuffle picks the same users in every run); none before
    compress has run."""
    if not wh.exists(USER_CONTEXT):
        return []
    contexts = (
        wh.read(USER_CONTEXT, dt=dt)
        .where(F.col("events_kept") > 0)
        .select("user_id", "v1_text", "hybrid_text", "entity_ids")
        .orderBy("user_id")
        .toPandas()
    )
    return [r._asdict() for r in contexts.itertuples(index=False)]


def vectors_of(vectors: DataFrame, item_ids: Collection[str]) -> dict[str, Any]:
    """Item id -> embedding of the given items (an item without a vector is absent)."""
    if not item_ids:
        return {}
    wanted = vectors.sparkSession.createDataFrame([(i,) for i in sorted(item_ids)], "item_id string")
    return dict(
        vectors.join(wanted, "item_id").select("item_id", "embedding").toPandas().itertuples(index=False)
    )
