"""Stage compress: each user's behaviours before the run date become LLM context, V1 hierarchical
text and the hybrid form with entity slots, with token counts against the full text.

    python -m jobs.compress run.dt=2025-10-28 [compress.token_budget=...]
"""

from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import functions as F

from jobs.stage import StageContext, main_for
from recgpt.config import plain
from recgpt.tables import BEHAVIORS, ITEMS, USER_CONTEXT
from udfs.compress import compress_users

STAGE = "compress"


def run(ctx: StageContext) -> None:
    cfg = plain(ctx.cfg.compress)
    wh = ctx.warehouse
    behaviors = wh.read(BEHAVIORS, dt_to=ctx.dt.minus(1))
    items = wh.read_snapshot(ITEMS, ctx.dt)
    tokenizer = str(ctx.cfg.llm.get("tokenizer_path") or ctx.cfg.llm.model_path)
    contexts = compress_users(behaviors, items, ctx.dt, cfg, tokenizer).persist(StorageLevel.MEMORY_AND_DISK)
    written = wh.write(contexts, USER_CONTEXT, mode="replace", lineage=ctx.lineage)

    stats = contexts.agg(
        F.count("*").alias("users"),
        F.sum("events").alias("events"),
        F.sum("events_kept").alias("kept"),
        F.percentile_approx("full_tokens", 0.5).alias("full"),
        F.percentile_approx("v1_tokens", 0.5).alias("v1"),
        F.percentile_approx("hybrid_tokens", 0.5).alias("hybrid"),
        F.sum((F.col("v1_dropped_buckets") > 0).cast("int")).alias("trimmed"),
    ).first()
    contexts.unpersist()
    assert stats is not None
    r = ctx.report
    # Counted from the behaviours themselves, so a user lost on the way shows as in != out.
    users_in = (
        behaviors.where(F.col("ts") < F.lit(ctx.dt.iso).cast("timestamp"))
        .select("user_id")
        .distinct()
        .count()
    )
    r.rows_in, r.rows_out, r.rows_quarantined = users_in, written.rows, 0
    r.wrote(USER_CONTEXT.name, written.rows, written.version)
    r.details["events"] = f"{int(stats['events'] or 0):,} before dt, {int(stats['kept'] or 0):,} kept"
    r.details["tokens"] = (
        f"median per user: full {stats['full'] or 0:,}, V1 {stats['v1'] or 0:,}, "
        f"hybrid {stats['hybrid'] or 0:,}"
        f"; {int(stats['trimmed'] or 0):,} users trimmed to {cfg['token_budget']} tokens"
    )


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
