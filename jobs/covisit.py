"""Stage covisit: the conventional recall channel. Items recalled per user as of the run date by
item-to-item co-visitation, for the users compress gave a history, the baseline the tag-based
channel is evaluated against.

    python -m jobs.covisit run.dt=2025-10-28 [covisit.top_k=...]
"""

from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import functions as F

from jobs.stage import StageContext, main_for
from recgpt.config import plain
from recgpt.errors import RecGPTError
from recgpt.tables import BEHAVIORS, COVISIT_RECALL, ITEMS, USER_CONTEXT
from udfs.covisit import (
    CovisitSettings,
    bought_items,
    covisit_pairs,
    item_events,
    recall,
    seed_items,
    top_neighbors,
)

STAGE = "covisit"


def run(ctx: StageContext) -> None:
    cfg = plain(ctx.cfg.covisit)
    s = CovisitSettings.from_config({str(k): v for k, v in cfg.items()})
    wh = ctx.warehouse
    # The users are compress's: the tag channel mines the same ones (a history with events kept).
    missing = f"no user_context for dt={ctx.dt}: run `python -m jobs.compress run.dt={ctx.dt}` first"
    if not wh.exists(USER_CONTEXT):
        raise RecGPTError(missing)
    contexts = wh.read(USER_CONTEXT, dt=ctx.dt)
    counts = contexts.agg(
        F.count("*").alias("rows"), F.sum((F.col("events_kept") > 0).cast("int")).alias("users")
    ).first()
    if counts is None or not counts["rows"]:
        raise RecGPTError(missing)
    covered = int(counts["users"] or 0)
    users = contexts.where(F.col("events_kept") > 0).select("user_id")

    behaviors = wh.read(BEHAVIORS, dt_from=s.read_since(ctx.dt), dt_to=ctx.dt.minus(1))
    # Events feed the pairs and the seeds, pairs the neighbours and the report: computed once.
    events = item_events(behaviors, ctx.dt, s).persist(StorageLevel.MEMORY_AND_DISK)
    pairs = covisit_pairs(events, s).persist(StorageLevel.MEMORY_AND_DISK)
    seeds = seed_items(events, users, s)
    # Recalled items must be in the catalog as of dt (the tag channel's catalog too): the history
    # may hold items that have been delisted since.
    catalog = wh.read_snapshot(ITEMS, ctx.dt).select("item_id")
    rows = recall(seeds, top_neighbors(pairs, s, catalog), bought_items(behaviors, ctx.dt, s), s)
    written = wh.write(rows, COVISIT_RECALL, mode="replace", lineage=ctx.lineage)

    positions = events.count()
    pair_stats = pairs.agg(F.count("*").alias("pairs"), F.sum("weight").alias("covisits")).first()
    events.unpersist()
    pairs.unpersist()
    # Read back what this run wrote: the figures describe the table, not a recomputation.
    recalled = (
        wh.read(COVISIT_RECALL, dt=ctx.dt)
        .where(F.col("run_id") == F.lit(ctx.lineage.run_id))
        .agg(F.countDistinct("user_id").alias("users"), F.count("*").alias("rows"))
        .first()
    )
    assert pair_stats is not None and recalled is not None
    with_rows = int(recalled["users"])
    r = ctx.report
    # In: the history positions read (kept behaviours on items, one per item and day).
    r.rows_in, r.rows_out, r.rows_quarantined = positions, written.rows, 0
    r.wrote(COVISIT_RECALL.name, written.rows, written.version)
    r.details["users"] = (
        f"{covered:,} with a history, {with_rows:,} recalled, "
        f"{covered - with_rows:,} without co-visited candidates"
    )
    r.details["items"] = (
        f"{(int(recalled['rows']) / with_rows if with_rows else 0.0):.1f} per recalled user (top_k {s.top_k})"
    )
    # Each unordered pair is stored in both directions.
    r.details["pairs"] = (
        f"{int(pair_stats['pairs'] or 0) // 2:,} item pairs co-visited "
        f"({int(pair_stats['covisits'] or 0) // 2:,} user-pair co-visits) in {positions:,} positions; "
        f"window {s.window_events} positions"
        + (f" / {s.window_days:g} days" if s.window_days is not None else "")
    )


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
