"""Stage embed_items: embed the text of every catalog item that has no vector yet for its current
text under the configured model (content hash), so a nightly run only embeds new or changed items.

    python -m jobs.embed_items run.dt=2025-10-28 [embedding.model_path=...]
"""

from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import functions as F

from jobs.stage import StageContext, main_for
from recgpt.config import plain
from recgpt.tables import ITEM_EMBEDDINGS, ITEMS
from udfs.embeddings import embed, item_texts

STAGE = "embed_items"


def embedding_tasks(items: int, parallelism: int, items_per_task: int) -> int:
    """Tasks for embedding `items` texts: two per core at most, none with fewer than
    `items_per_task` texts (loading the model is most of a small task's time), at least one."""
    return max(1, min(parallelism * 2, -(-items // max(1, items_per_task))))


def run(ctx: StageContext) -> None:
    cfg = plain(ctx.cfg.embedding)
    model = str(cfg["model_name"])
    wh = ctx.warehouse
    texts = item_texts(wh.read_snapshot(ITEMS, ctx.dt), model).persist(StorageLevel.MEMORY_AND_DISK)
    total = texts.count()

    todo = texts
    if wh.exists(ITEM_EMBEDDINGS):
        # Vectors from earlier run dates only: a rerun of this date recomputes its own partition,
        # so it writes the same rows again instead of finding them "already done" and writing none.
        done = (
            wh.read(ITEM_EMBEDDINGS, dt_to=ctx.dt.minus(1))
            .where(F.col("model") == model)
            .select("item_id", "content_hash")
            .distinct()
        )
        todo = texts.join(done, ["item_id", "content_hash"], "left_anti")
    # Several tasks per core keep every Python worker's model busy on large catalogs; a small
    # batch of items is one task, so one worker loads the model instead of every core's.
    todo = todo.persist(StorageLevel.MEMORY_AND_DISK)
    tasks = embedding_tasks(
        todo.count(), ctx.spark.sparkContext.defaultParallelism, int(cfg["items_per_task"])
    )
    vectors = embed(todo.repartition(tasks), cfg)
    written = wh.write(vectors, ITEM_EMBEDDINGS, mode="replace", lineage=ctx.lineage)
    todo.unpersist()
    texts.unpersist()

    r = ctx.report
    r.rows_in, r.rows_out, r.rows_quarantined = total, written.rows, 0
    r.wrote(ITEM_EMBEDDINGS.name, written.rows, written.version)
    r.details["embedding"] = (
        f"{model}: {written.rows:,} embedded, {total - written.rows:,} unchanged (reused)"
    )


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
