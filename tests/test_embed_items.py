"""embed_items: real MiniLM vectors for the catalog, only new or changed items embedded on later
runs, reruns that duplicate nothing, and its data-quality checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from jobs import dq, embed_items, ingest
from jobs.stage import execute, open_context
from recgpt.config import load_config
from recgpt.embeddings import Embedder, content_hash, item_text
from recgpt.rundate import RunDate
from recgpt.tables import ITEM_EMBEDDINGS, ITEMS
from sparkio.warehouse import Lineage
from udfs.embeddings import current_embeddings

pytestmark = pytest.mark.slow

TINY = ["data.users=20", "data.items=120", "data.history_days=30", "data.holdout_days=3"]
DAY1 = RunDate.parse("2025-10-28")
DAY2 = DAY1.plus(1)


def ctx_for(spark, tmp_path, stage, dt=DAY1):
    cfg = load_config([f"storage.warehouse={tmp_path / 'wh'}", f"run.dt={dt}", *TINY])
    return open_context(cfg, stage, spark)


def test_embed_items_is_incremental_idempotent_and_checked(spark, tmp_path):
    execute(ctx_for(spark, tmp_path, "ingest"), ingest.run)
    ctx = ctx_for(spark, tmp_path, "embed_items")
    first = execute(ctx, embed_items.run)
    assert first.rows_in == first.rows_out == 120

    wh = ctx.warehouse
    vectors = wh.read(ITEM_EMBEDDINGS).toPandas()
    assert len(vectors) == 120 and set(vectors.dimension) == {384}
    assert np.allclose([np.linalg.norm(v) for v in vectors.embedding], 1.0, atol=1e-3)
    # The stored vector is the real model's embedding of the item's text, under its content hash.
    item = wh.read(ITEMS, dt=DAY1).orderBy("item_id").first()
    text = item_text(item["title"], item["category"], item["category_path"], item["brand"])
    row = vectors.set_index("item_id").loc[item["item_id"]]
    assert row.text == text and row.content_hash == content_hash("all-MiniLM-L6-v2", text)
    cfg = dict(ctx.cfg.embedding)
    direct = Embedder(cfg).encode([text])[0]
    assert float(np.dot(direct, np.asarray(row.embedding))) > 0.999

    # A rerun of the same date writes the same rows again, nothing more.
    again = execute(ctx_for(spark, tmp_path, "embed_items"), embed_items.run)
    assert again.rows_out == 120 and wh.read(ITEM_EMBEDDINGS).count() == 120

    # Next day: one title changed, one item new -> only those two are embedded.
    snapshot = wh.read(ITEMS, dt=DAY1).drop("dt", "run_id", "created_at")
    changed_id = item["item_id"]
    new_item = (
        snapshot.limit(1).withColumn("item_id", F.lit("i-new")).withColumn("title", F.lit("Ski goggles"))
    )
    day2 = snapshot.withColumn(
        "title", F.when(F.col("item_id") == changed_id, F.lit("Heated ski gloves")).otherwise(F.col("title"))
    ).unionByName(new_item)
    wh.write(day2, ITEMS, mode="replace", lineage=Lineage.now(DAY2, "snapshot-2"))
    second = execute(ctx_for(spark, tmp_path, "embed_items", DAY2), embed_items.run)
    assert second.rows_in == 121 and second.rows_out == 2
    current = current_embeddings(wh, DAY2, "all-MiniLM-L6-v2").toPandas().set_index("item_id")
    assert current.embedding.notna().all() and len(current) == 121
    assert current.loc[changed_id].text.startswith("Heated ski gloves")
    moved = float(np.dot(np.asarray(current.loc[changed_id].embedding), np.asarray(row.embedding)))
    assert moved < 0.99, "the changed item got a new vector"

    # The data-quality checkpoint of the stage passes on both dates.
    report = execute(ctx_for(spark, tmp_path, "dq", DAY2), dq.run)
    assert "0 failed" in report.details["dq"]
    assert "ingest" in report.details.get("skipped", ""), "ingest did not run for day 2"


def test_a_small_batch_of_items_is_one_task_and_a_large_one_two_per_core():
    assert embed_items.embedding_tasks(300, 4, 2000) == 1
    assert embed_items.embedding_tasks(0, 4, 2000) == 1
    assert embed_items.embedding_tasks(4001, 4, 2000) == 3
    assert embed_items.embedding_tasks(10**6, 4, 2000) == 8
