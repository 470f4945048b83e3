"""What each stage's data-quality checkpoint validates: the tables the stage's latest run wrote for
the run date, with derived `_` columns that express cross-table rules, and its own row counts.

The dq stage runs these through great-expectations (`udfs/quality.py`) with the suites of
`conf/quality/`; the `_` columns are the ones those suites name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recgpt.agents.prompts import ROUTES
from recgpt.errors import RecGPTError
from recgpt.llm.request import EMBED_MARK
from recgpt.quality import CheckSpec
from recgpt.rundate import RunDate
from recgpt.tables import (
    BEHAVIORS,
    COVISIT_RECALL,
    ENV_SIGNALS,
    EVAL_COMPARISONS,
    EVAL_METRICS,
    EXPLANATION_FAILURES,
    EXPLANATION_JUDGMENTS,
    ITEM_EMBEDDINGS,
    ITEM_EXPLANATIONS,
    ITEMS,
    MINING_FAILURES,
    PLANTED_PERSONAS,
    QUARANTINE,
    RUNS,
    TAG_JUDGMENTS,
    TAG_RECALL,
    USER_CONTEXT,
    USER_INTENT_TAGS,
    USER_PERSONAS,
    USERS,
)
from sparkio.warehouse import Warehouse
from udfs.embeddings import current_embeddings
from udfs.mining_scope import users_in_scope

# eval_metrics rows whose value is a share of users or items, so must lie in [0, 1].
SHARE_METRICS = (
    "^(hr[0-9]+|recall_at_.*|exclusive_recall|persona_recovery|novelty|catalog_coverage_.*|failure_rate"
    "|explain_(pass_rate|diversity|distinct[0-9])_.*|judge_.*)$"
)


@dataclass(frozen=True)
class StageRun:
    """The latest successful run of a stage for a run date (from `runs`): what a checkpoint
    validates is what this run wrote, and some row counts follow from the rows it read."""

    run_id: str
    rows_in: int


@dataclass
class CheckpointTables:
    """The DataFrames a checkpoint validates, by the table names of its suites, and row-count
    expectations of the stage's own that replace the default drift check for those tables."""

    frames: dict[str, DataFrame]
    row_counts: dict[str, CheckSpec] = field(default_factory=dict)


def latest_runs(wh: Warehouse, dt: RunDate) -> dict[str, StageRun]:
    """The latest successful run of every stage for `dt`, from one read of `runs` (one small
    aggregate: a row per stage), so the dq stage does not scan the table once per checkpoint."""
    if not wh.exists(RUNS):
        return {}
    latest = (
        wh.read(RUNS, dt=dt)
        .where(F.col("status") == "success")
        .groupBy("stage")
        .agg(F.max_by(F.struct("run_id", "rows_in"), "created_at").alias("run"))
        .collect()
    )
    return {
        str(row["stage"]): StageRun(str(row["run"]["run_id"]), int(row["run"]["rows_in"] or 0))
        for row in latest
    }


def latest_run(runs: Mapping[str, StageRun], stage: str, dt: RunDate) -> StageRun:
    """`stage`'s entry in `runs` (from `latest_runs`); a RecGPTError telling which stage to run
    when it has no successful run for `dt`."""
    run = runs.get(stage)
    if run is None:
        raise RecGPTError(f"no successful {stage} run for dt={dt}: run `python -m jobs.{stage}` first")
    return run


def derive_behaviors(df: DataFrame, items: DataFrame, until: str) -> DataFrame:
    """_item_known: an item event refers to a catalog item; _query_ok: a search carries a query;
    _age_days: days from the event to the ingest end date (negative = from the future)."""
    known = items.select(F.col("item_id").alias("_known_id")).distinct()
    is_search = F.col("behavior") == "search"
    return (
        df.join(known, F.col("item_id") == F.col("_known_id"), "left")
        .withColumn("_item_known", is_search | F.col("_known_id").isNotNull())
        .withColumn("_query_ok", ~is_search | (F.length(F.trim(F.coalesce(F.col("query"), F.lit("")))) > 0))
        .withColumn("_age_days", F.datediff(F.lit(until).cast("date"), F.col("dt")))
        .drop("_known_id")
    )


def derive_items(df: DataFrame) -> DataFrame:
    """_title_chars: the title's length (bounded by the ingest's title limit)."""
    return df.withColumn("_title_chars", F.length("title"))


def ingest_tables(
    wh: Warehouse, dt: RunDate, run: StageRun, until: str, quarantine_warn_fraction: float
) -> CheckpointTables:
    """What the ingest `run` wrote for the run date, with derived columns (behaviours against the
    catalog and the ingest end date `until`), and the quarantine's row count as a share of the
    rows read instead of a comparison with the previous run."""
    mine = F.col("run_id") == F.lit(run.run_id)
    items = wh.read(ITEMS, dt=dt).where(mine)
    frames = {
        BEHAVIORS.name: derive_behaviors(wh.read(BEHAVIORS).where(mine), items, until),
        ITEMS.name: derive_items(items),
        QUARANTINE.name: wh.read(QUARANTINE, dt=dt).where(F.col("stage") == "ingest"),
    }
    if wh.exists(USERS):
        frames[USERS.name] = wh.read(USERS, dt=dt).where(mine)
    if wh.exists(ENV_SIGNALS):
        frames[ENV_SIGNALS.name] = wh.read(ENV_SIGNALS).where(mine)
    if wh.exists(PLANTED_PERSONAS):
        planted = wh.read(PLANTED_PERSONAS, dt=dt).where(mine)
        if not planted.isEmpty():  # ground truth exists for synthetic sources only
            frames[PLANTED_PERSONAS.name] = planted
    limit = int(quarantine_warn_fraction * run.rows_in)
    quarantined = CheckSpec(
        QUARANTINE.name,
        "expect_table_row_count_to_be_between",
        "warning",
        {"min_value": 0, "max_value": limit},
    )
    return CheckpointTables(frames, {QUARANTINE.name: quarantined})


def embed_items_tables(wh: Warehouse, dt: RunDate, run: StageRun, embedding_model: str) -> CheckpointTables:
    """The vectors the embed_items `run` wrote (with their length and norm), and the catalog
    snapshot joined to its current vectors (every item must have one)."""
    written = wh.read(ITEM_EMBEDDINGS, dt=dt).where(F.col("run_id") == F.lit(run.run_id))
    squares = F.aggregate("embedding", F.lit(0.0).cast("double"), lambda acc, x: acc + x * x)
    frames = {
        ITEM_EMBEDDINGS.name: written.withColumn("_length", F.size("embedding")).withColumn(
            "_norm", F.sqrt(squares)
        ),
        "item_embeddings_current": current_embeddings(wh, dt, embedding_model).withColumn(
            "_has_vector", F.col("embedding").isNotNull()
        ),
    }
    # Incremental: a run embeds only what changed, so its row count says nothing about health.
    counts = {
        ITEM_EMBEDDINGS.name: CheckSpec(
            ITEM_EMBEDDINGS.name, "expect_table_row_count_to_be_between", "warning", {"min_value": 0}
        )
    }
    return CheckpointTables(frames, counts)


def compress_tables(wh: Warehouse, dt: RunDate, run: StageRun) -> CheckpointTables:
    """The contexts the compress `run` wrote, with consistency columns; and every user with a
    behaviour before the run date (the rows it read) must have exactly one."""
    contexts = wh.read(USER_CONTEXT, dt=dt).where(F.col("run_id") == F.lit(run.run_id))
    marks = F.size(F.split(F.col("hybrid_text"), re.escape(EMBED_MARK))) - 1
    frame = (
        contexts.withColumn("_marks_ok", marks == F.size("entity_ids"))
        .withColumn("_kept_ok", F.col("events_kept") <= F.col("events"))
        .withColumn("_hybrid_keeps_more", F.col("hybrid_dropped_buckets") <= F.col("v1_dropped_buckets"))
    )
    counts = {
        USER_CONTEXT.name: CheckSpec(
            USER_CONTEXT.name, "expect_table_row_count_to_equal", "critical", {"value": run.rows_in}
        )
    }
    return CheckpointTables({USER_CONTEXT.name: frame}, counts)


def covisit_tables(wh: Warehouse, dt: RunDate, run: StageRun) -> CheckpointTables:
    """The recall the covisit `run` wrote, with per-user rank contiguity, score order and whether
    each user is one compress gave a history (the channel recalls for no one else). How many
    users get candidates depends on the data: the row count is checked for drift."""
    rows = wh.read(COVISIT_RECALL, dt=dt).where(F.col("run_id") == F.lit(run.run_id))
    with_history = (
        wh.read(USER_CONTEXT, dt=dt)
        .where(F.col("events_kept") > 0)
        .select("user_id", F.lit(True).alias("_user_known"))
    )
    per_user = Window.partitionBy("user_id")
    by_rank = per_user.orderBy("rank")
    frame = (
        rows.join(with_history, "user_id", "left")
        .withColumn("_user_known", F.coalesce("_user_known", F.lit(False)))
        .withColumn("_ranks_ok", F.max("rank").over(per_user) == F.count("*").over(per_user))
        # Rank r never scores above rank r-1.
        .withColumn("_order_ok", F.coalesce(F.lag("score").over(by_rank) >= F.col("score"), F.lit(True)))
    )
    return CheckpointTables({COVISIT_RECALL.name: frame})


def mine_intents_tables(
    wh: Warehouse, dt: RunDate, users_file: str | None, n_tags: int, m_tags: int
) -> CheckpointTables:
    """The mined tables of the date (every pipeline variant that ran), with per-user tag counts
    (V2 keeps at most `n_tags`, V1 up to `m_tags` per route) and rank contiguity; and the
    coverage: each variant accounts for every user in scope with a history (`users_file`
    limits the scope), in user_intent_tags or in mining_failures, exactly once."""
    variant = ["pipeline", "context_mode"]
    tags = wh.read(USER_INTENT_TAGS, dt=dt)
    per_user = Window.partitionBy(*variant, "user_id")
    # V1 has no arbiter: its routes' validated tags are kept, up to M per route.
    most = F.when(F.col("pipeline") == "v1_baseline", m_tags * len(ROUTES))
    tag_frame = (
        tags.withColumn("_words", F.size(F.split(F.trim("tag"), r"\s+")))
        .withColumn("_chars", F.length("tag"))
        .withColumn("_user_tags", F.count("*").over(per_user))
        .withColumn("_ranks_ok", F.max("rank").over(per_user) == F.col("_user_tags"))
        .withColumn("_count_ok", F.col("_user_tags") <= most.otherwise(n_tags))
    )
    failures = wh.read(MINING_FAILURES, dt=dt)
    tagged = tags.select(*variant, "user_id").distinct()
    failure_frame = failures.join(
        tagged.withColumn("_has_tags", F.lit(True)), [*variant, "user_id"], "left"
    ).withColumn("_has_tags", F.coalesce("_has_tags", F.lit(False)))
    outcomes = tagged.unionByName(failures.select(*variant, "user_id"))
    with_history = users_in_scope(wh.spark, wh, dt, users_file).count()
    variants = outcomes.select(*variant).distinct().count()
    frames = {
        USER_PERSONAS.name: wh.read(USER_PERSONAS, dt=dt),
        USER_INTENT_TAGS.name: tag_frame,
        MINING_FAILURES.name: failure_frame,
        "mining_coverage": outcomes,
    }
    counts = {
        "mining_coverage": CheckSpec(
            "mining_coverage",
            "expect_table_row_count_to_equal",
            "critical",
            {"value": with_history * variants},
        ),
        # How many users fail depends on the model; the share is a warning in the suite.
        MINING_FAILURES.name: CheckSpec(
            MINING_FAILURES.name, "expect_table_row_count_to_be_between", "warning", {"min_value": 0}
        ),
    }
    return CheckpointTables(frames, counts)


def recall_tables(wh: Warehouse, dt: RunDate) -> CheckpointTables:
    """The tag-recall rows of the date, and each recalled tag checked against the final tags it
    came from (a recall row for a tag the user does not have is lineage gone wrong)."""
    keys = ["pipeline", "context_mode", "user_id"]
    tags = wh.read(USER_INTENT_TAGS, dt=dt).select(*keys, F.col("rank").alias("tag_rank"), "tag")
    frame = (
        wh.read(TAG_RECALL, dt=dt)
        .join(tags.withColumn("_tag_known", F.lit(True)), [*keys, "tag_rank", "tag"], "left")
        .withColumn("_tag_known", F.coalesce("_tag_known", F.lit(False)))
    )
    return CheckpointTables({TAG_RECALL.name: frame})


def explain_tables(wh: Warehouse, dt: RunDate) -> CheckpointTables:
    """The explanations of the date (every variant explained), each checked against the recall
    it explains (`_item_recalled`: the item is its tag's first recalled item), with its length in
    characters and `_guide_ok` (a meta line carries its style guide); the failures; and the
    coverage: each (variant, pair, mode) written or failed, exactly once."""
    keys = ["pipeline", "context_mode", "user_id", "tag_rank"]
    firsts = (
        wh.read(TAG_RECALL, dt=dt)
        .where(F.col("rank") == 1)
        .select(*keys, "item_id")
        .withColumn("_item_recalled", F.lit(True))
    )
    written = (
        wh.read(ITEM_EXPLANATIONS, dt=dt)
        .join(firsts, [*keys, "item_id"], "left")
        .withColumn("_item_recalled", F.coalesce("_item_recalled", F.lit(False)))
        .withColumn("_chars", F.length("explanation"))
        .withColumn("_guide_ok", (F.col("explanation_mode") != "meta") | F.col("style_guide").isNotNull())
    )
    failed = wh.read(EXPLANATION_FAILURES, dt=dt)
    coverage = written.select(*keys, "explanation_mode").unionByName(failed.select(*keys, "explanation_mode"))
    return CheckpointTables(
        {
            ITEM_EXPLANATIONS.name: written,
            EXPLANATION_FAILURES.name: failed,
            "explanation_coverage": coverage,
        },
        # How many fail depends on the model; the rules' counts are in the stage summary.
        {
            EXPLANATION_FAILURES.name: CheckSpec(
                EXPLANATION_FAILURES.name, "expect_table_row_count_to_be_between", "warning", {"min_value": 0}
            )
        },
    )


def judge_tables(wh: Warehouse, dt: RunDate) -> CheckpointTables:
    """The judgments of the date, with what the gate on meaning reads: `_is_b` (1 for a B grade,
    so the column's mean is the night's share of B) per row, and on the tags `_top_tag_share`,
    per variant the share of its judged users given its most repeated tag."""
    keys = ["pipeline", "context_mode"]
    tags = wh.read(TAG_JUDGMENTS, dt=dt).withColumn("_is_b", (F.col("grade") == "B").cast("double"))
    users = tags.groupBy(*keys).agg(F.countDistinct("user_id").alias("_users"))
    top = (
        tags.groupBy(*keys, "tag")
        .agg(F.countDistinct("user_id").alias("_n"))
        .groupBy(*keys)
        .agg(F.max("_n").alias("_n"))
        .join(users, keys)
        .select(*keys, (F.col("_n") / F.col("_users")).alias("_top_tag_share"))
    )
    lines = wh.read(EXPLANATION_JUDGMENTS, dt=dt).withColumn("_is_b", (F.col("grade") == "B").cast("double"))
    return CheckpointTables(
        {TAG_JUDGMENTS.name: tags.join(top, keys, "left"), EXPLANATION_JUDGMENTS.name: lines}
    )


def evaluate_tables(wh: Warehouse, dt: RunDate) -> CheckpointTables:
    """The date's metrics, with `_share` = the value of the metrics that are shares (hit rates,
    recalls, coverage, failure rate), which must lie in [0, 1]; and its paired comparisons."""
    metrics = wh.read(EVAL_METRICS, dt=dt)
    shares = F.col("metric").rlike(SHARE_METRICS)
    tables = {EVAL_METRICS.name: metrics.withColumn("_share", F.when(shares, F.col("value")))}
    if wh.exists(EVAL_COMPARISONS):
        tables[EVAL_COMPARISONS.name] = wh.read(EVAL_COMPARISONS, dt=dt)
    return CheckpointTables(tables)
