"""The one way an LLM stage runs inside Spark. A stage describes its work as a `Program` (rows in,
validated outcome rows out, every engine call it made attached); this runner does the rest:
batching per partition, ONE engine per executor shared by every task, partition and stage,
progress, error rows for bad input, the `llm_calls` ledger and the per-step summary.

Placement (`llm.placement`): `executor_server` (default) starts one vLLM server per executor on
first use and every task sends its requests there, so all concurrent tasks are batched together;
`remote` sends to a shared server at `llm.http.base_url`. (A vLLM engine inside each Python worker
is not offered: engines in concurrent workers fight over the executor's cores.)

Output rows: `key`, `user_id`, the program's own columns, `error` (why the row has no output),
`calls` (one struct per engine request: step, tokens, latency, attempts, error), `model` and
`engine` (host:pid of the process that ran the model).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from recgpt.errors import ConfigError
from recgpt.llm.engine import Backend, Completion, Engine, RetryPolicy
from recgpt.llm.render import PromptRenderer
from recgpt.llm.request import Result
from recgpt.tables import LLM_CALLS
from sparkio.warehouse import Lineage, Warehouse, WriteResult
from sparkio.worker import per_process

PLACEMENTS = ("executor_server", "remote")

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
KEY_FIELDS = (pa.field("key", pa.string(), nullable=False), pa.field("user_id", pa.string()))
RUNNER_FIELDS = (
    pa.field("error", pa.string()),
    pa.field("calls", pa.list_(CALL)),
    pa.field("model", pa.string()),
    pa.field("engine", pa.string()),
)
BAD_INPUT = (ValueError, TypeError, KeyError)


@dataclass
class Outcome:
    """A program's answer for one input row: its columns (`values`, validated), every engine
    call made for the row as (step, result), and `error` when the row has no usable output."""

    key: str
    user_id: str | None = None
    values: Mapping[str, Any] = field(default_factory=dict)
    calls: Sequence[tuple[str, Result]] = ()
    error: str | None = None


class Program(Protocol):
    """A stage's work on the rows of one task, built in the worker around the executor's engine."""

    def prepare(self, row: Mapping[str, Any]) -> Any:
        """The program's input for one row; ValueError/TypeError/KeyError marks the row bad."""
        ...

    def run(self, prepared: Sequence[Any]) -> list[Outcome]:
        """One outcome per prepared input, calling the engine in as few batches as it can."""
        ...


@dataclass(frozen=True)
class LLMStage:
    """What a stage tells the runner. `build` is pickled to the workers and called there with
    the executor's engine (models, validators and schemas are made in the worker)."""

    name: str  # the ledger's `stage` value and the progress label, e.g. "mine_intents.v2.hybrid"
    llm: Mapping[str, Any]  # the `llm` config group
    columns: pa.Schema  # the program's own output columns
    build: Callable[[Engine], Program]
    batch_rows: int = 256  # rows handed to the program at once (bounded memory, full engine batches)
    key: str = "key"  # the input column naming a row
    partitions: int | None = None  # repartition the input first (None: keep Spark's)

    def output_schema(self) -> pa.Schema:
        return pa.schema([*KEY_FIELDS, *self.columns, *RUNNER_FIELDS])


# -- the executor's engine --------------------------------------------------------------------

# Per Python worker: the renderer (tokenizer, embedding table), loaded once and reused.
_RENDERERS: dict[str, PromptRenderer] = {}


def renderer_for(cfg: Mapping[str, Any]) -> PromptRenderer:
    context = dict(cfg.get("context") or {})
    return per_process(
        _RENDERERS,
        json.dumps(cfg, sort_keys=True, default=str),
        lambda: PromptRenderer(
            str(cfg["model_path"]),
            int(cfg["max_model_len"]),
            policy=context.get("policy", "truncate_oldest"),
            tokenizer_path=cfg.get("tokenizer_path"),
        ),
    )


def executor_engine(
    cfg: Mapping[str, Any], observer: Callable[[Completion], None] | None = None
) -> tuple[Engine, str]:
    """This executor's engine for `cfg` and a name for it (host:pid of the process doing the
    inference). For `executor_server` it checks the server on every call (cheap) so a server that
    died is replaced rather than failing every later partition, and one that dies while a batch
    is in flight is restarted by the backend, whose calls then retry against it. `observer` is told of each
    completion as it arrives."""
    from recgpt.llm.http_backend import OpenAIHTTPBackend

    placement = str(cfg.get("placement", "executor_server"))
    retry = RetryPolicy.from_config(cfg.get("retry"))
    if placement == "executor_server":
        from recgpt.llm.server import ensure_server

        # The Python daemon that forks the workers lives as long as the executor does.
        info = ensure_server(cfg, owner_pid=os.getppid())
        url, name = info.url, f"{socket.gethostname()}:{info.pid}"
    elif placement == "remote":
        url = name = str((cfg.get("http") or {}).get("base_url") or "")
        if not url:
            raise ConfigError("llm.placement=remote needs llm.http.base_url")
    else:
        raise ConfigError(f"llm.placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}")
    http = OpenAIHTTPBackend.from_config(url, cfg)
    http.observer = observer
    if placement == "executor_server":  # a server that dies mid-batch is restarted, calls retried
        http.reconnect = lambda: ensure_server(cfg, owner_pid=os.getppid()).url
    return Engine(captured(http, cfg), renderer_for(cfg), retry), name


def captured(backend: Backend, cfg: Mapping[str, Any]) -> Backend:
    """`backend`, or with `llm.capture_requests` set (a folder; benchmarks only) the same backend
    recording every call it sends, one file per task named by Spark stage (one per wave),
    partition and attempt, so a replay can keep the stage's batches and their order."""
    folder = cfg.get("capture_requests")
    if not folder:
        return backend
    from pyspark import TaskContext

    from recgpt.llm.capture import CapturingBackend

    task = TaskContext.get()
    name = (
        f"stage{task.stageId()}-part{task.partitionId()}-attempt{task.attemptNumber()}"
        if task
        else f"pid{os.getpid()}-{id(backend):x}"
    )
    return CapturingBackend(backend, Path(str(folder)) / f"{name}.jsonl")


# -- one task's rows ----------------------------------------------------------------------------


def chunked_rows(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[list[dict[str, Any]]]:
    """The rows of a partition's Arrow batches regrouped into lists of `size` (the last may be
    shorter): the unit handed to the program at once, whatever Spark's Arrow batch size is."""
    buffer: list[dict[str, Any]] = []
    for batch in batches:
        for row in batch.to_pylist():
            buffer.append(row)
            if len(buffer) >= size:
                yield buffer
                buffer = []
    if buffer:
        yield buffer


def call_row(step: str, result: Result) -> dict[str, Any]:
    return {
        "step": step,
        "request_key": result.key,
        "prompt_tokens": result.prompt_tokens,
        "cached_prompt_tokens": result.cached_prompt_tokens,
        "generated_tokens": result.generated_tokens,
        "latency_ms": result.latency_ms,
        "attempts": result.attempts,
        "finish_reason": result.finish_reason,
        "truncated_lines": result.truncated_lines,
        "error": result.error,
    }


def _row(outcome: Outcome, columns: Sequence[str], model: str, engine: str) -> dict[str, Any]:
    return {
        "key": outcome.key,
        "user_id": outcome.user_id,
        **{c: outcome.values.get(c) for c in columns},
        "error": outcome.error,
        "calls": [call_row(step, result) for step, result in outcome.calls],
        "model": model,
        "engine": engine,
    }


def run_rows(
    rows: list[dict[str, Any]], stage: LLMStage, program: Program, model: str, engine: str
) -> list[dict[str, Any]]:
    """One chunk of rows through the program: a row that cannot be prepared, or repeats a key of
    the chunk, becomes an error row (`bad_request: ...`); the others get the program's outcome."""
    columns = stage.columns.names
    out: list[dict[str, Any]] = []
    prepared, keys = [], set()
    for row in rows:
        key = str(row.get(stage.key))
        user = row.get("user_id")
        try:
            if key in keys:
                raise ValueError(f"duplicate key {key!r}")
            prepared.append(program.prepare(row))
            keys.add(key)
        except BAD_INPUT as exc:
            bad = Outcome(key, None if user is None else str(user), error=f"bad_request: {exc}")
            out.append(_row(bad, columns, model, engine))
    outcomes = program.run(prepared) if prepared else []
    if len(outcomes) != len(prepared):
        raise RuntimeError(f"{stage.name}: {len(prepared)} rows in, {len(outcomes)} outcomes out")
    out += [_row(o, columns, model, engine) for o in outcomes]
    return out


def process(
    batches: Iterator[pa.RecordBatch],
    stage: LLMStage,
    engine: Engine,
    engine_name: str,
    counters: tuple[Any, Any] | None = None,
    report: TaskReport | None = None,
) -> Iterator[pa.RecordBatch]:
    """A task's rows through the stage's program on `engine`, `stage.batch_rows` at a time.
    `counters` (rows, generated tokens) are Spark accumulators the driver's Progress reads;
    `report` sends it the task's running counts while a chunk is in flight."""
    from pyspark import TaskContext

    task = TaskContext.get()
    part = task.partitionId() if task else 0
    program = stage.build(engine)
    schema = stage.output_schema()
    done = tokens = 0
    started = time.perf_counter()
    for rows in chunked_rows(batches, stage.batch_rows):
        out = run_rows(rows, stage, program, engine.model, engine_name)
        generated = sum(c["generated_tokens"] or 0 for r in out for c in r["calls"])
        done, tokens = done + len(rows), tokens + generated
        if counters is not None:
            counters[0].add(len(rows))
            counters[1].add(generated)
        if report is not None:
            report.rows_done(len(rows))
        elapsed = time.perf_counter() - started
        print(
            f"[{stage.name}] partition {part}: {done:,} rows done, "
            f"{tokens / max(elapsed, 1e-9):,.0f} generated tok/s, {elapsed:,.0f}s",
            file=sys.stderr,
            flush=True,
        )
        yield pa.RecordBatch.from_pylist(out, schema=schema)


def _task(
    stage: LLMStage, counters: tuple[Any, Any] | None, address: tuple[str, int] | None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        report = None if address is None else TaskReport(address)
        engine, name = executor_engine(stage.llm, None if report is None else report.call_done)
        try:
            yield from process(batches, stage, engine, name, counters, report)
        finally:
            if report is not None:
                report.close()

    return run


def run(df: DataFrame, stage: LLMStage, progress: Progress | None = None) -> DataFrame:
    """The stage's outcome rows (`stage.output_schema()`) for the rows of `df`; lazy, like any
    transform. `df` must have the `stage.key` column (and may have `user_id`)."""
    if stage.key not in df.columns:
        raise ConfigError(f"{stage.name}: input lacks its key column {stage.key!r}")
    if stage.partitions:
        df = df.repartition(int(stage.partitions))
    counters = None if progress is None else (progress.rows, progress.tokens)
    address = None if progress is None else progress.address
    return df.mapInArrow(_task(stage, counters, address), from_arrow_schema(stage.output_schema()))


class TaskReport:
    """One task's running counts (engine calls answered, tokens generated, rows done) sent to the
    driver's Progress as small UDP datagrams: at most one every `every_s` seconds as completions
    arrive, and one after every chunk of rows. Lossy on purpose: a lost datagram only delays a
    progress line, and the accumulators stay the exact count. Each datagram carries the task's
    totals so far, so the newest one received replaces the others."""

    def __init__(self, address: tuple[str, int], every_s: float = 1.0) -> None:
        from pyspark import TaskContext

        task = TaskContext.get()
        self.address = address
        self.every_s = every_s
        self.task = f"{task.stageId()}/{task.partitionId()}" if task else f"pid{os.getpid()}"
        self.attempt = task.attemptNumber() if task else 0
        self.calls = self.tokens = self.rows = 0
        self._sent_at = float("-inf")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def call_done(self, completion: Completion) -> None:
        self.calls += 1
        self.tokens += completion.generated_tokens
        self._send()

    def rows_done(self, n: int) -> None:
        self.rows += n
        self._send(force=True)

    def _send(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._sent_at < self.every_s:
            return
        self._sent_at = now
        counts = [self.task, self.attempt, self.calls, self.tokens, self.rows]
        try:
            self._sock.sendto(json.dumps(counts).encode(), self.address)
        except OSError:
            pass  # best effort: the driver may be gone or the port filtered

    def close(self) -> None:
        self._sock.close()


# -- after the stage: ledger and summary ----------------------------------------------------------


def calls_of(outcomes: DataFrame) -> DataFrame:
    """One row per engine call of the outcome rows, with the row's user and model."""
    return outcomes.select("user_id", "model", F.explode("calls").alias("c")).select(
        F.col("c.step").alias("step"),
        F.col("c.request_key").alias("request_key"),
        "user_id",
        "c.prompt_tokens",
        "c.cached_prompt_tokens",
        "c.generated_tokens",
        "c.latency_ms",
        "c.attempts",
        "c.finish_reason",
        "c.truncated_lines",
        "c.error",
        F.coalesce(F.col("model"), F.lit("unknown")).alias("model"),
    )


def write_ledger(warehouse: Warehouse, outcomes: DataFrame, stage: str, lineage: Lineage) -> WriteResult:
    """Replace the ledger rows of (run date, stage) with this run's calls: reruns never duplicate."""
    calls = calls_of(outcomes)
    ledger = calls.select(F.lit(stage).alias("stage"), *[c for c in calls.columns if c != "step"])
    return warehouse.write(
        ledger, LLM_CALLS, mode="replace", lineage=lineage, where={"dt": lineage.dt, "stage": stage}
    )


SUMMARY_FIELDS = ("calls", "errors", "prompt_tokens", "cached_prompt_tokens", "generated_tokens", "repairs")


def summarize(outcomes: DataFrame) -> dict[str, dict[str, int]]:
    """Calls, errors, tokens and repairs (attempts beyond the first) per step (one Spark job)."""
    rows = (
        calls_of(outcomes)
        .groupBy("step")
        .agg(
            F.count("*").alias("calls"),
            F.count("error").alias("errors"),
            F.sum("prompt_tokens").alias("prompt_tokens"),
            F.sum("cached_prompt_tokens").alias("cached_prompt_tokens"),
            F.sum("generated_tokens").alias("generated_tokens"),
            F.sum(F.greatest(F.col("attempts") - 1, F.lit(0))).alias("repairs"),
        )
        .collect()
    )
    return {
        str(r["step"]): {k: int(r[k] or 0) for k in SUMMARY_FIELDS}
        for r in sorted(rows, key=lambda r: r.step)
    }


class Progress:
    """Prints an LLM stage's progress from the driver every `interval_s` seconds: rows done of
    the total, rows/s, engine calls answered, generated tokens/s and the time left.

    Rows complete a chunk at a time (a chunk's agents run in waves over all its rows), so the
    running counts come from the tasks themselves (TaskReport datagrams to `address`) as each
    completion arrives; the accumulators give the exact count as tasks finish. The time left is
    estimated from the rows done and, with `tokens_per_row` (generated tokens a row is expected
    to take), from the tokens generated so far."""

    def __init__(
        self,
        spark: SparkSession,
        label: str,
        total: int | None = None,
        interval_s: float = 30.0,
        tokens_per_row: float | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.interval_s = interval_s
        self.tokens_per_row = tokens_per_row
        self.rows = spark.sparkContext.accumulator(0)
        self.tokens = spark.sparkContext.accumulator(0)
        self.started = time.perf_counter()
        self._live: dict[str, tuple[int, int, int, int]] = {}  # task -> (attempt, calls, tokens, rows)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = _listen(str(spark.conf.get("spark.driver.host", "localhost")))
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._receiver = threading.Thread(target=self._receive, daemon=True)

    @property
    def address(self) -> tuple[str, int] | None:
        """Where tasks send their TaskReport datagrams (None: no live counts, accumulators only)."""
        return None if self._sock is None else self._sock.getsockname()[:2]

    def __enter__(self) -> Progress:
        self.started = time.perf_counter()
        self._thread.start()
        if self._sock is not None:
            self._receiver.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._sock is not None:
            self._receiver.join(timeout=5)
            self._drain()
            self._sock.close()
        print(self.line(), file=sys.stderr, flush=True)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def receive(self, message: bytes) -> None:
        """Take one TaskReport datagram; a malformed one is ignored."""
        try:
            task, attempt, calls, tokens, rows = json.loads(message)
            counts = (int(attempt), int(calls), int(tokens), int(rows))
        except (ValueError, TypeError):
            return
        with self._lock:
            # A task's counts only grow within an attempt and a retry starts over: the largest
            # (attempt, counts) is the newest, whatever order the datagrams came in.
            self._live[str(task)] = max(self._live.get(str(task), counts), counts)

    def line(self) -> str:
        elapsed = max(self.seconds, 1e-9)
        with self._lock:
            live = list(self._live.values())
        done = max(int(self.rows.value), sum(c[3] for c in live))
        tokens = max(int(self.tokens.value), sum(c[2] for c in live))
        total = f"/{self.total:,}" if self.total is not None else ""
        line = f"[{self.label}] {done:,}{total} rows · {done / elapsed:,.2f} rows/s"
        if live:
            line += f" · {sum(c[1] for c in live):,} calls"
        line += f" · {tokens / elapsed:,.0f} generated tok/s · {elapsed:,.0f}s"
        left = self.seconds_left(done, tokens, elapsed)
        if left is not None:
            line += f" · ~{left:,.0f}s left"
        return line

    def seconds_left(self, done: int, tokens: int, elapsed: float) -> float | None:
        """At the rate so far: by rows done, or by tokens generated against the expected total
        when that says more (rows arrive a chunk at a time); None when nothing is done yet or
        everything is."""
        if not self.total or done >= self.total:
            return None
        share = done / self.total
        if self.tokens_per_row:
            # Capped: the expectation is an estimate, and the last rows are not done yet.
            share = max(share, min(tokens / (self.total * self.tokens_per_row), 0.95))
        return elapsed * (1 - share) / share if share > 0 else None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            print(self.line(), file=sys.stderr, flush=True)

    def _receive(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                message = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.receive(message)

    def _drain(self) -> None:
        """Take the reports still queued on the socket (the last tasks' final counts)."""
        assert self._sock is not None
        self._sock.setblocking(False)
        while True:
            try:
                self.receive(self._sock.recv(4096))
            except OSError:  # BlockingIOError: nothing left
                return


def _listen(host: str) -> socket.socket | None:
    """A UDP socket on the driver's address for the tasks' reports (None if it cannot bind)."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((socket.gethostbyname(host), 0))
    except OSError:
        return None
    sock.settimeout(0.5)
    return sock
