"""The judge inside Spark: one input row per judged user of a variant — the user's final tags
with their personas and profile, the newest items of the user's history, and the user's written
explanations with each item's facts and the situation — and the program the LLM-stage runner
runs on a batch of users: every tag and every explanation of the batch judged together, one
engine batch per LLM dimension (its system prefix shared), the embedding dimensions in one
encoder pass."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recgpt.agents.prompts import profile_text
from recgpt.agents.settings import AgentSettings
from recgpt.agents.validate import ValidationContext
from recgpt.explain.rules import ExplanationRules
from recgpt.explain.settings import ExplainSettings
from recgpt.judge.explanations import ExplanationCase, ExplanationJudge
from recgpt.judge.settings import JudgeSettings
from recgpt.judge.tags import TagCase, TagJudge
from recgpt.judge.verdicts import GRADES, Verdict, grade, quality
from recgpt.llm.engine import Engine
from recgpt.llm.request import Result
from recgpt.rundate import RunDate
from recgpt.tables import (
    EXPLANATION_FAILURES,
    EXPLANATION_JUDGMENTS,
    ITEM_EMBEDDINGS,
    ITEM_EXPLANATIONS,
    ITEMS,
    TAG_JUDGMENTS,
    USER_CONTEXT,
    USER_INTENT_TAGS,
    USER_PERSONAS,
    USERS,
    VERDICT,
)
from sparkio.warehouse import Warehouse
from sparkio.worker import per_process
from udfs.embeddings import embedder_for
from udfs.explain import ITEM_COLUMNS, item_facts, pair_input, recent_titles
from udfs.llm import LLMStage, Outcome
from udfs.mining import SITUATION_COLUMNS, situations

JUDGED_TAG = pa.struct(
    [
        pa.field("tag_rank", pa.int32()),
        pa.field("tag", pa.string()),
        pa.field("persona", pa.string()),
        pa.field("grade", pa.string()),
        pa.field("quality", pa.bool_()),
        pa.field("verdicts", pa.list_(VERDICT)),
    ]
)
JUDGED_EXPLANATION = pa.struct(
    [
        pa.field("tag_rank", pa.int32()),
        pa.field("tag", pa.string()),
        pa.field("item_id", pa.string()),
        pa.field("explanation_mode", pa.string()),
        pa.field("explanation", pa.string()),
        pa.field("grade", pa.string()),
        pa.field("quality", pa.bool_()),
        pa.field("verdicts", pa.list_(VERDICT)),
    ]
)
JUDGED = pa.schema(
    [pa.field("tags", pa.list_(JUDGED_TAG)), pa.field("explanations", pa.list_(JUDGED_EXPLANATION))]
)
PROFILE_COLUMNS = ("age", "gender", "region", "occupation")


def judge_inputs(
    spark: SparkSession,
    wh: Warehouse,
    dt: RunDate,
    variant: Column,
    sample_users: int | None,
    seed: int,
    history_items: int,
    calendar_cfg: Mapping[str, Any],
    recent_days: int,
) -> DataFrame:
    """One row per user of the variant with final tags: `sample_users` of them in a seeded order
    (the same users for every variant of the date), or all. A user's history is the titles of the
    newest `history_items` items of their context. Each explanation comes with its item's facts,
    the situation and the recent item's title its prompt showed (`recent_titles` over
    `recent_days`, as the explain stage found it)."""
    tags = wh.read(USER_INTENT_TAGS, dt=dt).where(variant)
    users = tags.select("user_id").distinct()
    if sample_users is not None:
        users = users.orderBy(F.xxhash64("user_id", F.lit(seed)), "user_id").limit(int(sample_users))
    tag_lists = (
        tags.join(users, "user_id", "left_semi")
        .groupBy("user_id")
        .agg(F.collect_list(F.struct(F.col("rank").alias("tag_rank"), "tag", "persona")).alias("tags"))
    )
    out = tag_lists
    if wh.exists(USER_PERSONAS):
        personas = (
            wh.read(USER_PERSONAS, dt=dt)
            .where(variant)
            .groupBy("user_id")
            .agg(F.collect_list(F.struct("name", "description")).alias("personas"))
        )
        out = out.join(personas, "user_id", "left")
    else:
        out = out.withColumn("personas", F.lit(None).cast("array<struct<name:string,description:string>>"))
    items = wh.read_snapshot(ITEMS, dt)
    if wh.exists(USER_CONTEXT):
        out = out.join(newest_titles(wh, dt, items, users, history_items), "user_id", "left")
    else:
        out = out.withColumn("history", F.lit(None).cast("array<string>"))
    profile_columns = []
    if wh.exists(USERS):
        snapshot = wh.read_snapshot(USERS, dt)
        profile_columns = [c for c in PROFILE_COLUMNS if c in snapshot.columns]
        out = out.join(snapshot.select("user_id", *profile_columns), "user_id", "left")
    if wh.exists(ITEM_EXPLANATIONS):
        facts = item_facts(items)
        situation = situations(spark, wh, dt, calendar_cfg).select(
            "region", F.struct(*SITUATION_COLUMNS).alias("situation")
        )
        regions = out.select(
            "user_id", F.col("region") if "region" in profile_columns else F.lit(None).alias("region")
        )
        explained = (
            wh.read(ITEM_EXPLANATIONS, dt=dt)
            .where(variant)
            .join(users, "user_id", "left_semi")
            .join(facts, "item_id", "left")
        )
        pairs = explained.select("user_id", "item_id", "category").distinct()
        lines = (
            explained.join(recent_titles(wh, dt, pairs, recent_days), ["user_id", "item_id"], "left")
            .join(regions, "user_id", "left")
            .join(F.broadcast(situation), "region", "left")
            .groupBy("user_id")
            .agg(
                F.collect_list(
                    F.struct(
                        "tag_rank",
                        "tag",
                        "item_id",
                        "explanation_mode",
                        "explanation",
                        *ITEM_COLUMNS,
                        "recent_title",
                        "situation",
                    )
                ).alias("explanations")
            )
        )
        out = out.join(lines, "user_id", "left")
    else:
        out = out.withColumn("explanations", F.lit(None).cast("array<string>"))
    return out.select(F.col("user_id").alias("key"), "*")


def newest_titles(
    wh: Warehouse, dt: RunDate, items: DataFrame, users: DataFrame, history_items: int
) -> DataFrame:
    """user_id, history: the set of titles (from the `items` snapshot) of each of `users`' newest
    `history_items` context items as of `dt`; users without a context are absent."""
    return (
        wh.read(USER_CONTEXT, dt=dt)
        .join(users, "user_id", "left_semi")
        .select("user_id", F.posexplode(F.reverse("entity_ids")).alias("age", "item_id"))
        .where(F.col("age") < history_items)
        .join(items.select("item_id", "title"), "item_id")
        .groupBy("user_id")
        .agg(F.collect_set("title").alias("history"))
    )


@dataclass(frozen=True)
class JudgePlan:
    """Everything a worker needs to judge users, as plain picklable values."""

    judge: Mapping[str, Any]  # the `judge` config group (without its llm)
    agents: Mapping[str, Any]  # pipeline.agents: the tag rules
    explain: Mapping[str, Any]  # the `explain` config group: the explanation rules
    embedding: Mapping[str, Any]  # the item embedding model
    brands: Sequence[str]
    festivals: Sequence[str]
    centroids: Sequence[Sequence[float]]  # one unit vector per catalog category

    def __call__(self, engine: Engine) -> JudgeProgram:
        return JudgeProgram(self, engine)


# Per Python worker: the judges of a run (rules, embedder), built once and reused.
_JUDGES: dict[str, tuple[TagJudge, ExplanationJudge]] = {}


def judges(plan: JudgePlan, engine: Engine) -> tuple[TagJudge, ExplanationJudge]:
    settings = JudgeSettings.from_config(plan.judge)
    embed = embedder_for(plan.embedding).encode
    tag_rules = ValidationContext.for_run(AgentSettings.from_config(plan.agents), plan.brands)
    line_rules = ExplanationRules.for_run(ExplainSettings.from_config(plan.explain, "meta"), plan.brands)
    return (
        TagJudge(settings, tag_rules, embed, np.asarray(plan.centroids, dtype=np.float32), engine),
        ExplanationJudge(settings, line_rules, embed, plan.festivals, engine),
    )


class JudgeProgram:
    def __init__(self, plan: JudgePlan, engine: Engine) -> None:
        key = json.dumps(
            [plan.judge, plan.agents, plan.explain, plan.embedding, sorted(plan.brands), engine.model],
            sort_keys=True,
            default=str,
        )
        self.tags, self.explanations = per_process(_JUDGES, key, lambda: judges(plan, engine))
        # The engine of this task (the cached judges hold the first task's: same server).
        self.tags.engine = self.explanations.engine = engine
        self.share = self.tags.settings.excellence_share
        self.min_digits = self.tags.settings.min_digits

    def prepare(
        self, row: Mapping[str, Any]
    ) -> tuple[str, list[TagCase], list[tuple[ExplanationCase, str, int]]]:
        user = str(row["user_id"])
        personas = {p["name"]: f"{p['name']}: {p['description']}" for p in row.get("personas") or ()}
        history = tuple(sorted(row.get("history") or ()))
        profile = profile_text({c: row.get(c) for c in PROFILE_COLUMNS}, self.min_digits)
        tags = [
            TagCase(
                f"{user}#t{t['tag_rank']}",
                user,
                str(t["tag"]),
                personas.get(t["persona"], str(t["persona"])),
                profile,
                history,
            )
            for t in sorted(row["tags"], key=lambda t: t["tag_rank"])
        ]
        lines = []
        for x in sorted(row.get("explanations") or (), key=lambda x: (x["tag_rank"], x["explanation_mode"])):
            pair = pair_input(
                {**x, "key": f"{user}#e{x['tag_rank']}{x['explanation_mode']}", "user_id": user}
            )
            situation = dict(x.get("situation") or {})
            case = ExplanationCase(
                pair.key, user, pair.tag, pair.item, str(x["explanation"]), situation, pair.recent
            )
            lines.append((case, str(x["explanation_mode"]), int(x["tag_rank"])))
        return user, tags, lines

    def run(
        self, prepared: Sequence[tuple[str, list[TagCase], list[tuple[ExplanationCase, str, int]]]]
    ) -> list[Outcome]:
        tag_cases = [c for _, tags, _ in prepared for c in tags]
        line_cases = [c for _, _, lines in prepared for c, _, _ in lines]
        self.tags.calls.clear()
        self.explanations.calls.clear()
        tag_verdicts = iter(self.tags.judge(tag_cases))
        line_verdicts = iter(self.explanations.judge(line_cases))
        calls: dict[str, list[tuple[str, Result]]] = {}
        for step, result in [*self.tags.calls, *self.explanations.calls]:
            calls.setdefault(str(result.user_id), []).append((step, result))
        outcomes = []
        for user, tags, lines in prepared:
            judged_tags = []
            for case in tags:
                verdicts = next(tag_verdicts)
                judged_tags.append(
                    {
                        "tag_rank": int(case.key.rsplit("#t", 1)[1]),
                        "tag": case.tag,
                        "persona": case.persona,
                        **self._graded(verdicts),
                    }
                )
            judged_lines = []
            for case, mode, rank in lines:
                verdicts = next(line_verdicts)
                judged_lines.append(
                    {
                        "tag_rank": rank,
                        "tag": case.tag,
                        "item_id": case.item.item_id,
                        "explanation_mode": mode,
                        "explanation": case.text,
                        **self._graded(verdicts),
                    }
                )
            values = {"tags": judged_tags, "explanations": judged_lines}
            outcomes.append(Outcome(user, user, values, calls.get(user, [])))
        return outcomes

    def _graded(self, verdicts: Sequence[Verdict]) -> dict[str, Any]:
        return {
            "grade": grade(verdicts, self.share),
            "quality": quality(verdicts),
            "verdicts": [_verdict_row(v) for v in verdicts],
        }


def _verdict_row(v: Verdict) -> dict[str, Any]:
    row = v.row()
    row["verdict"] = "unjudged" if v.passed is None else "pass" if v.passed else "fail"
    del row["passed"]
    return row


def judge_stage(
    plan: JudgePlan, llm_cfg: Mapping[str, Any], variant: Mapping[str, str], batch_rows: int
) -> LLMStage:
    return LLMStage(
        name=f"judge.{variant['pipeline']}.{variant['context_mode']}",
        llm=dict(llm_cfg),
        columns=JUDGED,
        build=plan,
        batch_rows=batch_rows,
        key="key",
    )


def category_centroids(wh: Warehouse, dt: RunDate, model: str, per_category: int = 200) -> list[list[float]]:
    """One unit vector per catalog category as of `dt`: the mean embedding under `model` of at
    most `per_category` of its items (the first by a hash of the id: the work is bounded by the
    categories, not the catalog; a few hundred floats per category reach the driver)."""
    items = wh.read_snapshot(ITEMS, dt).select("item_id", "category").where(F.col("category").isNotNull())
    vectors = wh.read(ITEM_EMBEDDINGS).where(F.col("model") == model).select("item_id", "embedding")
    first = Window.partitionBy("category").orderBy(F.xxhash64("item_id"), "item_id")
    chosen = (
        vectors.dropDuplicates(["item_id"])
        .join(items, "item_id")
        .withColumn("_n", F.row_number().over(first))
        .where(F.col("_n") <= per_category)
    )
    rows = (
        chosen.select("category", F.posexplode("embedding").alias("i", "x"))
        .groupBy("category", "i")
        .agg(F.avg("x").alias("x"))
        .groupBy("category")
        .agg(F.sort_array(F.collect_list(F.struct("i", "x"))).alias("v"))
        .collect()
    )
    out = []
    for r in rows:
        v = np.array([e.x for e in r.v], dtype=np.float64)
        norm = np.linalg.norm(v)
        if norm > 0:
            out.append((v / norm).tolist())
    return out


def explode_judged(outcomes: DataFrame, made_by: Mapping[str, str]) -> tuple[DataFrame, DataFrame]:
    """(tag_judgments rows, explanation_judgments rows) without dt/run_id/created_at."""
    by = [F.lit(v).alias(k) for k, v in made_by.items()]
    model = F.coalesce(F.col("model"), F.lit("none")).alias("judge_model")
    failed = F.expr("transform(filter(x.verdicts, v -> v.verdict = 'fail'), v -> v.dimension)").alias(
        "failed"
    )
    tags = outcomes.select("user_id", model, F.explode("tags").alias("x")).select(
        "user_id",
        F.col("x.tag_rank").alias("tag_rank"),
        F.col("x.tag").alias("tag"),
        F.col("x.persona").alias("persona"),
        F.col("x.grade").alias("grade"),
        F.col("x.quality").alias("quality"),
        failed,
        F.col("x.verdicts").alias("verdicts"),
        "judge_model",
        *by,
    )
    lines = outcomes.select("user_id", model, F.explode("explanations").alias("x")).select(
        "user_id",
        F.col("x.tag_rank").alias("tag_rank"),
        F.col("x.tag").alias("tag"),
        F.col("x.item_id").alias("item_id"),
        F.col("x.explanation_mode").alias("explanation_mode"),
        F.col("x.explanation").alias("explanation"),
        F.col("x.grade").alias("grade"),
        F.col("x.quality").alias("quality"),
        failed,
        F.col("x.verdicts").alias("verdicts"),
        "judge_model",
        *by,
    )
    return tags, lines


def judge_metrics(wh: Warehouse, dt: RunDate) -> pd.DataFrame:
    """eval_metrics rows (pipeline, context_mode, model, metric, value, users) of the date's
    judgments per judged variant: the share of each grade and the paper's quality (every
    dimension passed) of the tags (`judge_tags_<S|A|B|quality>`) and, for every explanation mode
    the variant attempted, of its written lines (`judge_<mode>_<S|A|B|quality>`; null when no
    line of the mode was written, so the rows do not depend on what the model wrote). `users` is
    the number of judged tags or lines; `model` the judge model. Empty when nothing was judged."""
    columns = ["pipeline", "context_mode", "model", "metric", "value", "users"]
    if not wh.exists(TAG_JUDGMENTS):
        return pd.DataFrame(columns=columns)
    keys = ["pipeline", "context_mode"]
    counted: dict[tuple[str, str, str], Any] = {}
    for spec, by in ((TAG_JUDGMENTS, None), (EXPLANATION_JUDGMENTS, "explanation_mode")):
        if not wh.exists(spec):
            continue
        kind = F.lit("tags") if by is None else F.col(by)
        for r in (
            wh.read(spec, dt=dt)
            .groupBy(*keys, kind.alias("kind"))
            .agg(
                F.count("*").alias("n"),
                F.first("judge_model").alias("model"),
                F.sum(F.col("quality").cast("int")).alias("quality"),
                *[F.sum((F.col("grade") == g).cast("int")).alias(g) for g in GRADES],
            )
            .collect()
        ):
            counted[(r.pipeline, r.context_mode, r.kind)] = r
    variants = {(p, c): r.model for (p, c, kind), r in counted.items() if kind == "tags"}
    attempted = [
        wh.read(spec, dt=dt).select(*keys, "explanation_mode")
        for spec in (ITEM_EXPLANATIONS, EXPLANATION_FAILURES)
        if wh.exists(spec)
    ]
    modes: dict[tuple[str, str], set[str]] = {}
    for frame in attempted:
        for r in frame.where(F.col("explanation_mode") != "all").distinct().collect():
            modes.setdefault((r.pipeline, r.context_mode), set()).add(r.explanation_mode)
    rows: list[tuple[Any, ...]] = []
    for (pipeline, context_mode), model in sorted(variants.items()):
        for kind in ["tags", *sorted(modes.get((pipeline, context_mode), ()))]:
            r = counted.get((pipeline, context_mode, kind))
            n = 0 if r is None else int(r.n)
            for figure in (*GRADES, "quality"):
                value = None if r is None else r[figure] / n
                rows.append((pipeline, context_mode, model, f"judge_{kind}_{figure}", value, n))
    return pd.DataFrame.from_records(rows, columns=columns)


def judged_samples(wh: Warehouse, dt: RunDate, per_variant: int = 12) -> pd.DataFrame | None:
    """The report's judged samples: per variant, `per_variant` judged tags and lines (the first
    by a hash, the same for every run of the data) with the grade and each failed dimension's
    reason."""
    if not wh.exists(TAG_JUDGMENTS):
        return None
    failed = "filter(verdicts, v -> v.verdict = 'fail')"
    reasons = F.expr(
        f"array_join(transform({failed}, v -> concat(v.dimension, ': ', v.reason)), '; ')"
    ).alias("failing")
    keys = ["pipeline", "context_mode", "user_id", "tag_rank"]
    rows = wh.read(TAG_JUDGMENTS, dt=dt).select(
        *keys, F.lit("tag").alias("kind"), F.col("tag").alias("text"), "grade", reasons
    )
    if wh.exists(EXPLANATION_JUDGMENTS):
        lines = wh.read(EXPLANATION_JUDGMENTS, dt=dt).select(
            *keys,
            F.col("explanation_mode").alias("kind"),
            F.col("explanation").alias("text"),
            "grade",
            reasons,
        )
        rows = rows.unionByName(lines)
    first = Window.partitionBy("pipeline", "context_mode").orderBy(
        F.xxhash64("user_id", "tag_rank", "kind"), "user_id", "tag_rank", "kind"
    )
    return (
        rows.withColumn("_n", F.row_number().over(first))
        .where(F.col("_n") <= per_variant)
        .drop("_n")
        .toPandas()
    )
