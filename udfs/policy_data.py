"""Training examples for the tag experts, from the warehouse of a training date: one row per
(user, persona) the Global Planner gave on that date, with everything the Expert's prompt reads
(the persona and the user's situation) and everything its tags are rewarded against (the reward
window's categories, the newest history titles, the items bought just before the date).

The reward window is [dt, dt + window_days): the days after the training date, which evaluation
must never score (`recgpt.policy.rewards.check_no_leakage` refuses them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from recgpt.rundate import RunDate
from recgpt.tables import BEHAVIORS, ITEMS, USER_CONTEXT, USER_PERSONAS, USERS
from sparkio.warehouse import Warehouse
from udfs.judge import newest_titles
from udfs.mining import SITUATION_COLUMNS, purchase_titles, situations
from udfs.recall import recently_bought


def window_categories(
    wh: Warehouse, dt: RunDate, window_days: int, behaviors: Sequence[str], categories: DataFrame
) -> DataFrame:
    """user_id, window_categories: the distinct categories of each user's item interactions on
    [dt, dt + window_days) (the reward window); users without any are absent."""
    end = dt.plus(window_days)
    return (
        wh.read(BEHAVIORS, dt_from=dt, dt_to=dt.plus(window_days - 1))
        .where(
            F.col("behavior").isin(list(behaviors))
            & F.col("item_id").isNotNull()
            & (F.col("ts") >= F.lit(dt.iso).cast("timestamp"))
            & (F.col("ts") < F.lit(end.iso).cast("timestamp"))
        )
        .join(categories, "item_id")
        .where(F.col("category").isNotNull())
        .groupBy("user_id")
        .agg(F.array_sort(F.collect_set("category")).alias("window_categories"))
    )


def training_examples(
    spark: SparkSession,
    wh: Warehouse,
    dt: RunDate,
    variant: Column,
    cfg: Mapping[str, Any],
    calendar_cfg: Mapping[str, Any],
) -> DataFrame:
    """One row per (user, persona) of the variant's planner on `dt`, for the users with at least
    one interaction in the reward window, at most `cfg.sample_users` users (a seeded order):
    user_id, persona_rank, name, description, evidence, signals, the situation columns, history
    (newest titles), excluded (recent purchases), bought_titles (their titles), categories_line
    (the first line of the user's compressed context, "" without one) and window_categories.

    `cfg`: window_days, behaviors, history_items, bought_days, sample_users (null: all), seed."""
    items = wh.read_snapshot(ITEMS, dt.plus(int(cfg["window_days"])))
    categories = items.select("item_id", "category")
    truth = window_categories(wh, dt, int(cfg["window_days"]), cfg["behaviors"], categories)
    personas = (
        wh.read(USER_PERSONAS, dt=dt)
        .where(variant)
        .select("user_id", "persona_rank", "name", "description", "evidence", "signals")
        .join(truth, "user_id")
    )
    users = personas.select("user_id").distinct()
    if cfg.get("sample_users") is not None:
        users = users.orderBy(F.xxhash64("user_id", F.lit(int(cfg["seed"]))), "user_id").limit(
            int(cfg["sample_users"])
        )
    personas = personas.join(users, "user_id", "left_semi")
    titles = newest_titles(wh, dt, wh.read_snapshot(ITEMS, dt), users, int(cfg["history_items"]))
    region = (
        wh.read_snapshot(USERS, dt).select("user_id", "region")
        if wh.exists(USERS)
        else users.select("user_id", F.lit(None).cast("string").alias("region"))
    )
    situation = situations(spark, wh, dt, calendar_cfg)
    # Both compressed contexts open with the same categories line: mining grounds tags in it.
    lines = wh.read(USER_CONTEXT, dt=dt).select(
        "user_id", F.substring_index("v1_text", "\n", 1).alias("categories_line")
    )
    return (
        personas.join(titles, "user_id", "left")
        .join(lines, "user_id", "left")
        .join(recently_bought(wh, dt, int(cfg["bought_days"])), "user_id", "left")
        .join(purchase_titles(wh, dt, int(cfg["bought_days"])), "user_id", "left")
        .join(region, "user_id", "left")
        .join(F.broadcast(situation), "region", "left")
        .select(
            "user_id",
            "persona_rank",
            "name",
            "description",
            "evidence",
            "signals",
            *SITUATION_COLUMNS,
            F.coalesce("history", F.array().cast("array<string>")).alias("history"),
            F.coalesce("excluded", F.array().cast("array<string>")).alias("excluded"),
            F.coalesce("bought_titles", F.array().cast("array<string>")).alias("bought_titles"),
            F.coalesce("categories_line", F.lit("")).alias("categories_line"),
            "window_categories",
        )
        .orderBy("user_id", "persona_rank")
    )
