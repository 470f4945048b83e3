"""Every table the job reads or writes, with its schema, partitioning and column meanings.

One place for schemas: the Spark side derives its StructTypes from these Arrow schemas, the
storage layer creates Delta tables from them, and the README's table reference is written from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

BEHAVIOR_TYPES: tuple[str, ...] = ("click", "view", "fav", "cart", "purchase", "review", "search")

UTC_TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str
    nullable: bool = True


@dataclass(frozen=True)
class TableSpec:
    name: str
    doc: str
    columns: tuple[Column, ...]
    partition_by: tuple[str, ...] = ("dt",)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def _lineage(dt_doc: str) -> tuple[Column, ...]:
    return (
        Column("dt", pa.date32(), dt_doc, nullable=False),
        Column("run_id", pa.string(), "run that wrote the row", nullable=False),
        Column("created_at", UTC_TS, "when the row was written (UTC)", nullable=False),
    )


BEHAVIORS = TableSpec(
    "behaviors",
    "Validated user behaviour events; partitioned by event date, so any stage reads them as of its "
    "run date (ts < dt) and evaluation reads the window after it.",
    (
        Column("user_id", pa.string(), "user key", nullable=False),
        Column("item_id", pa.string(), "item key; null for searches"),
        Column("behavior", pa.string(), "one of " + ", ".join(BEHAVIOR_TYPES), nullable=False),
        Column("query", pa.string(), "search text (searches only; untrusted user text)"),
        Column("ts", UTC_TS, "event time, UTC", nullable=False),
        Column("rating", pa.float64(), "explicit rating when the source has one (reviews)"),
        *_lineage("event date (UTC) of ts"),
    ),
)

ITEMS = TableSpec(
    "items",
    "Item catalog snapshot per ingest run date; readers take the latest snapshot on or before theirs.",
    (
        Column("item_id", pa.string(), "item key", nullable=False),
        Column("title", pa.string(), "item title (untrusted seller text)", nullable=False),
        Column("category", pa.string(), "leaf category", nullable=False),
        Column("category_path", pa.string(), "category path, ' > ' separated"),
        Column("brand", pa.string(), "brand or store"),
        Column("price", pa.float64(), "list price"),
        *_lineage("snapshot date (the ingest's run date)"),
    ),
)

USERS = TableSpec(
    "users",
    "User profile snapshot per ingest run date.",
    (
        Column("user_id", pa.string(), "user key", nullable=False),
        Column("age", pa.int32(), "age in years"),
        Column("gender", pa.string(), "F, M or other/unknown as given by the source"),
        Column("region", pa.string(), "region key of the situation calendar"),
        Column("occupation", pa.string(), "occupation, where the source has it"),
        *_lineage("snapshot date (the ingest's run date)"),
    ),
)

ENV_SIGNALS = TableSpec(
    "env_signals",
    "The situation per region and day: season, weather, festivals in the air, trends.",
    (
        Column("region", pa.string(), "region key", nullable=False),
        Column("season", pa.string(), "spring, summer, autumn or winter (by hemisphere)", nullable=False),
        Column("weather", pa.string(), "weather summary"),
        Column("festivals", pa.list_(pa.string()), "festivals within their lead window"),
        Column("trends", pa.list_(pa.string()), "trending categories or topics"),
        *_lineage("the day the signals describe"),
    ),
)

QUARANTINE = TableSpec(
    "quarantine",
    "Rows a stage refused, with the raw record and every reason; nothing is dropped silently.",
    (
        Column("table_name", pa.string(), "the table the row was meant for", nullable=False),
        Column("source", pa.string(), "where the row came from (file, generator, ...)", nullable=False),
        Column("raw", pa.string(), "the raw record as JSON", nullable=False),
        Column("reason", pa.string(), "every failed check, '; ' separated", nullable=False),
        Column("stage", pa.string(), "stage that quarantined the row", nullable=False),
        *_lineage("run date of the stage"),
    ),
    partition_by=("dt", "stage"),
)

PLANTED_PERSONAS = TableSpec(
    "planted_personas",
    "Ground truth of the synthetic generator: the personas planted in each user.",
    (
        Column("user_id", pa.string(), "user key", nullable=False),
        Column("persona", pa.string(), "planted persona name", nullable=False),
        Column("description", pa.string(), "one-line persona description", nullable=False),
        Column("weight", pa.float64(), "share of the user's activity from this persona", nullable=False),
        Column("categories", pa.list_(pa.string()), "categories the persona shops in", nullable=False),
        *_lineage("run date the synthetic world was generated for"),
    ),
)

RUNS = TableSpec(
    "runs",
    "One row per stage execution (append-only): what ran, on what, how it went.",
    (
        Column("run_id", pa.string(), "run id (Airflow's, or generated)", nullable=False),
        Column("stage", pa.string(), "stage name", nullable=False),
        Column(
            "config_hash", pa.string(), "sha256 of the resolved config (first 16 hex digits)", nullable=False
        ),
        Column("rows_in", pa.int64(), "rows read"),
        Column("rows_out", pa.int64(), "rows written"),
        Column("rows_quarantined", pa.int64(), "rows quarantined"),
        Column("seconds", pa.float64(), "wall time", nullable=False),
        Column(
            "status", pa.string(), "success, failed, or skipped (nothing to do for the date)", nullable=False
        ),
        Column("error", pa.string(), "error message of a failed run"),
        Column("details", pa.string(), "stage-specific figures as JSON"),
        Column("started_at", UTC_TS, "start time (UTC)", nullable=False),
        Column("dt", pa.date32(), "run date", nullable=False),
        Column("created_at", UTC_TS, "when the row was written (UTC)", nullable=False),
    ),
)

DQ_RESULTS = TableSpec(
    "dq_results",
    "One row per great-expectations expectation evaluated by a stage's data-quality checkpoint.",
    (
        Column("checkpoint", pa.string(), "the stage whose tables were validated", nullable=False),
        Column("table_name", pa.string(), "validated table", nullable=False),
        Column("expectation", pa.string(), "great-expectations expectation type", nullable=False),
        Column("column_name", pa.string(), "column(s) it applies to, if any"),
        Column("severity", pa.string(), "critical (stops the run) or warning", nullable=False),
        Column("success", pa.bool_(), "whether the expectation held", nullable=False),
        Column("observed", pa.string(), "observed value (e.g. the row count), as text"),
        Column("unexpected_count", pa.int64(), "rows that broke it"),
        Column("unexpected_percent", pa.float64(), "their share, in percent"),
        Column("details", pa.string(), "arguments and a sample of unexpected values, JSON"),
        Column("report", pa.string(), "Data Docs index with the full result"),
        *_lineage("run date of the validated stage"),
    ),
    partition_by=("dt", "checkpoint"),
)

ITEM_EMBEDDINGS = TableSpec(
    "item_embeddings",
    "Item text embeddings, incremental: a run embeds only items whose text (content hash) is new "
    "under the model, so the partition of a run date holds what that run embedded. An item's "
    "current vector is the row matching its latest snapshot's content hash.",
    (
        Column("item_id", pa.string(), "item key", nullable=False),
        Column(
            "content_hash",
            pa.string(),
            "sha256 (16 hex) of the model name and the embedded text",
            nullable=False,
        ),
        Column(
            "text",
            pa.string(),
            "the embedded text: title | category path | brand (untrusted)",
            nullable=False,
        ),
        Column("model", pa.string(), "embedding model name", nullable=False),
        Column("dimension", pa.int32(), "vector length", nullable=False),
        Column(
            "embedding", pa.list_(pa.float32()), "the vector (unit length when normalized)", nullable=False
        ),
        *_lineage("run date that embedded it"),
    ),
)

USER_CONTEXT = TableSpec(
    "user_context",
    "Each user's behaviour history as of the run date (ts < dt), compressed for the LLM: V1 "
    "hierarchical text and the hybrid form whose entity slots refer to item embeddings, with token "
    "counts (the LLM's own tokenizer) against the uncompressed full text.",
    (
        Column("user_id", pa.string(), "user key", nullable=False),
        Column("events", pa.int64(), "behaviours before the run date", nullable=False),
        Column(
            "events_kept",
            pa.int64(),
            "reliable behaviours kept (types, duplicates collapsed)",
            nullable=False,
        ),
        Column("first_ts", UTC_TS, "oldest kept behaviour"),
        Column("last_ts", UTC_TS, "newest kept behaviour"),
        Column("buckets", pa.int32(), "time buckets of the history", nullable=False),
        Column(
            "full_tokens",
            pa.int64(),
            "tokens of the full text: every kept behaviour, full title",
            nullable=False,
        ),
        Column(
            "v1_text",
            pa.string(),
            "V1 hierarchical context: `categories: name items, ...` (the history's categories, most "
            "items first), then `time (behaviours) | core titles` per line",
            nullable=False,
        ),
        Column("v1_tokens", pa.int64(), "tokens of v1_text", nullable=False),
        Column(
            "v1_dropped_buckets", pa.int32(), "oldest buckets dropped to fit the token budget", nullable=False
        ),
        Column(
            "hybrid_text",
            pa.string(),
            "the same lines with each item as one entity mark (the categories line as text)",
            nullable=False,
        ),
        Column("entity_ids", pa.list_(pa.string()), "item ids of the entity marks, in order", nullable=False),
        Column(
            "hybrid_tokens",
            pa.int64(),
            "tokens the model reads for the hybrid context (1 per entity)",
            nullable=False,
        ),
        Column(
            "hybrid_dropped_buckets",
            pa.int32(),
            "oldest buckets dropped to fit the token budget",
            nullable=False,
        ),
        *_lineage("run date the context is as of"),
    ),
)

COVISIT_RECALL = TableSpec(
    "covisit_recall",
    "The conventional recall channel: items recalled per user as of the run date by item-to-item "
    "co-visitation (users who kept an item near another in their history), the baseline the "
    "tag-based channel is evaluated against on the same users and date. Users with a history "
    "(user_context.events_kept > 0) and at least one co-visited candidate; only items of the "
    "catalog snapshot as of the date, never the user's seed items nor what they bought within "
    "covisit.bought_days before the date.",
    (
        Column("user_id", pa.string(), "user key", nullable=False),
        Column("rank", pa.int32(), "1 = best; unique per (dt, user_id), 1..covisit.top_k", nullable=False),
        Column("item_id", pa.string(), "recalled item", nullable=False),
        Column(
            "score",
            pa.float64(),
            "summed co-visitation weight: over the user's seed items, the users who co-visited the "
            "seed and this item (times the seed's recency weight, 1 by default); > 0",
            nullable=False,
        ),
        *_lineage("run date the recall is as of (history ts < dt)"),
    ),
)

LLM_CALLS = TableSpec(
    "llm_calls",
    "Cost ledger: one row per LLM request a stage made (all attempts of the request summed). A rerun "
    "of a stage for its run date replaces that stage's rows; `runs` keeps every run's totals.",
    (
        Column("stage", pa.string(), "stage that made the call", nullable=False),
        Column("request_key", pa.string(), "the request's key, unique within the stage run", nullable=False),
        Column("user_id", pa.string(), "user the call was about"),
        Column("prompt_tokens", pa.int64(), "prompt tokens processed", nullable=False),
        Column("cached_prompt_tokens", pa.int64(), "prompt tokens served from the prefix cache"),
        Column("generated_tokens", pa.int64(), "tokens generated", nullable=False),
        Column("latency_ms", pa.float64(), "engine time of the request, all attempts", nullable=False),
        Column("attempts", pa.int32(), "attempts made (1 = no repair needed)", nullable=False),
        Column("finish_reason", pa.string(), "stop, length, ... of the last attempt"),
        Column("truncated_lines", pa.int32(), "history lines dropped to fit the context"),
        Column("error", pa.string(), "why the request produced no usable output; null when it did"),
        Column("model", pa.string(), "served model name", nullable=False),
        *_lineage("run date of the stage"),
    ),
    partition_by=("dt", "stage"),
)


def _mined_by() -> tuple[Column, ...]:
    """What produced a mined row: the pipeline variant (both partition columns) and the model
    and prompts, so runs of V2 and V1, hybrid and text, sit side by side for the same date."""
    return (
        Column("pipeline", pa.string(), "v2 or v1_baseline", nullable=False),
        Column(
            "context_mode", pa.string(), "hybrid or text: the history form the agents read", nullable=False
        ),
        Column("model", pa.string(), "served LLM name", nullable=False),
        Column(
            "prompt_version", pa.string(), "pipeline.agents.prompt_version of the prompts", nullable=False
        ),
    )


MINED_PARTITIONS = ("dt", "pipeline", "context_mode")

USER_PERSONAS = TableSpec(
    "user_personas",
    "The Global Planner's personas per user and run date (V2 only), after validation.",
    (
        Column("user_id", pa.string(), "user key", nullable=False),
        Column("persona_rank", pa.int32(), "1-based order the planner gave", nullable=False),
        Column("name", pa.string(), "short persona label (model output, validated)", nullable=False),
        Column("description", pa.string(), "one-line description", nullable=False),
        Column(
            "evidence", pa.list_(pa.string()), "history words or searches the planner cited", nullable=False
        ),
        Column("signals", pa.list_(pa.string()), "situation entries the persona responds to", nullable=False),
        *_mined_by(),
        *_lineage("run date the personas are as of"),
    ),
    partition_by=MINED_PARTITIONS,
)

USER_INTENT_TAGS = TableSpec(
    "user_intent_tags",
    "Final interest tags per user and run date, ranked, with persona, score, reason and the context "
    "items that support them: the input of tag-aware recall.",
    (
        Column("user_id", pa.string(), "user key", nullable=False),
        Column(
            "rank", pa.int32(), "1 = best; unique per (dt, pipeline, context_mode, user_id)", nullable=False
        ),
        Column(
            "tag",
            pa.string(),
            "normalised tag: a category's name or a modifier + core word, 1-4 words",
            nullable=False,
        ),
        Column("persona", pa.string(), "persona (V2) or route (V1) the tag serves", nullable=False),
        Column(
            "score",
            pa.int32(),
            "the Arbiter's score 1-10; null for V1 (no arbiter) and for tags backfilled after its picks",
        ),
        Column(
            "reason",
            pa.string(),
            "why the tag fits the user (model output, validated; cut before any personal data, "
            "'(reason withheld: it held personal data)' when nothing came before it)",
            nullable=False,
        ),
        Column(
            "evidence_item_ids",
            pa.list_(pa.string()),
            "context items most similar to the tag (embedding cosine), best first",
            nullable=False,
        ),
        *_mined_by(),
        *_lineage("run date the tags are as of"),
    ),
    partition_by=MINED_PARTITIONS,
)

MINING_FAILURES = TableSpec(
    "mining_failures",
    "Users whose mining produced no valid tag after retries, repair and V2's fallbacks, with the "
    "step and reason and every failed call; every user mined for a date is in user_intent_tags or "
    "here, never neither.",
    (
        Column("user_id", pa.string(), "user key", nullable=False),
        Column(
            "step",
            pa.string(),
            "input, planner, expert, arbiter or route; generic: every tag the user got was dropped by "
            "the run-wide rule on generic tags",
            nullable=False,
        ),
        Column(
            "reason",
            pa.string(),
            "engine error (prompt_too_long, invalid_output, engine_error, bad_request) or "
            "no_valid_tag / all_calls_failed / only_generic_tags",
            nullable=False,
        ),
        Column(
            "rejected",
            pa.string(),
            "JSON counts of validation rejections by reason code (generic_tag: dropped by the run-wide rule)",
        ),
        Column(
            "failed_calls",
            pa.string(),
            "JSON counts of the user's LLM calls that gave no usable answer, by 'step: reason'",
        ),
        *_mined_by(),
        *_lineage("run date of the mining"),
    ),
    partition_by=MINED_PARTITIONS,
)

TAG_RECALL = TableSpec(
    "tag_recall",
    "Tag-aware recall: each final tag's nearest catalog items by cosine between the tag's and the "
    "items' embeddings (exact search), without the items the user bought in the last "
    "`bought_days` days before the run date.",
    (
        Column("user_id", pa.string(), "user key", nullable=False),
        Column("tag_rank", pa.int32(), "the tag's rank in user_intent_tags", nullable=False),
        Column("tag", pa.string(), "the tag (user_intent_tags.tag)", nullable=False),
        Column("rank", pa.int32(), "1 = the tag's nearest item; unique per (user, tag_rank)", nullable=False),
        Column("item_id", pa.string(), "recalled item", nullable=False),
        Column("score", pa.float64(), "cosine similarity of tag and item text", nullable=False),
        Column("pipeline", pa.string(), "pipeline of the tags (v2 or v1_baseline)", nullable=False),
        Column("context_mode", pa.string(), "context mode of the tags (hybrid or text)", nullable=False),
        *_lineage("run date of the tags"),
    ),
    partition_by=MINED_PARTITIONS,
)


def _explained_by() -> tuple[Column, ...]:
    """The mined variant whose tags were explained (both partition columns), the model and the
    explanation prompts."""
    return (
        Column("pipeline", pa.string(), "pipeline of the tags (v2 or v1_baseline)", nullable=False),
        Column("context_mode", pa.string(), "context mode of the tags (hybrid or text)", nullable=False),
        Column("model", pa.string(), "served LLM name ('none' for the template)", nullable=False),
        Column("prompt_version", pa.string(), "explain.prompt_version of the prompts", nullable=False),
    )


ITEM_EXPLANATIONS = TableSpec(
    "item_explanations",
    "Why the user sees a recommended item: for each of the user's best tags, its first recalled "
    "item, explained in every configured mode (meta: a style guide, then the line written to "
    "it; single: one prompt; template: a fixed sentence). Only explanations that passed every "
    "rule (length, facts, brands, title copy, absolute claims, personal data, echo) are here; "
    "the others are in explanation_failures.",
    (
        Column("user_id", pa.string(), "user key", nullable=False),
        Column("tag_rank", pa.int32(), "the tag's rank in user_intent_tags", nullable=False),
        Column("tag", pa.string(), "the interest the item was recalled for", nullable=False),
        Column("item_id", pa.string(), "the explained item (tag_recall rank 1 of the tag)", nullable=False),
        Column(
            "explanation_mode",
            pa.string(),
            "meta, single or template; unique per (dt, pipeline, context_mode, user_id, item_id)",
            nullable=False,
        ),
        Column("style_guide", pa.string(), "meta: the guide the line was written to (model output)"),
        Column(
            "explanation", pa.string(), "the line shown to the user (model output, validated)", nullable=False
        ),
        Column("words", pa.int32(), "words of the explanation", nullable=False),
        *_explained_by(),
        *_lineage("run date of the tags explained"),
    ),
    partition_by=MINED_PARTITIONS,
)

EXPLANATION_FAILURES = TableSpec(
    "explanation_failures",
    "Explanations that were not written, one row per (user, item, mode), with the step and the "
    "reason: an engine error, or the code of the first rule the text broke. Every pair of a run "
    "is in item_explanations or here for each mode, never neither.",
    (
        Column("user_id", pa.string(), "user key", nullable=False),
        Column("tag_rank", pa.int32(), "the tag's rank; null when the pair's input was bad"),
        Column("tag", pa.string(), "the interest"),
        Column("item_id", pa.string(), "the item"),
        Column("explanation_mode", pa.string(), "meta, single, template, or all (bad input)", nullable=False),
        Column("step", pa.string(), "style, meta, single, template or input", nullable=False),
        Column(
            "reason",
            pa.string(),
            "engine error (prompt_too_long, invalid_output, engine_error, bad_request) or a rule's "
            "code (too_long, unsupported_number, title_copy, ...)",
            nullable=False,
        ),
        Column("detail", pa.string(), "the words that broke the rule (bounded)"),
        Column(
            "text",
            pa.string(),
            "the rejected line as the model wrote it (untrusted, never served; null for engine "
            "errors and bad input)",
        ),
        *_explained_by(),
        *_lineage("run date of the tags explained"),
    ),
    partition_by=MINED_PARTITIONS,
)

VERDICT = pa.struct(
    [
        pa.field("dimension", pa.string()),
        pa.field("verdict", pa.string()),  # pass, fail or unjudged
        pa.field("score", pa.float64()),
        pa.field("strong", pa.bool_()),
        pa.field("reason", pa.string()),
        pa.field("judged_by", pa.string()),
    ]
)


def _judged_by() -> tuple[Column, ...]:
    """The grade, the sub-judges' verdicts, and who judged: the judged variant (both partition
    columns), the judge model and the judge prompts."""
    return (
        Column(
            "grade", pa.string(), "the senior reviewer's S, A or B (B: a dimension failed)", nullable=False
        ),
        Column("quality", pa.bool_(), "every dimension passed (the paper's quality)", nullable=False),
        Column(
            "failed", pa.list_(pa.string()), "the dimensions that failed, in dimension order", nullable=False
        ),
        Column(
            "verdicts",
            pa.list_(VERDICT),
            "per dimension: verdict (pass, fail, unjudged), score (a rule's 0/0.5/1, a cosine, or the "
            "judge model's P(yes)), strong pass, reason, and judged_by (rule, embedding, llm)",
            nullable=False,
        ),
        Column("pipeline", pa.string(), "pipeline of the judged output (v2 or v1_baseline)", nullable=False),
        Column(
            "context_mode", pa.string(), "context mode of the judged output (hybrid or text)", nullable=False
        ),
        Column(
            "judge_model",
            pa.string(),
            "LLM that judged the llm dimensions ('none' when none did)",
            nullable=False,
        ),
        Column("prompt_version", pa.string(), "judge.prompt_version of the judge prompts", nullable=False),
    )


TAG_JUDGMENTS = TableSpec(
    "tag_judgments",
    "Agent-as-a-Judge grades of the final tags of a seeded sample of users: relevance (to the "
    "history), consistency (with persona and profile), specificity and validity, each a verdict "
    "with a score and a reason, and the senior reviewer's grade. A rerun replaces the variant's "
    "partition of the date.",
    (
        Column("user_id", pa.string(), "user key", nullable=False),
        Column("tag_rank", pa.int32(), "the tag's rank in user_intent_tags", nullable=False),
        Column("tag", pa.string(), "the judged tag", nullable=False),
        Column("persona", pa.string(), "the persona (V2) or route (V1) it was mined for", nullable=False),
        *_judged_by(),
        *_lineage("run date of the tags judged"),
    ),
    partition_by=MINED_PARTITIONS,
)

EXPLANATION_JUDGMENTS = TableSpec(
    "explanation_judgments",
    "Agent-as-a-Judge grades of the written explanations of a seeded sample of users, every "
    "mode: relevance, factuality, clarity, safety, timeliness, informativeness and "
    "attractiveness, each a verdict with a score and a reason, and the senior reviewer's grade. "
    "A rerun replaces the variant's partition of the date.",
    (
        Column("user_id", pa.string(), "user key", nullable=False),
        Column("tag_rank", pa.int32(), "the explained tag's rank", nullable=False),
        Column("tag", pa.string(), "the interest", nullable=False),
        Column("item_id", pa.string(), "the explained item", nullable=False),
        Column("explanation_mode", pa.string(), "meta, single or template", nullable=False),
        Column("explanation", pa.string(), "the judged line", nullable=False),
        *_judged_by(),
        *_lineage("run date of the tags explained"),
    ),
    partition_by=MINED_PARTITIONS,
)

EVAL_METRICS = TableSpec(
    "eval_metrics",
    "Offline evaluation of a run date's mined intents against the held-out window after it: one "
    "row per (pipeline variant, metric). Definitions are in the README (Evaluation).",
    (
        Column("pipeline", pa.string(), "v2 or v1_baseline", nullable=False),
        Column("context_mode", pa.string(), "hybrid or text", nullable=False),
        Column("model", pa.string(), "LLM that mined the tags", nullable=False),
        Column("metric", pa.string(), "metric name (hr30, recall_at_30_tags, ...)", nullable=False),
        Column("value", pa.float64(), "its value; null when no user had the data to define it"),
        Column("users", pa.int64(), "users the value averages over", nullable=False),
        Column("window_days", pa.int32(), "length of the held-out window in days", nullable=False),
        Column(
            "ci95_low",
            pa.float64(),
            "95% bootstrap interval over users, lower end (per-user means and the failure rate)",
        ),
        Column("ci95_high", pa.float64(), "95% bootstrap interval over users, upper end"),
        *_lineage("run date whose mining is evaluated"),
    ),
)

EVAL_COMPARISONS = TableSpec(
    "eval_comparisons",
    "Paired comparisons of a run date's evaluation: per metric, a variant minus another variant "
    "or minus an LLM-free baseline, on the users both scored, with the 95% paired-bootstrap "
    "interval of the difference.",
    (
        Column("pipeline", pa.string(), "the variant compared: v2 or v1_baseline", nullable=False),
        Column("context_mode", pa.string(), "its context mode: hybrid or text", nullable=False),
        Column(
            "other",
            pa.string(),
            "what it is compared with: another variant (pipeline.context_mode) or a baseline "
            "(history, popular: as many categories as the variant's tags name)",
            nullable=False,
        ),
        Column(
            "metric", pa.string(), "hr30, recall_at_30_tags, exclusive_recall or failure_rate", nullable=False
        ),
        Column("difference", pa.float64(), "mean of the variant's value minus the other's", nullable=False),
        Column("ci95_low", pa.float64(), "paired-bootstrap 95% interval, lower end", nullable=False),
        Column("ci95_high", pa.float64(), "paired-bootstrap 95% interval, upper end", nullable=False),
        Column("users", pa.int64(), "users with both values", nullable=False),
        Column("replicates", pa.int32(), "bootstrap replicates", nullable=False),
        *_lineage("run date whose mining is evaluated"),
    ),
)

ALL_TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (
        BEHAVIORS,
        ITEMS,
        USERS,
        ENV_SIGNALS,
        QUARANTINE,
        PLANTED_PERSONAS,
        RUNS,
        DQ_RESULTS,
        ITEM_EMBEDDINGS,
        USER_CONTEXT,
        COVISIT_RECALL,
        LLM_CALLS,
        USER_PERSONAS,
        USER_INTENT_TAGS,
        MINING_FAILURES,
        TAG_RECALL,
        ITEM_EXPLANATIONS,
        EXPLANATION_FAILURES,
        TAG_JUDGMENTS,
        EXPLANATION_JUDGMENTS,
        EVAL_METRICS,
        EVAL_COMPARISONS,
    )
}

# Bookkeeping columns of raw rows between the source readers and the ingest checks (dropped
# before writing): why a row is quarantined, its raw record, its intake order.
REASONS = "_reasons"
RAW = "_raw"
INTAKE = "_intake"
# Where each raw row came from (a file path, "synthetic", ...); set by the source reader.
SOURCE = "_source"
# The original text of a line the reader could not parse (Spark's corrupt-record column).
MALFORMED = "_malformed"
# Delimited-text readers: a spare column after the expected ones, and what is wrong with a line.
OVERFLOW = "_overflow"
LINE_ISSUE = "_line_issue"

# What a source must provide for each input table; other canonical columns are optional.
INPUT_TABLES: tuple[str, ...] = ("behaviors", "items", "users", "env_signals")
REQUIRED_INPUTS: tuple[str, ...] = ("behaviors", "items")
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "behaviors": ("user_id", "item_id", "behavior", "ts"),
    "items": ("item_id", "title", "category"),
    "users": ("user_id",),
    "env_signals": ("dt", "region", "season"),
}


def markdown_reference(specs: dict[str, TableSpec] | None = None) -> str:
    """The README's table reference, generated from the specs above (a test keeps them in sync)."""
    out = []
    for spec in (specs or ALL_TABLES).values():
        out.append(f"#### `{spec.name}` (partitioned by {', '.join(spec.partition_by)})\n")
        out.append(f"{spec.doc}\n")
        out.append("| column | type | null | meaning |")
        out.append("|---|---|---|---|")
        for c in spec.columns:
            out.append(f"| `{c.name}` | {c.type} | {'yes' if c.nullable else 'no'} | {c.doc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown_reference())
