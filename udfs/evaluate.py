"""Offline evaluation inside Spark: one row per (pipeline variant, user) with the user's tags and
their recalled items, what the user did in the held-out window, the history's categories, the
planted personas and the co-visitation list; a mapInArrow scores each row with recgpt.metrics.
Then the per-variant figures of the scored rows and the warehouse (means, coverage, failures,
LLM tokens) that recgpt.metrics turns into eval_metrics, and the tags the report samples."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from recgpt.metrics import bootstrap_difference, bootstrap_mean, user_metrics
from recgpt.rundate import RunDate
from recgpt.tables import (
    BEHAVIORS,
    COVISIT_RECALL,
    ITEMS,
    LLM_CALLS,
    MINING_FAILURES,
    PLANTED_PERSONAS,
    TAG_RECALL,
    USER_INTENT_TAGS,
)
from sparkio.warehouse import Warehouse
from udfs.embeddings import embedder_for

SCORED = pa.schema(
    [
        pa.field("pipeline", pa.string()),
        pa.field("context_mode", pa.string()),
        pa.field("user_id", pa.string()),
        pa.field("tagged", pa.bool_()),
        pa.field("hr", pa.float64()),
        pa.field("recall_tags", pa.float64()),
        pa.field("recall_covisit", pa.float64()),
        pa.field("exclusive_recall", pa.float64()),
        pa.field("diversity", pa.float64()),
        pa.field("novelty", pa.float64()),
        pa.field("persona_recovery", pa.float64()),
        pa.field("hr_history", pa.float64()),
        pa.field("hr_history_top1", pa.float64()),
        pa.field("hr_history_top3", pa.float64()),
        pa.field("hr_popular", pa.float64()),
        pa.field("hr_popular_top1", pa.float64()),
        pa.field("hr_popular_top3", pa.float64()),
        pa.field("tag_categories", pa.list_(pa.string())),
        pa.field("recalled", pa.list_(pa.string())),
    ]
)


# A mined variant: the partition columns of the mined tables.
VARIANT = ["pipeline", "context_mode"]
Variant = tuple[str, str]


def heldout(
    wh: Warehouse, dt: RunDate, window_days: int, behaviors: Sequence[str], categories: DataFrame
) -> DataFrame:
    """Per user with item interactions on [dt, dt + window_days): the distinct items and the
    category of the first interaction (earliest ts, then smallest item id)."""
    end = dt.plus(window_days)
    events = (
        wh.read(BEHAVIORS, dt_from=dt, dt_to=dt.plus(window_days - 1))
        .where(
            F.col("behavior").isin(list(behaviors))
            & F.col("item_id").isNotNull()
            & (F.col("ts") >= F.lit(dt.iso).cast("timestamp"))
            & (F.col("ts") < F.lit(end.iso).cast("timestamp"))
        )
        .select("user_id", "item_id", "ts")
        .join(categories, "item_id", "left")
    )
    first = Window.partitionBy("user_id").orderBy("ts", "item_id")
    return (
        events.withColumn("n", F.row_number().over(first))
        .groupBy("user_id")
        .agg(
            F.collect_set("item_id").alias("heldout"),
            F.max(F.when(F.col("n") == 1, F.col("category"))).alias("next_category"),
        )
    )


def history_behaviours(
    wh: Warehouse, dt: RunDate, lookback_days: int, behaviors: Sequence[str], categories: DataFrame
) -> DataFrame:
    """The reliable history the agents read (ts < dt, within `lookback_days`), each behaviour
    with its item's category."""
    since = dt.minus(lookback_days)
    return (
        wh.read(BEHAVIORS, dt_from=since, dt_to=dt.minus(1))
        .where(
            F.col("behavior").isin(list(behaviors))
            & (F.col("ts") < F.lit(dt.iso).cast("timestamp"))
            & (F.col("ts") >= F.lit(since.iso).cast("timestamp"))
        )
        .join(categories, "item_id")
    )


def history_categories(
    wh: Warehouse, dt: RunDate, lookback_days: int, behaviors: Sequence[str], categories: DataFrame
) -> DataFrame:
    """Per user, over the reliable history the agents read (ts < dt): its distinct categories
    (`history_categories`) and the behaviours in each (`history_category_counts`, a map)."""
    return (
        history_behaviours(wh, dt, lookback_days, behaviors, categories)
        .groupBy("user_id", "category")
        .count()
        .groupBy("user_id")
        .agg(
            F.sort_array(F.collect_list("category")).alias("history_categories"),
            F.map_from_entries(F.collect_list(F.struct("category", "count"))).alias(
                "history_category_counts"
            ),
        )
    )


def popular_categories(
    wh: Warehouse,
    dt: RunDate,
    lookback_days: int,
    behaviors: Sequence[str],
    categories: DataFrame,
    n: int,
) -> list[str]:
    """The n categories with the most behaviours over the history window before dt (ties:
    alphabetical): the popularity baseline, the same list for every user."""
    rows = (
        history_behaviours(wh, dt, lookback_days, behaviors, categories)
        .groupBy("category")
        .count()
        .orderBy(F.col("count").desc(), "category")
        .limit(n)
        .collect()
    )
    return [str(r.category) for r in rows]


def item_categories(wh: Warehouse, as_of: RunDate) -> DataFrame:
    """item_id, category of the catalog snapshot as of `as_of` (the end of the held-out window,
    so items first listed in the window have a category too)."""
    return wh.read_snapshot(ITEMS, as_of).select("item_id", "category")


def category_counts(users: DataFrame, categories: DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, held-out) behaviour counts per category (columns category, count) over the
    evaluation rows of `users` (one row per user), for the report's category plot."""
    history = (
        users.select(F.explode("history_category_counts").alias("category", "n"))
        .groupBy("category")
        .agg(F.sum("n").alias("count"))
        .toPandas()
    )
    held = (
        users.select(F.explode("heldout").alias("item_id"))
        .join(categories, "item_id")
        .groupBy("category")
        .count()
        .toPandas()
    )
    return history, held


def planted(wh: Warehouse, dt: RunDate) -> DataFrame | None:
    """Per user: the planted personas' category sets (synthetic data only), from the newest
    generation on or before dt."""
    if not wh.exists(PLANTED_PERSONAS):
        return None
    rows = wh.read(PLANTED_PERSONAS, dt_to=dt)
    latest = rows.agg(F.max("dt")).first()
    if latest is None or latest[0] is None:
        return None
    return (
        rows.where(F.col("dt") == F.lit(latest[0]))
        .groupBy("user_id")
        .agg(F.collect_list("categories").alias("planted"))
    )


def tags_with_items(wh: Warehouse, dt: RunDate, categories: DataFrame, k: int) -> DataFrame:
    """Per (variant, user): the final tags best first, each with its k best recalled items,
    their categories and scores."""
    tags = wh.read(USER_INTENT_TAGS, dt=dt).select(
        "pipeline", "context_mode", "user_id", F.col("rank").alias("tag_rank"), "tag"
    )
    recalled = (
        wh.read(TAG_RECALL, dt=dt)
        .where(F.col("rank") <= k)
        .join(categories, "item_id", "left")
        .groupBy("pipeline", "context_mode", "user_id", "tag_rank")
        .agg(F.array_sort(F.collect_list(F.struct("rank", "item_id", "category", "score"))).alias("r"))
        .select(
            "pipeline",
            "context_mode",
            "user_id",
            "tag_rank",
            F.col("r.item_id").alias("items"),
            F.col("r.category").alias("categories"),
            F.col("r.score").alias("scores"),
        )
    )
    empty_s = F.array().cast("array<string>")
    per_tag = tags.join(recalled, ["pipeline", "context_mode", "user_id", "tag_rank"], "left").select(
        "pipeline",
        "context_mode",
        "user_id",
        F.struct(
            "tag_rank",
            "tag",
            F.coalesce("items", empty_s).alias("items"),
            F.coalesce("categories", empty_s).alias("categories"),
            F.coalesce("scores", F.array().cast("array<double>")).alias("scores"),
        ).alias("t"),
    )
    return per_tag.groupBy("pipeline", "context_mode", "user_id").agg(
        F.array_sort(F.collect_list("t")).alias("tags")
    )


def covisit_lists(wh: Warehouse, dt: RunDate, k: int) -> DataFrame | None:
    """Per user: the co-visitation channel's k best items, best first."""
    if not wh.exists(COVISIT_RECALL):
        return None
    return (
        wh.read(COVISIT_RECALL, dt=dt)
        .where(F.col("rank") <= k)
        .groupBy("user_id")
        .agg(F.array_sort(F.collect_list(F.struct("rank", "item_id"))).alias("c"))
        .select("user_id", F.col("c.item_id").alias("covisit"))
    )


def evaluation_rows(
    wh: Warehouse,
    dt: RunDate,
    cfg: Mapping[str, Any],
    lookback_days: int,
    history_behaviors: Sequence[str],
) -> DataFrame:
    """One row per (variant, mined user) with everything the user's metrics need: the users of
    user_intent_tags and of mining_failures, so a user the mining failed counts (as a miss)."""
    categories = item_categories(wh, dt.plus(int(cfg["window_days"])))
    keys = ["pipeline", "context_mode", "user_id"]
    base = wh.read(USER_INTENT_TAGS, dt=dt).select(*keys).distinct()
    if wh.exists(MINING_FAILURES):
        base = base.unionByName(wh.read(MINING_FAILURES, dt=dt).select(*keys)).distinct()
    rows = base.join(
        tags_with_items(wh, dt, categories, int(cfg["k"])), ["pipeline", "context_mode", "user_id"], "left"
    )
    rows = rows.join(
        heldout(wh, dt, int(cfg["window_days"]), cfg["behaviors"], categories), "user_id", "left"
    )
    rows = rows.join(
        history_categories(wh, dt, lookback_days, history_behaviors, categories), "user_id", "left"
    )
    personas = planted(wh, dt)
    rows = (
        rows.join(personas, "user_id", "left")
        if personas is not None
        else rows.withColumn("planted", F.lit(None).cast("array<array<string>>"))
    )
    covisit = covisit_lists(wh, dt, int(cfg["k"]))
    rows = (
        rows.join(covisit, "user_id", "left")
        if covisit is not None
        else rows.withColumn("covisit", F.lit(None).cast("array<string>"))
    )
    return rows


def scorer(
    embedding_cfg: Mapping[str, Any], k: int, category_items: int, popular: Sequence[str]
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        embedder = embedder_for(embedding_cfg)
        for batch in batches:
            users = batch.to_pylist()
            texts = sorted({t["tag"] for u in users for t in (u["tags"] or ())})
            vectors = embedder.encode(texts) if texts else np.zeros((0, embedder.dimension))
            position = {tag: i for i, tag in enumerate(texts)}
            out: dict[str, list[Any]] = {name: [] for name in SCORED.names}
            for u in users:
                tags = u["tags"] or []
                tag_vectors = vectors[[position[t["tag"]] for t in tags]] if tags else None
                m = user_metrics(
                    [(t["items"], t["categories"], t["scores"]) for t in tags],
                    heldout=u["heldout"] or (),
                    next_category=u["next_category"],
                    history_categories=u["history_categories"] or (),
                    planted=u["planted"] or (),
                    covisit=u["covisit"] or (),
                    tag_vectors=tag_vectors,
                    k=k,
                    category_items=category_items,
                    # A map column arrives as (key, value) pairs.
                    history_counts=dict(u["history_category_counts"] or ()),
                    popular=popular,
                )
                for name in ("pipeline", "context_mode", "user_id"):
                    out[name].append(u[name])
                out["tagged"].append(bool(tags))
                for name in SCORED.names[4:]:
                    out[name].append(m[name])
            yield pa.RecordBatch.from_pydict(out, schema=SCORED)

    return run


def score_users(
    rows: DataFrame,
    embedding_cfg: Mapping[str, Any],
    k: int,
    category_items: int,
    popular: Sequence[str] = (),
) -> DataFrame:
    """SCORED rows, one per input row; lazy. `popular`: the popularity baseline's categories."""
    return rows.mapInArrow(
        scorer(dict(embedding_cfg), k, category_items, list(popular)), from_arrow_schema(SCORED)
    )


def mined_variants(wh: Warehouse, dt: RunDate) -> DataFrame | None:
    """The (pipeline, context_mode, model) variants mined for dt: those with final tags or
    mining failures; None when neither table exists yet."""
    frames = [
        wh.read(spec, dt=dt).select(*VARIANT, "model")
        for spec in (USER_INTENT_TAGS, MINING_FAILURES)
        if wh.exists(spec)
    ]
    if not frames:
        return None
    variants = frames[0]
    for frame in frames[1:]:
        variants = variants.unionByName(frame)
    return variants.groupBy(*VARIANT).agg(F.first("model").alias("model"))


def heldout_users(scored: DataFrame) -> int:
    """Users with an interaction in the held-out window (those whose tag recall is defined)."""
    return scored.where(F.col("recall_tags").isNotNull()).select("user_id").distinct().count()


def variant_means(scored: DataFrame, means: Sequence[tuple[str, str]]) -> dict[Variant, dict[str, Any]]:
    """Per variant of the SCORED rows: for each (metric, column) of `means` the column's mean
    under the metric's name and its non-null count under `<metric>__n`; the `tagged` users and
    all evaluated `users`."""
    aggs = []
    for name, column in means:
        aggs += [F.avg(column).alias(name), F.count(column).alias(f"{name}__n")]
    totals = scored.groupBy(*VARIANT).agg(
        *aggs, F.sum(F.col("tagged").cast("int")).alias("tagged"), F.count("*").alias("users")
    )
    return {(r["pipeline"], r["context_mode"]): r.asDict() for r in totals.collect()}


def recalled_items(scored: DataFrame) -> dict[Variant, int]:
    """Per variant: the distinct items in its users' tag-recall lists (its catalog coverage)."""
    per_variant = (
        scored.select(*VARIANT, F.explode("recalled").alias("item_id"))
        .groupBy(*VARIANT)
        .agg(F.countDistinct("item_id").alias("items"))
    )
    return {(r["pipeline"], r["context_mode"]): int(r["items"]) for r in per_variant.collect()}


def covisit_items(wh: Warehouse, dt: RunDate, k: int) -> int:
    """The distinct items among the co-visitation channel's k best per user (0 without it)."""
    if not wh.exists(COVISIT_RECALL):
        return 0
    return wh.read(COVISIT_RECALL, dt=dt).where(F.col("rank") <= k).select("item_id").distinct().count()


def failed_users(wh: Warehouse, dt: RunDate) -> dict[Variant, int]:
    """Per variant: the users whose mining failed (their mining_failures rows)."""
    if not wh.exists(MINING_FAILURES):
        return {}
    per_variant = wh.read(MINING_FAILURES, dt=dt).groupBy(*VARIANT).agg(F.count("*").alias("n"))
    return {(r["pipeline"], r["context_mode"]): int(r["n"]) for r in per_variant.collect()}


def mining_tokens(wh: Warehouse, dt: RunDate) -> dict[Variant, int]:
    """Per variant: the LLM prompt + generated tokens its mining spent, from the llm_calls
    ledger of the `mine_intents.<pipeline>.<context_mode>` steps."""
    if not wh.exists(LLM_CALLS):
        return {}
    rows = (
        wh.read(LLM_CALLS, dt=dt)
        .where(F.col("stage").startswith("mine_intents."))
        .groupBy("stage")
        .agg(F.sum(F.col("prompt_tokens") + F.col("generated_tokens")).alias("tokens"))
        .collect()
    )
    out = {}
    for r in rows:
        _, pipeline, mode = str(r["stage"]).split(".", 2)
        out[(pipeline, mode)] = int(r["tokens"] or 0)
    return out


def sample_tags(wh: Warehouse, dt: RunDate, scored: DataFrame, users: int) -> pd.DataFrame:
    """The final tags (variant, user, rank, tag, the tag's category) of up to `users` tagged
    users, the report's samples; a seeded order (hash of the user id) picks the same users in
    every run."""
    sample = (
        scored.where(F.col("tagged")).select("user_id").distinct().orderBy(F.xxhash64("user_id")).limit(users)
    )
    return (
        wh.read(USER_INTENT_TAGS, dt=dt)
        .join(sample, "user_id")
        .join(scored.select(*VARIANT, "user_id", "tag_categories"), [*VARIANT, "user_id"])
        .select(
            *VARIANT,
            "user_id",
            "rank",
            "tag",
            F.element_at("tag_categories", F.col("rank")).alias("category"),
        )
        .toPandas()
    )


@dataclass(frozen=True)
class Bootstrap:
    """How the intervals are drawn: `replicates` resamples of at most `users` users per variant
    (a seeded sample by user id hash: the driver holds a bounded number of values, never one per
    user of a large night), with `seed`."""

    replicates: int
    users: int
    seed: int


# Per-user columns with an interval: eval_metrics name -> SCORED column (None: 1 - tagged).
def interval_columns(k: int) -> dict[str, str | None]:
    return {
        f"hr{k}": "hr",
        f"recall_at_{k}_tags": "recall_tags",
        f"recall_at_{k}_covisit": "recall_covisit",
        "exclusive_recall": "exclusive_recall",
        "failure_rate": None,
        f"hr{k}_history": "hr_history",
        f"hr{k}_popular": "hr_popular",
    }


def bootstrap_values(scored: DataFrame, k: int, b: Bootstrap) -> pd.DataFrame:
    """The per-user values the intervals resample: one row per (variant, user) of a seeded sample
    of at most `b.users` users (the same users for every variant, so comparisons pair them)."""
    columns = {name: column for name, column in interval_columns(k).items() if column is not None}
    users = (
        scored.select("user_id")
        .distinct()
        .orderBy(F.xxhash64(F.col("user_id"), F.lit(b.seed)), "user_id")
        .limit(b.users)
    )
    return (
        scored.join(users, "user_id")
        .select(
            *VARIANT,
            "user_id",
            *(F.col(column).alias(name) for name, column in columns.items()),
            (1.0 - F.col("tagged").cast("double")).alias("failure_rate"),
        )
        .toPandas()
    )


def intervals(values: pd.DataFrame, k: int, b: Bootstrap) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(pipeline, context_mode, metric) -> 95% bootstrap interval of the variant's mean."""
    out = {}
    for (pipeline, mode), rows in values.groupby(VARIANT):
        for metric in interval_columns(k):
            found = bootstrap_mean(rows[metric].to_numpy(dtype=float), b.replicates, b.seed)
            if found is not None:
                out[(str(pipeline), str(mode), metric)] = found
    return out


def comparisons(values: pd.DataFrame, k: int, b: Bootstrap) -> pd.DataFrame:
    """Paired differences with their bootstrap intervals: every variant against every other on
    their common users (hr, recalls, failure rate), and every variant's HR against the two
    baselines given as many categories as its tags name."""
    compared = [f"hr{k}", f"recall_at_{k}_tags", "exclusive_recall", "failure_rate"]
    by_variant = {(str(p), str(m)): rows.set_index("user_id") for (p, m), rows in values.groupby(VARIANT)}
    records = []

    def add(variant: tuple[str, str], other: str, metric: str, a: pd.Series, other_values: pd.Series) -> None:
        a, other_values = a.align(other_values, join="inner")
        found = bootstrap_difference(
            a.to_numpy(dtype=float), other_values.to_numpy(dtype=float), b.replicates, b.seed
        )
        if found is not None:
            diff, low, high, users = found
            records.append(
                {"pipeline": variant[0], "context_mode": variant[1], "other": other, "metric": metric}
                | {"difference": diff, "ci95_low": low, "ci95_high": high, "users": users}
                | {"replicates": b.replicates}
            )

    for variant, rows in sorted(by_variant.items()):
        for other, other_rows in sorted(by_variant.items()):
            if other != variant:
                for metric in compared:
                    add(variant, ".".join(other), metric, rows[metric], other_rows[metric])
        for baseline in ("history", "popular"):
            add(variant, baseline, f"hr{k}", rows[f"hr{k}"], rows[f"hr{k}_{baseline}"])
    return pd.DataFrame.from_records(
        records,
        columns=[
            "pipeline",
            "context_mode",
            "other",
            "metric",
            "difference",
            "ci95_low",
            "ci95_high",
            "users",
            "replicates",
        ],
    )
