"""Intent mining inside Spark: one input row per user (context, profile, situation, recent
purchases, the context items' vectors) and the program the LLM-stage runner runs on them, a batch
of users at a time on the executor's engine: one outcome row per user (personas, tags, failure)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recgpt import adaptor as A
from recgpt.agents.mining import Miner, UserInput, UserOutcome, mine
from recgpt.agents.schemas import TAG_WORD_CHARS, build_schemas
from recgpt.agents.settings import AgentSettings
from recgpt.agents.validate import ValidationContext
from recgpt.calendar import Calendar
from recgpt.config import plain
from recgpt.context import core_title
from recgpt.embeddings import vocabulary_words
from recgpt.env_signals import situation_rows
from recgpt.errors import ConfigError
from recgpt.llm.engine import Engine
from recgpt.policy.serving import base_model_name
from recgpt.rundate import RunDate
from recgpt.tables import BEHAVIORS, ENV_SIGNALS, ITEMS, USER_CONTEXT, USERS
from sparkio.warehouse import Warehouse
from sparkio.worker import per_process
from udfs.embeddings import current_embeddings, embedder_for
from udfs.llm import LLMStage, Outcome
from udfs.recall import recently_bought

PERSONA = pa.struct(
    [
        pa.field("name", pa.string()),
        pa.field("description", pa.string()),
        pa.field("evidence", pa.list_(pa.string())),
        pa.field("signals", pa.list_(pa.string())),
    ]
)
TAG = pa.struct(
    [
        pa.field("rank", pa.int32()),
        pa.field("tag", pa.string()),
        pa.field("persona", pa.string()),
        pa.field("score", pa.int32()),
        pa.field("reason", pa.string()),
        pa.field("evidence_item_ids", pa.list_(pa.string())),
    ]
)
# A user's outcome as the program's columns; the runner adds key, user_id, error, calls, model.
OUTCOME = pa.schema(
    [
        pa.field("personas", pa.list_(PERSONA)),
        pa.field("tags", pa.list_(TAG)),
        pa.field("failure_step", pa.string()),
        pa.field("failure_reason", pa.string()),
        pa.field("rejected", pa.string()),
        pa.field("rejected_examples", pa.string()),
        pa.field("proposed", pa.int32()),
        pa.field("duplicates", pa.int32()),
        pa.field("fallbacks", pa.string()),
        pa.field("failed_calls", pa.string()),
    ]
)
PROFILE_COLUMNS = ("age", "gender", "region", "occupation")
SITUATION_COLUMNS = ("season", "weather", "festivals", "trends")


def situations(spark: SparkSession, wh: Warehouse, dt: RunDate, calendar_cfg: Mapping[str, Any]) -> DataFrame:
    """The situation of every calendar region on the run date: season and festivals from the
    calendar, weather and trends from the newest `env_signals` feed row on or before the date."""
    calendar = Calendar.from_config(calendar_cfg)
    day = dt.day
    weather: dict[tuple[str, Any], str] = {}
    trends: dict[tuple[str, Any], list[str]] = {}
    if wh.exists(ENV_SIGNALS):
        feed = wh.read(ENV_SIGNALS, dt_to=dt).where(F.col("region").isin(sorted(calendar.regions)))
        newest = feed.groupBy("region").agg(F.max("dt").alias("dt"))
        for r in feed.join(newest, ["region", "dt"]).select("region", "weather", "trends").collect():
            weather[(r.region, day)] = r.weather or ""
            trends[(r.region, day)] = list(r.trends or [])
    rows = situation_rows(calendar, [day], weather=weather, trends=trends)
    schema = "region string, season string, weather string, festivals array<string>, trends array<string>"
    return spark.createDataFrame([{k: r[k] for k in ("region", *SITUATION_COLUMNS)} for r in rows], schema)


def purchase_titles(wh: Warehouse, dt: RunDate, bought_days: int) -> DataFrame:
    """user_id, bought_titles: the titles (catalog as of dt) of what each user bought within
    `bought_days` before dt; a tag may not name one of them (`ValidationContext.for_user`)."""
    items = wh.read_snapshot(ITEMS, dt).select("item_id", "title")
    return (
        recently_bought(wh, dt, bought_days)
        .select("user_id", F.explode("excluded").alias("item_id"))
        .join(items, "item_id")
        .groupBy("user_id")
        .agg(F.array_sort(F.collect_set("title")).alias("bought_titles"))
    )


def vectors_in_mark_order(contexts: DataFrame, vectors: DataFrame) -> DataFrame:
    """`vectors` per user: the embedding of each of `entity_ids`, in that order (the order of
    the history's entity marks), null where an item has none; users without entities are absent."""
    exploded = contexts.select("user_id", F.posexplode("entity_ids").alias("pos", "item_id"))
    joined = exploded.join(vectors.select("item_id", "embedding"), "item_id", "left")
    by_position = F.array_sort(F.collect_list(F.struct("pos", "embedding")))
    return joined.groupBy("user_id").agg(F.transform(by_position, lambda s: s["embedding"]).alias("vectors"))


def mining_inputs(
    spark: SparkSession,
    wh: Warehouse,
    dt: RunDate,
    mode: str,
    cfg: Mapping[str, Any],
) -> DataFrame:
    """One row per user with a reliable history as of `dt`: `history` (V1 text or hybrid text
    by `mode`), `entity_ids` and their `vectors` (in order; grounding in both modes, entity
    slots in hybrid), profile columns, situation columns and `bought_titles` (core titles of
    purchases within `bought_days` before dt)."""
    if mode not in ("text", "hybrid"):
        raise ConfigError(f"context.mode must be text or hybrid, not {mode!r}")
    contexts = wh.read(USER_CONTEXT, dt=dt).where(F.col("events_kept") > 0)
    history = F.col("hybrid_text") if mode == "hybrid" else F.col("v1_text")
    base = contexts.select("user_id", history.alias("history"), "entity_ids")

    ordered = vectors_in_mark_order(base, current_embeddings(wh, dt, str(cfg["embedding_model"])))

    users = wh.read_snapshot(USERS, dt) if wh.exists(USERS) else None
    profile = (
        users.select(
            "user_id", *[F.col(c) if c in users.columns else F.lit(None).alias(c) for c in PROFILE_COLUMNS]
        )
        if users is not None
        else spark.createDataFrame(
            [], "user_id string, age int, gender string, region string, occupation string"
        )
    )
    bought = purchase_titles(wh, dt, int(cfg["bought_days"]))
    situation = situations(spark, wh, dt, cfg["calendar"])
    return (
        base.join(ordered, "user_id", "left")
        .join(profile, "user_id", "left")
        .join(F.broadcast(situation), "region", "left")
        .join(bought, "user_id", "left")
        .select(
            "user_id",
            "history",
            "entity_ids",
            F.coalesce("vectors", F.array().cast("array<array<float>>")).alias("vectors"),
            *PROFILE_COLUMNS,
            *SITUATION_COLUMNS,
            F.coalesce("bought_titles", F.array().cast("array<string>")).alias("bought_titles"),
        )
    )


def user_input(row: Mapping[str, Any], mode: str, adaptor: Any, core_words: int) -> UserInput:
    """What the agents read about one user. In hybrid mode every entity mark of the history gets
    the adaptor's slot for its item, in the order of `entity_ids` (the order of the marks); an
    item without a vector raises ValueError (the user becomes an error row) instead of letting
    every later mark read its neighbour's slot."""
    ids = tuple(row["entity_ids"] or ())
    vectors = [v for v in row["vectors"] or [] if v is not None]
    matrix = np.asarray(vectors, dtype=np.float32) if ids and len(vectors) == len(ids) else None
    embeds: tuple[np.ndarray, ...] = ()
    if mode == "hybrid" and ids:
        if matrix is None:
            raise ValueError(f"{len(ids) - len(vectors)} of {len(ids)} context items have no embedding")
        embeds = tuple(slot[None, :] for slot in A.entity_vectors(adaptor, matrix))
    return UserInput(
        user_id=str(row["user_id"]),
        history=str(row["history"] or ""),
        embeds=embeds,
        profile={c: row.get(c) for c in PROFILE_COLUMNS},
        situation={c: row.get(c) for c in SITUATION_COLUMNS},
        bought_titles=tuple(core_title(t, core_words) for t in row["bought_titles"] or ()),
        item_ids=ids if matrix is not None else (),
        item_vectors=matrix,
    )


def outcome_values(out: UserOutcome) -> dict[str, Any]:
    """A user's outcome as the OUTCOME columns."""
    return {
        "personas": [
            {
                "name": p.name,
                "description": p.description,
                "evidence": list(p.evidence),
                "signals": list(p.signals),
            }
            for p in out.personas
        ],
        "tags": [
            {
                "rank": t.rank,
                "tag": t.tag.tag,
                "persona": t.tag.persona or "",
                "score": t.tag.score,
                "reason": t.tag.reason,
                "evidence_item_ids": list(t.evidence_item_ids),
            }
            for t in out.tags
        ],
        "failure_step": out.failure.step if out.failure else None,
        "failure_reason": out.failure.reason if out.failure else None,
        "rejected": _counts(out.rejected),
        "rejected_examples": json.dumps(dict(sorted(out.rejected_examples.items())))
        if out.rejected_examples
        else None,
        "proposed": out.proposed,
        "duplicates": out.duplicates,
        "fallbacks": _counts(out.fallbacks),
        "failed_calls": _counts(out.failed_calls),
    }


def _counts(counts: Mapping[str, int]) -> str | None:
    return json.dumps(dict(sorted(counts.items()))) if counts else None


# Per Python worker: adaptors and validation contexts, loaded once and reused by every task.
_ADAPTORS: dict[str, Any] = {}
_VALIDATION: dict[str, ValidationContext] = {}


def adaptor_for(folder: str) -> Any:
    return per_process(_ADAPTORS, folder, lambda: A.load(folder)[0])


class MiningProgram:
    """The runner's program for mine_intents: rows of `mining_inputs` in, one outcome per user."""

    def __init__(self, plan: MiningPlan, engine: Engine) -> None:
        settings = AgentSettings.from_config(plan.agents)
        fingerprint = hashlib.sha256(plan.catalog + "\n".join(plan.catalog_words or ()).encode()).hexdigest()
        key = json.dumps([plan.agents, len(plan.brands), fingerprint], sort_keys=True, default=str)
        validation = per_process(_VALIDATION, key, lambda: plan.validation(settings))
        embedder = embedder_for(plan.embedding)
        self.plan = plan
        self.adaptor = adaptor_for(plan.adaptor_folder) if plan.adaptor_folder else None
        self.miner = Miner(engine, settings, build_schemas(settings), validation, embedder.encode)

    def prepare(self, row: Mapping[str, Any]) -> UserInput:
        return user_input(row, self.plan.mode, self.adaptor, self.plan.core_words)

    def run(self, prepared: Sequence[UserInput]) -> list[Outcome]:
        return [
            Outcome(o.user_id, o.user_id, outcome_values(o), o.calls)
            for o in mine(self.miner, self.plan.pipeline, prepared, self.plan.rescue)
        ]


@dataclass(frozen=True)
class MiningPlan:
    """Everything a worker needs to mine users, as plain picklable values. Settings and schemas
    are built in the worker (pydantic models made at run time do not pickle by name)."""

    pipeline: str
    mode: str
    agents: Mapping[str, Any]
    embedding: Mapping[str, Any]
    brands: Sequence[str]
    adaptor_folder: str | None
    core_words: int
    # Embeddings of what the shop sells (`catalog_reference`), row-major float32 bytes.
    catalog: bytes = b""
    catalog_dim: int = 0
    # The catalog's most frequent title and category words (`catalog_words`); None: tags are not
    # checked for unknown words.
    catalog_words: tuple[str, ...] | None = None
    # The run's generic tags: when set, the program mines its users' second chance with them
    # banned (`Miner.rescue`) instead of the pipeline.
    rescue: tuple[str, ...] = ()

    def __call__(self, engine: Engine) -> MiningProgram:
        return MiningProgram(self, engine)

    def catalog_matrix(self) -> np.ndarray | None:
        if not self.catalog or not self.catalog_dim:
            return None
        return np.frombuffer(self.catalog, dtype=np.float32).reshape(-1, self.catalog_dim)

    def validation(self, settings: AgentSettings) -> ValidationContext:
        """The run's tag and persona checks: brands, the catalog reference and the known words
        (the embedding model's vocabulary and the catalog's words)."""
        known = None
        if self.catalog_words is not None:
            known = vocabulary_words(self.embedding) | frozenset(self.catalog_words)
        return ValidationContext.for_run(settings, self.brands, self.catalog_matrix(), known)


def mining_stage(plan: MiningPlan, llm_cfg: Mapping[str, Any], mine_cfg: Mapping[str, Any]) -> LLMStage:
    """The runner's description of mine_intents for one variant (its ledger stage name) with the
    `mine` settings: users handed to the agents at once, and partitions (None: Spark's)."""
    partitions = mine_cfg.get("partitions")
    return LLMStage(
        name=f"mine_intents.{plan.pipeline}.{plan.mode}",
        llm=dict(llm_cfg),
        columns=OUTCOME,
        build=plan,
        batch_rows=int(mine_cfg["batch_users"]),
        key="user_id",
        partitions=int(partitions) if partitions else None,
    )


def resume_settings(plan: MiningPlan, model: str, users_file: str | None) -> dict[str, Any]:
    """What decides a user's outcome besides the data: a resumed run must match it exactly."""
    agents = json.dumps(plan.agents, sort_keys=True, default=str)
    return {
        "model": model,
        "prompt_version": str(plan.agents["prompt_version"]),
        "agents_sha256": hashlib.sha256(agents.encode()).hexdigest()[:16],
        "adaptor": Path(plan.adaptor_folder).name if plan.adaptor_folder else None,
        "users_file": users_file or "",
    }


def catalog_reference(
    wh: Warehouse, dt: RunDate, embedding_model: str, popular: int, lookback_days: int
) -> np.ndarray:
    """What the shop sells, as the embeddings a tag must come close to: the `popular` items with
    the most behaviours in the `lookback_days` before dt and the mean item of every category of
    the catalog as of dt (rows not normalised). Bounded by the config and the category count,
    never by the data."""
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.ml.stat import Summarizer

    vectors = current_embeddings(wh, dt, embedding_model).where(F.col("embedding").isNotNull())
    counts = (
        wh.read(BEHAVIORS, dt_from=dt.minus(lookback_days), dt_to=dt)
        .where(F.col("ts") < F.lit(dt.iso).cast("timestamp"))
        .groupBy("item_id")
        .count()
        .orderBy(F.col("count").desc(), F.col("item_id"))
        .limit(popular)
    )
    top = [r.embedding for r in counts.join(vectors, "item_id").select("embedding").collect()]
    categories = wh.read_snapshot(ITEMS, dt).select("item_id", "category")
    means = (
        vectors.join(categories, "item_id")
        .groupBy("category")
        .agg(Summarizer.mean(array_to_vector(F.col("embedding"))).alias("mean"))
        .select(vector_to_array(F.col("mean"), "float32").alias("mean"))
        .collect()
    )
    rows = [*top, *(r.mean for r in means)]
    return np.asarray(rows, dtype=np.float32) if rows else np.zeros((0, 0), dtype=np.float32)


def catalog_words(wh: Warehouse, dt: RunDate, limit: int) -> list[str]:
    """The `limit` words found in most of the catalog's titles and category names as of dt
    (lower case, letters only, as the validation's `words` splits a tag): product words a general
    vocabulary lacks ("oolong", "duffel"). Bounded by `limit`, never by the catalog's size."""
    items = wh.read_snapshot(ITEMS, dt)
    text = F.lower(F.concat_ws(" ", "title", "category", "category_path"))
    tokens = F.explode(F.array_distinct(F.split(text, r"[^\p{L}\p{N}_]+"))).alias("word")
    counted = (
        items.select("item_id", tokens)
        .where(F.col("word").rlike(r"^\p{L}+$"))
        .groupBy("word")
        .count()
        .orderBy(F.col("count").desc(), F.col("word"))
        .limit(limit)
    )
    return [r.word for r in counted.collect()]


def category_cores(wh: Warehouse, dt: RunDate, min_items: int, limit: int, max_words: int) -> list[str]:
    """The catalog's category names as of dt, as the cores a tag names: lower case, apostrophes dropped,
    every other run of non-letters a space ("Sci-Fi" -> "sci fi", "Children's" -> "childrens").
    Only categories with at least `min_items` items and names of at most `max_words` words of
    at most TAG_WORD_CHARS letters (a tag's own bounds), the `limit` largest first. A category
    named only by digits or symbols (an id) gives no core."""
    name = F.trim(F.regexp_replace(F.regexp_replace(F.lower("category"), "['’]", ""), "[^a-z]+", " "))
    counted = (
        wh.read_snapshot(ITEMS, dt)
        .select(name.alias("core"))
        .where(F.col("core") != "")
        .groupBy("core")
        .count()
        .where(F.col("count") >= min_items)
        .where(F.size(F.split("core", " ")) <= max_words)
        .where(F.forall(F.split("core", " "), lambda w: F.length(w) <= TAG_WORD_CHARS))
        .orderBy(F.col("count").desc(), F.col("core"))
        .limit(limit)
    )
    return [r.core for r in counted.collect()]


def grounded_agents(cfg: Any, wh: Warehouse, dt: RunDate) -> dict[str, Any]:
    """`pipeline.agents` made plain, with `tag.cores` filled from the catalog's category names
    when `tag.grounding.source` is `categories` and no fixed list is given; the prompt version
    then says so ("+cores": the prompts and the tag schema are not those of the plain version)."""
    agents = plain(cfg.pipeline.agents)
    tag = agents["tag"]
    grounding = tag.pop("grounding", None) or {}
    source = grounding.get("source")
    if source not in (None, "categories"):
        raise ConfigError(f"pipeline.agents.tag.grounding.source must be categories or null, not {source!r}")
    if source and not tag.get("cores"):
        tag["cores"] = category_cores(
            wh, dt, int(grounding["min_items"]), int(grounding["max_cores"]), int(tag["max_words"])
        )
    if tag.get("cores"):
        first = "-first" if tag.get("core_first") else ""
        history = "-history" if tag.get("history_cores") else ""
        history += "-beyond" if history and tag.get("beyond_history") else ""
        agents["prompt_version"] = f"{agents['prompt_version']}+cores{first}{history}"
    return agents


def catalog_brands(wh: Warehouse, dt: RunDate) -> list[str]:
    """The brands of the catalog as of dt: a tag naming one is rejected (no brands in tags)."""
    items = wh.read_snapshot(ITEMS, dt).where(F.col("brand").isNotNull())
    return [r.brand for r in items.select("brand").distinct().collect()]


def mining_plan(cfg: Any, wh: Warehouse, dt: RunDate, variant: Mapping[str, str]) -> MiningPlan:
    """The mining plan of a run (`cfg` is the run's config): agents, models, the catalog's
    brands, what it sells (the reference a tag must come close to) and the adaptor."""
    folder = None
    if variant["context_mode"] == "hybrid":
        # A served policy keeps the base model's input embeddings: its adaptor is the base model's.
        expected = {"llm": base_model_name(cfg.llm), "embedding_model": str(cfg.embedding.model_name)}
        folder = A.resolve(cfg.adaptor.artifacts_dir, cfg.adaptor.get("version"), expected, dt)
    check = cfg.pipeline.agents.validation
    catalog = (
        catalog_reference(
            wh,
            dt,
            str(cfg.embedding.model_name),
            int(check.catalog_popular_items),
            int(check.catalog_popular_days),
        )
        if check.get("catalog_min_cosine") is not None
        else np.zeros((0, 0), dtype=np.float32)
    )
    words = check.get("catalog_words")
    return MiningPlan(
        pipeline=variant["pipeline"],
        mode=variant["context_mode"],
        agents=grounded_agents(cfg, wh, dt),
        embedding=plain(cfg.embedding),
        brands=catalog_brands(wh, dt),
        adaptor_folder=str(folder) if folder else None,
        core_words=int(cfg.compress.core_title_words),
        catalog=catalog.tobytes(),
        catalog_dim=int(catalog.shape[1]) if catalog.size else 0,
        catalog_words=None if words is None else tuple(catalog_words(wh, dt, int(words))),
    )
