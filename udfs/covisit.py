"""Item-to-item co-visitation recall inside Spark: the conventional recall channel, the baseline
the tag-based channel is evaluated against.

Every step is a DataFrame operation whose size follows the data (window functions per user,
groupBy counts per item pair, a join of the users' seeds to their items' neighbours); nothing
proportional to the data reaches the driver.

    events     one position per (user, item, day) of the kept behaviours before dt, newest first
    pairs      (item, neighbour) -> users who had both within the window (both directions)
    neighbours the top `neighbors_per_item` of each item's pairs
    recall     per user: the neighbours of their seed items, scores summed over the seeds,
               seeds and recent purchases excluded, the top `top_k`
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recgpt.errors import ConfigError
from recgpt.rundate import RunDate
from recgpt.tables import BEHAVIOR_TYPES

_DAY_SECONDS = 86_400


@dataclass(frozen=True)
class CovisitSettings:
    """The `covisit` config, checked once on load so a bad value fails the stage at start with a
    message naming the key."""

    keep_behaviors: tuple[str, ...]
    lookback_days: int
    max_events_per_user: int
    window_events: int
    window_days: float | None
    neighbors_per_item: int
    seed_items: int
    seed_decay: float
    top_k: int
    bought_days: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> CovisitSettings:
        def at_least(key: str, low: int) -> int:
            value = int(cfg[key])
            if value < low:
                raise ConfigError(f"covisit.{key} must be at least {low}, not {value}")
            return value

        # window_days may be null or absent: the window is then in positions only.
        missing = [k for k in cls.__dataclass_fields__ if k != "window_days" and k not in cfg]
        if missing:
            raise ConfigError(f"covisit: missing {', '.join(missing)}")
        keep = tuple(str(b) for b in cfg["keep_behaviors"])
        unknown = sorted(set(keep) - set(BEHAVIOR_TYPES))
        if not keep or unknown:
            raise ConfigError(
                f"covisit.keep_behaviors must name behaviours among {', '.join(BEHAVIOR_TYPES)}"
                + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            )
        window_days = cfg.get("window_days")
        if window_days is not None and float(window_days) <= 0:
            raise ConfigError(f"covisit.window_days must be positive or null, not {window_days}")
        decay = float(cfg["seed_decay"])
        if not 0 < decay <= 1:
            raise ConfigError(f"covisit.seed_decay must be in (0, 1], not {decay}")
        return cls(
            keep_behaviors=keep,
            lookback_days=at_least("lookback_days", 1),
            max_events_per_user=at_least("max_events_per_user", 2),
            window_events=at_least("window_events", 1),
            window_days=None if window_days is None else float(window_days),
            neighbors_per_item=at_least("neighbors_per_item", 1),
            seed_items=at_least("seed_items", 1),
            seed_decay=decay,
            top_k=at_least("top_k", 1),
            bought_days=at_least("bought_days", 0),
        )

    def read_since(self, dt: RunDate) -> RunDate:
        """First event date any step reads: the history's lookback or the purchase window."""
        return dt.minus(max(self.lookback_days, self.bought_days))


def item_events(behaviors: DataFrame, dt: RunDate, s: CovisitSettings) -> DataFrame:
    """The users' item histories as of `dt`: kept behaviours with ts in [dt - lookback_days, dt)
    that name an item, one position per (user, item, day) at its first ts that day (a view, a
    cart and a purchase of one item in one visit are one step of the history, not three that
    would push other items out of the window), numbered `pos` 1 = newest, ties by item_id, the
    newest `max_events_per_user` kept. Columns: user_id, item_id, ts, pos."""
    since = dt.minus(s.lookback_days)
    kept = behaviors.where(
        (F.col("ts") < F.lit(dt.iso).cast("timestamp"))
        & (F.col("ts") >= F.lit(since.iso).cast("timestamp"))
        & F.col("behavior").isin(list(s.keep_behaviors))
        & F.col("item_id").isNotNull()
    )
    # Shuffled once, by user: the collapse and the numbering below both run within that partitioning
    # (grouping by item and day first would shuffle the rows twice).
    collapsed = (
        kept.repartition("user_id")
        .groupBy("user_id", "item_id", F.to_date("ts").alias("_day"))
        .agg(F.min("ts").alias("ts"))
    )
    newest = Window.partitionBy("user_id").orderBy(F.col("ts").desc(), F.col("item_id"))
    return (
        collapsed.withColumn("pos", F.row_number().over(newest))
        .where(F.col("pos") <= s.max_events_per_user)
        .select("user_id", "item_id", "ts", "pos")
    )


def covisit_pairs(events: DataFrame, s: CovisitSettings) -> DataFrame:
    """Symmetric pair weights: (item_id, neighbor_id, weight) for every ordered pair of distinct
    items some user had within `window_events` positions (and `window_days` days) of each other;
    weight = the number of such users, each user counted once per pair however often they
    repeated it, so one heavy browser cannot make a pair. Both directions carry the same weight.

    The window is a bounded self-join done with window functions: each position looks at the
    `window_events` older positions of the same user with `lead`, so a user's history is sorted
    once and no side of a join is multiplied by the window before a shuffle."""
    by_user = Window.partitionBy("user_id").orderBy("pos")
    later = F.array(
        *[
            F.struct(
                F.lead("item_id", k).over(by_user).alias("item_id"),
                F.lead("ts", k).over(by_user).alias("ts"),
            )
            for k in range(1, s.window_events + 1)
        ]
    )
    # `pos` counts from the newest, so the positions after an event (lead) are the older ones.
    # Spark evaluates window functions in their own operator: the array first, then the explode.
    near = (
        events.withColumn("_later", later)
        .select("user_id", "item_id", "ts", F.explode("_later").alias("_older"))
        .where(F.col("_older.item_id").isNotNull() & (F.col("_older.item_id") != F.col("item_id")))
    )
    if s.window_days is not None:
        gap = F.col("ts").cast("long") - F.col("_older.ts").cast("long")  # seconds, >= 0
        near = near.where(gap <= F.lit(s.window_days * _DAY_SECONDS))
    # One row per user and unordered pair: `near` is still partitioned by user, so this distinct
    # needs no shuffle, and only the pairs (one direction) cross the network to be counted.
    unordered = near.select(
        "user_id",
        F.least("item_id", "_older.item_id").alias("a"),
        F.greatest("item_id", "_older.item_id").alias("b"),
    ).distinct()
    weights = unordered.groupBy("a", "b").agg(F.count(F.lit(1)).alias("weight"))
    both = weights.select(
        F.explode(
            F.array(
                F.struct(F.col("a").alias("item_id"), F.col("b").alias("neighbor_id"), "weight"),
                F.struct(F.col("b").alias("item_id"), F.col("a").alias("neighbor_id"), "weight"),
            )
        ).alias("_pair")
    )
    return both.select("_pair.item_id", "_pair.neighbor_id", "_pair.weight")


def top_neighbors(pairs: DataFrame, s: CovisitSettings, catalog: DataFrame | None = None) -> DataFrame:
    """Each item's `neighbors_per_item` heaviest neighbours, ties by neighbor_id (deterministic:
    a rerun keeps the same list). With `catalog` (item_id), only its items may be neighbours: an
    item co-visited in the past but no longer listed takes no slot. Columns: item_id,
    neighbor_id, weight."""
    if catalog is not None:
        listed = catalog.select(F.col("item_id").alias("neighbor_id"))
        pairs = pairs.join(listed, "neighbor_id", "left_semi")
    heaviest = Window.partitionBy("item_id").orderBy(F.col("weight").desc(), F.col("neighbor_id"))
    return (
        pairs.withColumn("_n", F.row_number().over(heaviest))
        .where(F.col("_n") <= s.neighbors_per_item)
        .drop("_n")
    )


def seed_items(events: DataFrame, users: DataFrame, s: CovisitSettings) -> DataFrame:
    """Each covered user's `seed_items` most recent distinct items (by their newest position,
    ties by item_id) with the seed's weight `seed_decay ** (recency rank - 1)`. Columns:
    user_id, item_id, seed_weight."""
    latest = (
        events.join(users.select("user_id"), "user_id", "left_semi")
        .groupBy("user_id", "item_id")
        .agg(F.max("ts").alias("_last"))
    )
    newest = Window.partitionBy("user_id").orderBy(F.col("_last").desc(), F.col("item_id"))
    ranked = latest.withColumn("_r", F.row_number().over(newest)).where(F.col("_r") <= s.seed_items)
    return ranked.select(
        "user_id", "item_id", F.pow(F.lit(s.seed_decay), F.col("_r") - 1).alias("seed_weight")
    )


def bought_items(behaviors: DataFrame, dt: RunDate, s: CovisitSettings) -> DataFrame:
    """(user_id, item_id) purchased with ts in [dt - bought_days, dt): what the tag channel's
    validation also refuses to recommend."""
    since = dt.minus(s.bought_days)
    return (
        behaviors.where(
            (F.col("behavior") == "purchase")
            & F.col("item_id").isNotNull()
            & (F.col("ts") < F.lit(dt.iso).cast("timestamp"))
            & (F.col("ts") >= F.lit(since.iso).cast("timestamp"))
        )
        .select("user_id", "item_id")
        .distinct()
    )


def recall(seeds: DataFrame, neighbors: DataFrame, bought: DataFrame, s: CovisitSettings) -> DataFrame:
    """Per user, score = sum over their seeds of seed_weight x the seed-candidate pair weight
    (only the seed's kept neighbours count); seeds and bought items excluded; ranked by score
    desc then item_id, the first `top_k`. A user whose seeds have no neighbour left gets no
    row. Columns: user_id, rank, item_id, score."""
    scored = (
        seeds.join(neighbors, "item_id")
        .groupBy("user_id", F.col("neighbor_id").alias("item_id"))
        .agg(F.sum(F.col("seed_weight") * F.col("weight").cast("double")).alias("score"))
    )
    excluded = seeds.select("user_id", "item_id").unionByName(bought.select("user_id", "item_id"))
    candidates = scored.join(excluded, ["user_id", "item_id"], "left_anti")
    best = Window.partitionBy("user_id").orderBy(F.col("score").desc(), F.col("item_id"))
    return (
        candidates.withColumn("rank", F.row_number().over(best))
        .where(F.col("rank") <= s.top_k)
        .select("user_id", F.col("rank").cast("int").alias("rank"), "item_id", "score")
    )
