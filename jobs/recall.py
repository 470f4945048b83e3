"""Stage recall: the final tags of the run date's mining (the configured pipeline and context
mode, as mine_intents chose them) become items, each tag's nearest catalog items by cosine.

    python -m jobs.recall run.dt=2025-10-28 [pipeline=v1_baseline] [context.mode=text]

A rerun replaces the (dt, pipeline, context_mode) partition it wrote, so it never duplicates.
"""

from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import functions as F

from jobs.stage import StageContext, main_for
from recgpt.config import plain
from recgpt.errors import RecGPTError
from recgpt.tables import TAG_RECALL, USER_INTENT_TAGS
from udfs.mining_scope import context_mode
from udfs.recall import catalog, recall_inputs, recall_tags

STAGE = "recall"


def run(ctx: StageContext) -> None:
    cfg = ctx.cfg
    pipeline, mode = str(cfg.pipeline.name), context_mode(cfg)
    emb_cfg = plain(cfg.embedding)
    wh = ctx.warehouse
    variant = (F.col("pipeline") == pipeline) & (F.col("context_mode") == mode)
    if not wh.exists(USER_INTENT_TAGS):
        raise RecGPTError(f"no user_intent_tags yet: run `python -m jobs.mine_intents run.dt={ctx.dt}` first")
    tags = wh.read(USER_INTENT_TAGS, dt=ctx.dt).where(variant).select("user_id", "rank", "tag")

    cat = catalog(wh, ctx.dt, str(emb_cfg["model_name"]))
    bought_days = int(cfg.pipeline.agents.validation.bought_days)
    inputs = recall_inputs(wh, tags, ctx.dt, bought_days)
    parallelism = ctx.spark.sparkContext.defaultParallelism
    recalled = recall_tags(
        inputs.repartition(max(1, parallelism * 2)),
        cat,
        emb_cfg,
        int(cfg.recall.items_per_tag),
        int(cfg.recall.max_score_cells),
    ).persist(StorageLevel.MEMORY_AND_DISK)
    data = recalled.withColumn("pipeline", F.lit(pipeline)).withColumn("context_mode", F.lit(mode))
    where = {"dt": ctx.dt, "pipeline": pipeline, "context_mode": mode}
    written = wh.write(data, TAG_RECALL, mode="replace", lineage=ctx.lineage, where=where)

    stats = recalled.agg(
        F.countDistinct("user_id").alias("users"),
        F.countDistinct("user_id", "tag_rank").alias("tags"),
        F.countDistinct("item_id").alias("items"),
        F.avg("score").alias("score"),
    ).first()
    recalled.unpersist()
    assert stats is not None
    n_tags = tags.count()
    r = ctx.report
    r.rows_in, r.rows_out, r.rows_quarantined = n_tags, written.rows, 0
    r.wrote(TAG_RECALL.name, written.rows, written.version)
    r.details["variant"] = f"pipeline={pipeline} context_mode={mode}"
    r.details["recall"] = (
        f"{stats['tags'] or 0:,} tags of {stats['users'] or 0:,} users -> up to "
        f"{cfg.recall.items_per_tag} items each from {len(cat.ids):,} catalog items; "
        f"{stats['items'] or 0:,} distinct items recalled, mean cosine {float(stats['score'] or 0):.3f}; "
        f"purchases of the last {bought_days} days excluded"
    )


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
