"""LLM calls inside Spark: a DataFrame of requests in, a DataFrame of results out (mapInArrow),
with ONE engine per executor shared by every task, partition and stage, and the cost ledger.

Request rows: `key`, `user_id`, `messages` (JSON list of {role, content}), optional `embeds`
(list of .npy-encoded blocks for the embedding marks) and `history_message` (index of the message
whose oldest lines may be truncated). One output schema and one sampling setting per call.

Placement (`llm.placement`): `executor_server` (default) starts one vLLM server per executor on
first use and every task sends its requests there, so all concurrent tasks are batched together;
`remote` sends to a shared server at `llm.http.base_url`. (A vLLM engine inside each Python worker
is not offered: engines in concurrent workers fight over the executor's cores.)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pyarrow as pa
from pydantic import BaseModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from recgpt.errors import ConfigError
from recgpt.llm.engine import Engine, RetryPolicy
from recgpt.llm.render import PromptRenderer
from recgpt.llm.request import Request, Result, Sampling, decode_block, decode_messages
from recgpt.tables import LLM_CALLS
from udfs.warehouse import Lineage, Warehouse, WriteResult

log = logging.getLogger(__name__)

PLACEMENTS = ("executor_server", "remote")

RESULT_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("text", pa.string()),
        pa.field("parsed_json", pa.string()),
        pa.field("error", pa.string()),
        pa.field("prompt_tokens", pa.int64(), nullable=False),
        pa.field("cached_prompt_tokens", pa.int64()),
        pa.field("generated_tokens", pa.int64(), nullable=False),
        pa.field("latency_ms", pa.float64(), nullable=False),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("finish_reason", pa.string()),
        pa.field("truncated_lines", pa.int32()),
        pa.field("model", pa.string(), nullable=False),
        pa.field("engine", pa.string(), nullable=False),
    ]
)

# Per Python worker: the renderer (tokenizer, embedding table), loaded once and reused.
_RENDERERS: dict[str, PromptRenderer] = {}


def _cache_key(cfg: Mapping[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True, default=str)


def renderer_for(cfg: Mapping[str, Any]) -> PromptRenderer:
    key = _cache_key(cfg)
    if key not in _RENDERERS:
        context = dict(cfg.get("context") or {})
        _RENDERERS[key] = PromptRenderer(
            str(cfg["model_path"]),
            int(cfg["max_model_len"]),
            policy=context.get("policy", "truncate_oldest"),
            tokenizer_path=cfg.get("tokenizer_path"),
        )
    return _RENDERERS[key]


def executor_engine(cfg: Mapping[str, Any]) -> tuple[Engine, str]:
    """This executor's engine for `cfg` and a name for it (host:pid of the process doing the
    inference). For `executor_server` it checks the server on every call (cheap) so a server that
    died is replaced rather than failing every later partition."""
    placement = str(cfg.get("placement", "executor_server"))
    retry = RetryPolicy.from_config(cfg.get("retry"))
    host = socket.gethostname()
    if placement == "executor_server":
        from recgpt.llm.http_backend import OpenAIHTTPBackend
        from recgpt.llm.server import ensure_server

        # The Python daemon that forks the workers lives as long as the executor does.
        info = ensure_server(cfg, owner_pid=os.getppid())
        backend = OpenAIHTTPBackend.from_config(info.url, cfg)
        return Engine(backend, renderer_for(cfg), retry), f"{host}:{info.pid}"
    if placement == "remote":
        from recgpt.llm.http_backend import OpenAIHTTPBackend

        url = (cfg.get("http") or {}).get("base_url")
        if not url:
            raise ConfigError("llm.placement=remote needs llm.http.base_url")
        return Engine(OpenAIHTTPBackend.from_config(str(url), cfg), renderer_for(cfg), retry), str(url)
    raise ConfigError(f"llm.placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}")


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


def _result_row(result: Result, model: str, engine: str) -> dict[str, Any]:
    return {
        "key": result.key,
        "user_id": result.user_id,
        "text": result.text,
        "parsed_json": result.parsed_json(),
        "error": result.error,
        "prompt_tokens": result.prompt_tokens,
        "cached_prompt_tokens": result.cached_prompt_tokens,
        "generated_tokens": result.generated_tokens,
        "latency_ms": result.latency_ms,
        "attempts": result.attempts,
        "finish_reason": result.finish_reason,
        "truncated_lines": result.truncated_lines,
        "model": model,
        "engine": engine,
    }


def _bad_request(row: Mapping[str, Any], reason: str, model: str, engine: str) -> dict[str, Any]:
    failed = Result(
        str(row.get("key")),
        row.get("user_id"),
        None,
        None,
        f"bad_request: {reason}",
        0,
        None,
        0,
        0.0,
        None,
        0,
    )
    return _result_row(failed, model, engine)


def chunked_rows(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[list[dict[str, Any]]]:
    """The rows of a partition's Arrow batches regrouped into lists of `size` (the last may be
    shorter): the unit handed to the engine at once, whatever Spark's Arrow batch size is."""
    buffer: list[dict[str, Any]] = []
    for batch in batches:
        for row in batch.to_pylist():
            buffer.append(row)
            if len(buffer) >= size:
                yield buffer
                buffer = []
    if buffer:
        yield buffer


def partition_runner(
    cfg: Mapping[str, Any],
    schema: type[BaseModel] | None,
    sampling: Sampling,
    batch_size: int,
    label: str,
    counters: tuple[Any, Any] | None = None,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function: rows are grouped into batches of `batch_size` requests (bounded
    memory), each batch goes to the executor's engine in one call, results come back as Arrow.
    `counters` (requests, generated tokens) are Spark accumulators the driver's Progress reads."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        engine, name = executor_engine(cfg)
        task = TaskContext.get()
        part = task.partitionId() if task else 0
        done = tokens = 0
        started = time.perf_counter()

        def flush(rows: list[dict[str, Any]]) -> pa.RecordBatch:
            nonlocal done, tokens
            out: list[dict[str, Any] | None] = [None] * len(rows)
            requests, slots, keys = [], [], set()
            for i, row in enumerate(rows):
                try:
                    request = to_request(row, schema, sampling)
                except (ValueError, KeyError, TypeError) as exc:
                    out[i] = _bad_request(row, str(exc), engine.model, name)
                    continue
                if request.key in keys:
                    out[i] = _bad_request(row, f"duplicate key {request.key!r}", engine.model, name)
                    continue
                keys.add(request.key)
                requests.append(request)
                slots.append(i)
            batch_tokens = 0
            for i, result in zip(slots, engine.generate(requests), strict=True):
                out[i] = _result_row(result, engine.model, name)
                batch_tokens += result.generated_tokens
            done += len(rows)
            tokens += batch_tokens
            if counters is not None:
                counters[0].add(len(rows))
                counters[1].add(batch_tokens)
            elapsed = time.perf_counter() - started
            print(
                f"[llm {label}] partition {part}: {done:,} requests done, "
                f"{tokens / max(elapsed, 1e-9):,.0f} generated tok/s",
                file=sys.stderr,
                flush=True,
            )
            return pa.RecordBatch.from_pylist(out, schema=RESULT_SCHEMA)

        for rows in chunked_rows(batches, batch_size):
            yield flush(rows)

    return run


REQUEST_COLUMNS = ("key", "user_id", "messages", "embeds", "history_message")


def generate(
    df: DataFrame,
    cfg: Mapping[str, Any],
    *,
    schema: type[BaseModel] | None = None,
    sampling: Sampling | None = None,
    label: str = "llm",
    progress: Progress | None = None,
) -> DataFrame:
    """Results (RESULT_SCHEMA) for the request rows of `df`; lazy, like any transform."""
    for required in ("key", "messages"):
        if required not in df.columns:
            raise ConfigError(f"LLM request DataFrame lacks column {required!r}")
    spark_cfg = dict(cfg.get("spark") or {})
    columns = [
        F.col("key").cast("string").alias("key"),
        (F.col("user_id") if "user_id" in df.columns else F.lit(None)).cast("string").alias("user_id"),
        F.col("messages").cast("string").alias("messages"),
        (F.col("embeds") if "embeds" in df.columns else F.lit(None)).cast("array<binary>").alias("embeds"),
        (F.col("history_message") if "history_message" in df.columns else F.lit(None))
        .cast("int")
        .alias("history_message"),
    ]
    requests = df.select(*columns)
    if spark_cfg.get("partitions"):
        requests = requests.repartition(int(spark_cfg["partitions"]))
    runner = partition_runner(
        dict(cfg),
        schema,
        sampling or Sampling.from_config(cfg.get("sampling")),
        int(spark_cfg.get("batch_size", 256)),
        label,
        None if progress is None else (progress.requests, progress.tokens),
    )
    return requests.mapInArrow(runner, from_arrow_schema(RESULT_SCHEMA))


def summarize(results: DataFrame) -> dict[str, Any]:
    """Calls, errors and tokens of a results DataFrame (one Spark job)."""
    row = results.agg(
        F.count("*").alias("calls"),
        F.count("error").alias("errors"),
        F.sum("prompt_tokens").alias("prompt_tokens"),
        F.sum("cached_prompt_tokens").alias("cached_prompt_tokens"),
        F.sum("generated_tokens").alias("generated_tokens"),
        F.sum(F.greatest(F.col("attempts") - 1, F.lit(0))).alias("repairs"),
    ).first()
    assert row is not None
    return {
        k: int(row[k] or 0)
        for k in ("calls", "errors", "prompt_tokens", "cached_prompt_tokens", "generated_tokens", "repairs")
    }


def write_ledger(warehouse: Warehouse, results: DataFrame, stage: str, lineage: Lineage) -> WriteResult:
    """Replace the ledger rows of (run date, stage) with this run's calls: reruns never duplicate."""
    ledger = results.select(
        F.lit(stage).alias("stage"),
        F.col("key").alias("request_key"),
        "user_id",
        "prompt_tokens",
        "cached_prompt_tokens",
        "generated_tokens",
        "latency_ms",
        "attempts",
        "finish_reason",
        "truncated_lines",
        "error",
        "model",
    )
    return warehouse.write(
        ledger, LLM_CALLS, mode="replace", lineage=lineage, where={"dt": lineage.dt, "stage": stage}
    )


class Progress:
    """Prints an LLM step's progress from the driver every `interval_s` seconds: requests done of
    the total, generated tokens/s and elapsed time. Counts arrive as tasks finish (accumulators);
    each task also prints its own running count to its stderr."""

    def __init__(
        self, spark: SparkSession, label: str, total: int | None = None, interval_s: float = 30.0
    ) -> None:
        self.spark = spark
        self.label = label
        self.total = total
        self.interval_s = interval_s
        self.requests = spark.sparkContext.accumulator(0)
        self.tokens = spark.sparkContext.accumulator(0)
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Progress:
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        total = f"/{self.total:,}" if self.total is not None else ""
        return (
            f"[llm {self.label}] {self.requests.value:,}{total} requests · "
            f"{self.tokens.value / max(elapsed, 1e-9):,.0f} generated tok/s · {elapsed:,.0f}s"
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            print(self.line(), file=sys.stderr, flush=True)
