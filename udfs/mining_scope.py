"""Which users a mining run is for, and in which variant: every stage that reads or checks mined
rows (mine_intents, recall, dq, evaluate) asks here, so they agree on the scope of a run date."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recgpt.errors import RecGPTError
from recgpt.rundate import RunDate
from recgpt.tables import USER_CONTEXT
from sparkio.warehouse import Warehouse

PIPELINES = ("v2", "v1_baseline")


def context_mode(cfg: Any) -> str:
    """V1 reads its text context whatever `context.mode` says: hybrid inference is V2's."""
    return "text" if str(cfg.pipeline.name) == "v1_baseline" else str(cfg.context.mode)


def variant_of(cfg: Any) -> dict[str, str]:
    """The partition values of a mined variant: pipeline and context mode."""
    pipeline = str(cfg.pipeline.name)
    if pipeline not in PIPELINES:
        raise RecGPTError(f"pipeline must be one of {PIPELINES}, not {pipeline!r}")
    return {"pipeline": pipeline, "context_mode": context_mode(cfg)}


def listed_users(spark: SparkSession, wh: Warehouse, dt: RunDate, path: str) -> DataFrame:
    """The user ids of a users file (one per line): an evaluation mines a chosen sample. Every
    listed id must have a user_context row for dt: a list drawn from other data (another date or
    dataset) is refused instead of silently mining fewer users than it names."""
    if not Path(path).is_file():
        raise RecGPTError(f"mine.users_file {path} does not exist")
    ids = sorted({line.strip() for line in Path(path).read_text().splitlines() if line.strip()})
    listed = spark.createDataFrame([(i,) for i in ids], "user_id string")
    contexts = wh.read(USER_CONTEXT, dt=dt).select("user_id")
    unknown = listed.join(contexts, "user_id", "left_anti")
    n_unknown = unknown.count()
    if n_unknown:
        examples = ", ".join(r.user_id for r in unknown.orderBy("user_id").limit(5).collect())
        raise RecGPTError(
            f"mine.users_file {path}: {n_unknown:,} of its {len(ids):,} user ids have no "
            f"user_context row for {dt} (e.g. {examples}); list users of this date"
        )
    return listed


def contexts_in_scope(spark: SparkSession, wh: Warehouse, dt: RunDate, users_file: str | None) -> DataFrame:
    """user_context rows of dt a mining run accounts for: every user's, or those of the users
    listed in `users_file`."""
    contexts = wh.read(USER_CONTEXT, dt=dt)
    if users_file:
        contexts = contexts.join(listed_users(spark, wh, dt, users_file), "user_id", "left_semi")
    return contexts


def users_in_scope(spark: SparkSession, wh: Warehouse, dt: RunDate, users_file: str | None) -> DataFrame:
    """Users a mining run must give an outcome: those in scope with a reliable history as of dt."""
    return contexts_in_scope(spark, wh, dt, users_file).where(F.col("events_kept") > 0).select("user_id")
