"""Intent mining inside Spark: one input row per user (context, profile, situation, recent
purchases, the context items' vectors), then a mapInArrow that runs the agents a batch of users
at a time on the executor's engine and returns one outcome row per user (personas, tags, failure
and every call for the ledger), which the job explodes into its tables."""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from recgpt import adaptor as A
from recgpt.agents.mining import Miner, UserInput, UserOutcome, mine
from recgpt.agents.schemas import build_schemas
from recgpt.agents.settings import AgentSettings
from recgpt.agents.validate import ValidationContext
from recgpt.calendar import Calendar
from recgpt.context import core_title
from recgpt.env_signals import situation_rows
from recgpt.errors import ConfigError
from recgpt.tables import BEHAVIORS, ENV_SIGNALS, USER_CONTEXT
from udfs.embeddings import current_embeddings, embedder_for
from udfs.hybrid import _adaptor
from udfs.llm import chunked_rows, executor_engine
from udfs.warehouse import Warehouse

CALL = pa.struct(
    [
        pa.field("step", pa.string()),
        pa.field("request_key", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("cached_prompt_tokens", pa.int64()),
        pa.field("generated_tokens", pa.int64()),
        pa.field("latency_ms", pa.float64()),
        pa.field("attempts", pa.int32()),
        pa.field("finish_reason", pa.string()),
        pa.field("truncated_lines", pa.int32()),
        pa.field("error", pa.string()),
    ]
)
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
OUTCOME = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("personas", pa.list_(PERSONA)),
        pa.field("tags", pa.list_(TAG)),
        pa.field("failure_step", pa.string()),
        pa.field("failure_reason", pa.string()),
        pa.field("rejected", pa.string()),
        pa.field("proposed", pa.int32()),
        pa.field("duplicates", pa.int32()),
        pa.field("calls", pa.list_(CALL)),
        pa.field("model", pa.string()),
        pa.field("engine", pa.string()),
    ]
)
PROFILE_COLUMNS = ("age", "gender", "region", "occupation")
SITUATION_COLUMNS = ("season", "weather", "festivals", "trends")


def situations(spark: SparkSession, wh: Warehouse, dt: str, calendar_cfg: Mapping[str, Any]) -> DataFrame:
    """The situation of every calendar region on the run date: season and festivals from the
    calendar, weather and trends from the newest `env_signals` feed row on or before the date."""
    calendar = Calendar.from_config(calendar_cfg)
    day = _dt.date.fromisoformat(dt)
    weather: dict[tuple[str, _dt.date], str] = {}
    trends: dict[tuple[str, _dt.date], list[str]] = {}
    if wh.exists(ENV_SIGNALS):
        feed = wh.read(ENV_SIGNALS, dt_to=dt).where(F.col("region").isin(sorted(calendar.regions)))
        newest = feed.groupBy("region").agg(F.max("dt").alias("dt"))
        for r in feed.join(newest, ["region", "dt"]).select("region", "weather", "trends").collect():
            weather[(r.region, day)] = r.weather or ""
            trends[(r.region, day)] = list(r.trends or [])
    rows = situation_rows(calendar, [day], weather=weather, trends=trends)
    schema = "region string, season string, weather string, festivals array<string>, trends array<string>"
    return spark.createDataFrame([{k: r[k] for k in ("region", *SITUATION_COLUMNS)} for r in rows], schema)


def mining_inputs(
    spark: SparkSession,
    wh: Warehouse,
    dt: str,
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

    vectors = current_embeddings(wh, dt, str(cfg["embedding_model"])).select("item_id", "embedding")
    exploded = base.select("user_id", F.posexplode("entity_ids").alias("pos", "item_id"))
    ordered = (
        exploded.join(vectors, "item_id", "left")
        .groupBy("user_id")
        .agg(
            F.transform(
                F.array_sort(F.collect_list(F.struct("pos", "embedding"))), lambda s: s["embedding"]
            ).alias("vectors")
        )
    )

    users = wh.read_snapshot("users", dt) if wh.exists("users") else None
    profile = (
        users.select(
            "user_id", *[F.col(c) if c in users.columns else F.lit(None).alias(c) for c in PROFILE_COLUMNS]
        )
        if users is not None
        else spark.createDataFrame(
            [], "user_id string, age int, gender string, region string, occupation string"
        )
    )
    since = (_dt.date.fromisoformat(dt) - _dt.timedelta(days=int(cfg["bought_days"]))).isoformat()
    items = wh.read_snapshot("items", dt).select("item_id", "title")
    bought = (
        wh.read(BEHAVIORS, dt_from=since, dt_to=dt)
        .where(
            (F.col("behavior") == "purchase")
            & (F.col("ts") < F.lit(dt).cast("timestamp"))
            & (F.col("ts") >= F.lit(since).cast("timestamp"))
        )
        .join(items, "item_id")
        .groupBy("user_id")
        .agg(F.collect_set("title").alias("bought_titles"))
    )
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


def _user_input(row: Mapping[str, Any], mode: str, adaptor: Any, core_words: int) -> UserInput:
    ids = tuple(row["entity_ids"] or ())
    vectors = row["vectors"] or []
    present = [v for v in vectors if v is not None]
    matrix = np.asarray(present, dtype=np.float32) if present else None
    embeds: tuple[np.ndarray, ...] = ()
    if mode == "hybrid" and ids:
        if len(present) != len(ids):
            # An entity without a vector would read a wrong slot: the request fails as bad.
            raise ValueError(f"{len(ids) - len(present)} of {len(ids)} context items have no embedding")
        embeds = tuple(slot[None, :] for slot in A.entity_vectors(adaptor, matrix))
    return UserInput(
        user_id=str(row["user_id"]),
        history=str(row["history"] or ""),
        embeds=embeds,
        profile={c: row.get(c) for c in PROFILE_COLUMNS},
        situation={c: row.get(c) for c in SITUATION_COLUMNS},
        bought_titles=tuple(core_title(t, core_words) for t in row["bought_titles"] or ()),
        item_ids=ids if matrix is not None and len(present) == len(ids) else (),
        item_vectors=matrix if len(present) == len(ids) else None,
    )


def _outcome_row(out: UserOutcome, model: str, engine: str) -> dict[str, Any]:
    return {
        "user_id": out.user_id,
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
        "rejected": json.dumps(dict(sorted(out.rejected.items()))) if out.rejected else None,
        "proposed": out.proposed,
        "duplicates": out.duplicates,
        "calls": [
            {
                "step": step,
                "request_key": r.key,
                "prompt_tokens": r.prompt_tokens,
                "cached_prompt_tokens": r.cached_prompt_tokens,
                "generated_tokens": r.generated_tokens,
                "latency_ms": r.latency_ms,
                "attempts": r.attempts,
                "finish_reason": r.finish_reason,
                "truncated_lines": r.truncated_lines,
                "error": r.error,
            }
            for step, r in out.calls
        ],
        "model": model,
        "engine": engine,
    }


def _bad_input(user_id: str, reason: str, model: str, engine: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "personas": [],
        "tags": [],
        "failure_step": "input",
        "failure_reason": f"bad_request: {reason}",
        "rejected": None,
        "proposed": 0,
        "duplicates": 0,
        "calls": [],
        "model": model,
        "engine": engine,
    }


_VALIDATION: dict[str, ValidationContext] = {}


def miner_runner(
    pipeline: str,
    mode: str,
    llm_cfg: Mapping[str, Any],
    emb_cfg: Mapping[str, Any],
    agents_cfg: Mapping[str, Any],
    brands: Sequence[str],
    adaptor_folder: str | None,
    batch_users: int,
    core_words: int,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function. Settings and schemas are built in the worker (pydantic models
    made at run time do not pickle by name); the engine, embedder and adaptor are per process."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        settings = AgentSettings.from_config(agents_cfg)
        key = json.dumps([agents_cfg, len(brands)], sort_keys=True, default=str)
        if key not in _VALIDATION:
            _VALIDATION[key] = ValidationContext.for_run(settings, brands)
        engine, name = executor_engine(llm_cfg)
        embedder = embedder_for(emb_cfg)
        adaptor = _adaptor(adaptor_folder) if adaptor_folder else None
        miner = Miner(engine, settings, build_schemas(settings), _VALIDATION[key], embedder.encode)
        task = TaskContext.get()
        part = task.partitionId() if task else 0
        done = tokens = 0
        started = time.perf_counter()

        def flush(rows: list[dict[str, Any]]) -> pa.RecordBatch:
            nonlocal done, tokens
            out: list[dict[str, Any]] = []
            users = []
            for row in rows:
                try:
                    users.append(_user_input(row, mode, adaptor, core_words))
                except (ValueError, TypeError) as exc:
                    out.append(_bad_input(str(row["user_id"]), str(exc), engine.model, name))
            outcomes = mine(miner, pipeline, users)
            out += [_outcome_row(o, engine.model, name) for o in outcomes]
            done += len(rows)
            tokens += sum(r.prompt_tokens + r.generated_tokens for o in outcomes for _, r in o.calls)
            print(
                f"[mine_intents {pipeline}/{mode}] partition {part}: {done:,} users done, "
                f"{tokens / max(done, 1):,.0f} tokens per user, {time.perf_counter() - started:,.0f}s",
                file=sys.stderr,
                flush=True,
            )
            return pa.RecordBatch.from_pylist(out, schema=OUTCOME)

        for rows in chunked_rows(batches, batch_users):
            yield flush(rows)

    return run


def mine_users(inputs: DataFrame, runner: Callable[..., Any]) -> DataFrame:
    return inputs.mapInArrow(runner, from_arrow_schema(OUTCOME))
