"""The simplest LLM stage program: one request per row (`key`, `user_id`, `messages` as JSON,
optional `embeds` and `history_message`), the model's text and parsed JSON out, through the
shared runner of `udfs.llm` (one engine per executor, error rows, the ledger)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydantic import BaseModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recgpt.errors import ConfigError
from recgpt.llm.engine import Engine
from recgpt.llm.request import Request, Sampling, decode_block, decode_messages
from udfs.llm import LLMStage, Outcome, Program, Progress, run

REQUEST_COLUMNS = pa.schema(
    [
        pa.field("text", pa.string()),
        pa.field("parsed_json", pa.string()),
        pa.field("finish_reason", pa.string()),
    ]
)


def to_request(row: Mapping[str, Any], schema: type[BaseModel] | None, sampling: Sampling) -> Request:
    blocks = tuple(decode_block(b) for b in (row.get("embeds") or ()))
    history = row.get("history_message")
    return Request(
        key=str(row["key"]),
        messages=decode_messages(row["messages"]),
        embeds=blocks,
        schema=schema,
        sampling=sampling,
        history_message=None if history is None else int(history),
        user_id=row.get("user_id"),
    )


class _RequestProgram:
    def __init__(self, engine: Engine, schema: type[BaseModel] | None, sampling: Sampling, step: str) -> None:
        self.engine, self.schema, self.sampling, self.step = engine, schema, sampling, step

    def prepare(self, row: Mapping[str, Any]) -> Request:
        return to_request(row, self.schema, self.sampling)

    def run(self, prepared: Sequence[Request]) -> list[Outcome]:
        return [
            Outcome(
                r.key,
                r.user_id,
                {"text": r.text, "parsed_json": r.parsed_json(), "finish_reason": r.finish_reason},
                [(self.step, r)],
                r.error,
            )
            for r in self.engine.generate(list(prepared))
        ]


@dataclass(frozen=True)
class Requests:
    """Builds the one-request-per-row program: request rows (`key`, `user_id`, `messages` as
    JSON, optional `embeds` and `history_message`) in, the model's text and parsed JSON out."""

    schema: type[BaseModel] | None
    sampling: Sampling
    step: str

    def __call__(self, engine: Engine) -> Program:
        return _RequestProgram(engine, self.schema, self.sampling, self.step)


def generate(
    df: DataFrame,
    cfg: Mapping[str, Any],
    *,
    schema: type[BaseModel] | None = None,
    sampling: Sampling | None = None,
    label: str = "llm",
    progress: Progress | None = None,
) -> DataFrame:
    """The model's answer to each request row of `df` (one call each), through the runner."""
    if "messages" not in df.columns:
        raise ConfigError("LLM request DataFrame lacks column 'messages'")

    def optional(name: str, kind: str) -> Any:
        return (F.col(name) if name in df.columns else F.lit(None)).cast(kind).alias(name)

    requests = df.select(
        F.col("key").cast("string").alias("key"),
        optional("user_id", "string"),
        F.col("messages").cast("string").alias("messages"),
        optional("embeds", "array<binary>"),
        optional("history_message", "int"),
    )
    spark_cfg = dict(cfg.get("spark") or {})
    stage = LLMStage(
        name=label,
        llm=dict(cfg),
        columns=REQUEST_COLUMNS,
        build=Requests(schema, sampling or Sampling.from_config(cfg.get("sampling")), label),
        batch_rows=int(spark_cfg.get("batch_size", 256)),
        partitions=int(spark_cfg["partitions"]) if spark_cfg.get("partitions") else None,
    )
    return run(requests, stage, progress)
