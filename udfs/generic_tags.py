"""The run-wide rule on generic tags (recgpt/agents/generic.py) over mine_intents' tables, applied
once every user of the run is mined and before the tables are replaced: the run's tag rows
counted per folded tag in Spark, the few tags above the limit checked against the catalog's
categories on the driver, then cut to the category they open with or dropped from every user's
list (the rest re-ranked from 1), and users left without a tag turned into failure rows. Applied
to the whole run's rows, so a rerun or a resumed run writes the same tables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recgpt.agents.generic import (
    GENERIC_TAG,
    ONLY_GENERIC_TAGS,
    STEP,
    GenericRule,
    category_prefix,
    category_words,
    names_category,
    tag_key,
)
from recgpt.rundate import RunDate
from recgpt.tables import ITEMS
from sparkio.warehouse import Warehouse

MINED_BY = ("model", "pipeline", "context_mode", "prompt_version")
GENERIC_TAG_CUT = "generic_tag_cut"  # tag rows cut to the category they open with
SHOWN = 5  # generic tags named in the stage summary


@dataclass(frozen=True)
class GenericTags:
    """What the rule did to one run's tables."""

    tags: DataFrame
    failures: DataFrame
    users: int  # users of the run (tagged or failed before the rule)
    limit: int  # the most users a non-category tag could keep
    dropped: dict[str, int]  # generic tag -> users it was dropped (or cut) for
    rows_dropped: int
    users_failed: int
    emptied: DataFrame | None = None  # user_id of the users left without a tag (None: nobody)
    cut: dict[str, str] = field(default_factory=dict)  # generic tag -> the category it opens with
    rows_cut: int = 0  # tag rows cut to their category (not counted in rows_dropped)

    def figures(self) -> dict[str, Any]:
        """The stage summary's line on the rule (and `runs.details`)."""
        ranked = sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0]))
        named = ", ".join(
            f"{t} {n:,}" + (f" -> {self.cut[t]}" if t in self.cut else "") for t, n in ranked[:SHOWN]
        )
        more = f" and {len(self.dropped) - SHOWN:,} more" if len(self.dropped) > SHOWN else ""
        line = f"{len(self.dropped):,} tag(s) given to more than {self.limit:,} of {self.users:,} users" + (
            f" dropped or cut to the category they open with ({named}{more}): {self.rows_dropped:,} tag "
            f"rows dropped, {self.rows_cut:,} cut, {self.users_failed:,} users left without a tag "
            f"({ONLY_GENERIC_TAGS})"
            if self.dropped
            else ""
        )
        return {"generic_tags": line, GENERIC_TAG: self.rows_dropped, GENERIC_TAG_CUT: self.rows_cut}


def category_reader(wh: Warehouse, dt: RunDate) -> Callable[[], list[frozenset[str]]]:
    """The catalog's category names and paths as of dt, as word sets, read when first needed."""

    def read() -> list[frozenset[str]]:
        rows = wh.read_snapshot(ITEMS, dt).select("category", "category_path").distinct().collect()
        return category_words(text for r in rows for text in (r.category, r.category_path))

    return read


def summed_counts(a: Column | str, b: Column | str) -> Column:
    """Two JSON count maps ({"reason": n}; either may be null) as one, the counts of a key added;
    null when both are empty."""
    counts = "map<string,int>"
    empty = F.create_map().cast(counts)
    left, right = (F.coalesce(F.from_json(c, counts), empty) for c in (a, b))
    total = F.map_zip_with(left, right, lambda _, x, y: F.coalesce(x, F.lit(0)) + F.coalesce(y, F.lit(0)))
    return F.when(F.size(total) > 0, F.to_json(total))


def both_minings(failures: DataFrame, again: DataFrame) -> DataFrame:
    """(user_id, rejected, failed_calls) of the users mined again after the rule emptied them:
    the second mining's counts (`again`, its outcomes) plus those of the failure row the rule
    wrote for them among `failures` (the first mining's and the generic tags it lost), so a user
    that fails after the second mining names what both minings rejected."""
    keys = ("rejected", "failed_calls")
    ruled = failures.where((F.col("step") == STEP) & (F.col("reason") == ONLY_GENERIC_TAGS))
    earlier = ruled.select("user_id", *(F.col(k).alias(f"_first_{k}") for k in keys))
    joined = again.select("user_id", *keys).join(earlier, "user_id", "left")
    return joined.select("user_id", *(summed_counts(f"_first_{k}", k).alias(k) for k in keys))


def with_counts(failures: DataFrame, counts: DataFrame) -> DataFrame:
    """Failure rows with their rejected / failed_calls counts taken from `counts` (by user_id)."""
    kept = failures.drop("rejected", "failed_calls").join(counts, "user_id", "left")
    return kept.select(*failures.columns)


def drop_generic(
    spark: SparkSession,
    tags: DataFrame,
    failures: DataFrame,
    rule: GenericRule,
    categories: Callable[[], list[frozenset[str]]],
    calls: DataFrame | None = None,
) -> GenericTags:
    """The tables' `tags` and `failures` rows of one run with the rule applied. `calls`: the
    run's (user_id, rejected, failed_calls) JSON counts, so a user the rule fails keeps the
    validation rejections and failed calls of its mining beside the generic-tag count."""
    users = tags.select("user_id").union(failures.select("user_id")).distinct().count()
    limit = rule.limit(users)
    # A lambda: Spark takes a function with type hints for a pandas UDF.
    keyed = tags.withColumn("_key", F.udf(lambda tag: tag_key(tag), "string")("tag"))
    above = (
        keyed.groupBy("_key")
        .agg(F.countDistinct("user_id").alias("n"), F.min("tag").alias("tag"))
        .where(F.col("n") > limit)
        .collect()
    )
    known = categories() if above else []
    generic = [r for r in above if not names_category(r["tag"], known)]
    if not generic:
        return GenericTags(tags, failures, users, limit, {}, 0, 0)
    cuts = {str(r["tag"]): category_prefix(r["tag"], known) for r in generic}
    ruled = F.broadcast(
        spark.createDataFrame(
            [
                (r["_key"], cut, tag_key(cut) if cut else None)
                for r in generic
                for cut in [cuts[str(r["tag"])]]
            ],
            "_key string, _cut string, _cut_key string",
        ).withColumn("_generic", F.lit(True))
    )
    marked = keyed.join(ruled, "_key", "left")
    # A non-generic row as it is; a generic one cut to its category, or gone. A cut that repeats
    # a tag its user already has (or another cut's) goes too: the better-ranked one stays.
    candidates = marked.where(F.col("_generic").isNull() | F.col("_cut").isNotNull()).select(
        *(F.coalesce("_cut", "tag").alias("tag") if c == "tag" else F.col(c) for c in tags.columns),
        F.coalesce("_cut_key", "_key").alias("_key"),
        F.col("_cut").isNotNull().alias("_was_cut"),
    )
    first = Window.partitionBy("user_id", *MINED_BY, "_key").orderBy("rank")
    kept = candidates.withColumn("_n", F.row_number().over(first)).where(F.col("_n") == 1).drop("_n")
    kept = kept.localCheckpoint()
    row_id = ["user_id", *MINED_BY, "rank"]
    dropped = keyed.join(kept.select(*row_id), row_id, "left_anti")
    dropped = dropped.groupBy("user_id", *MINED_BY).agg(F.count("*").alias("n"))
    rows_cut = kept.where("_was_cut").count()
    kept = kept.withColumn("rank", F.row_number().over(Window.partitionBy("user_id").orderBy("rank")))
    kept = kept.withColumn("rank", F.col("rank").cast("int")).select(*tags.columns)
    emptied = dropped.join(kept.select("user_id").distinct(), "user_id", "left_anti")
    generic_count = F.create_map(F.lit(GENERIC_TAG), F.col("n").cast("int"))
    if calls is not None:
        emptied = emptied.join(calls.select("user_id", "rejected", "failed_calls"), "user_id", "left")
        # Added, not concatenated: a user mined twice already counts generic tags.
        rejected = summed_counts("rejected", F.to_json(generic_count))
        failed_calls = F.col("failed_calls")
    else:
        rejected, failed_calls = F.to_json(generic_count), F.lit(None).cast("string")
    new_failures = emptied.select(
        "user_id",
        F.lit(STEP).alias("step"),
        F.lit(ONLY_GENERIC_TAGS).alias("reason"),
        rejected.alias("rejected"),
        failed_calls.alias("failed_calls"),
        *MINED_BY,
    ).select(*failures.columns)
    totals = dropped.agg(F.sum("n").alias("rows")).first()
    emptied_users = emptied.count()
    assert totals is not None
    return GenericTags(
        kept,
        failures.unionByName(new_failures),
        users,
        limit,
        {str(r["tag"]): int(r["n"]) for r in generic},
        int(totals["rows"] or 0),
        emptied_users,
        emptied.select("user_id") if emptied_users else None,
        {tag: cut for tag, cut in cuts.items() if cut},
        rows_cut,
    )
