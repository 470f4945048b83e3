"""What every stage entry point shares: Hydra config, Spark session, warehouse, run record and
the one-screen summary. A stage is a function `(StageContext) -> None` that fills its report."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pyspark.sql import SparkSession

from recgpt.config import config_hash, new_run_id, plain
from recgpt.errors import SKIPPED_EXIT_CODE, NothingToDo, RecGPTError
from recgpt.policy.serving import with_policy
from recgpt.rundate import RunDate
from recgpt.runlock import stage_lock
from recgpt.tables import ALL_TABLES, RUNS
from sparkio.session import build_session
from sparkio.warehouse import Lineage, Warehouse

log = logging.getLogger("recgpt")
# Libraries that log every step at INFO; their warnings still show.
for _noisy in ("great_expectations", "py4j"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


@dataclass
class StageReport:
    rows_in: int | None = None
    rows_out: int | None = None
    rows_quarantined: int | None = None
    # Stage-specific figures: tables written (name -> rows), versions, paths.
    details: dict[str, Any] = field(default_factory=dict)

    def wrote(self, table: str, rows: int, version: int) -> None:
        self.details.setdefault("tables", {})[table] = {"rows": rows, "version": version}

    def llm(self, step: str, summary: dict[str, Any]) -> None:
        """Record one LLM step's calls and tokens (`udfs.llm.summarize`) for the summary and `runs`."""
        self.details.setdefault("llm", {})[step] = summary


@dataclass
class StageContext:
    cfg: DictConfig
    spark: SparkSession
    warehouse: Warehouse
    lineage: Lineage
    stage: str
    report: StageReport = field(default_factory=StageReport)

    @property
    def dt(self) -> RunDate:
        """The run date, parsed once when the stage opened."""
        return self.lineage.dt


StageFn = Callable[[StageContext], None]


def prepare(cfg: DictConfig, stage: str) -> DictConfig:
    """Fix the stage name and run id into the config so every consumer sees the same values."""
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.run.stage = stage
    dt = RunDate.parse(cfg.run.dt)
    cfg.run.dt = dt.iso
    if not cfg.run.get("run_id"):
        cfg.run.run_id = new_run_id(stage, dt)
    if cfg.llm.get("policy"):
        # A tuned policy serves the run's LLM stages (recgpt/policy/serving.py). Training from it
        # is checked against the new artifact's first evaluation date instead of the run date.
        evaluate_from = cfg.policy.get("evaluate_from")
        on = dt
        if stage == "train_policy" and evaluate_from:
            on = RunDate.parse(evaluate_from, "policy.evaluate_from")
        cfg.llm = OmegaConf.create(with_policy(plain(cfg.llm), str(cfg.policy.artifacts_dir), on))
    return cfg


def execute(ctx: StageContext, fn: StageFn) -> StageReport:
    """Run one stage under its (stage, date) lock: time it, append its `runs` row, print its
    summary. Re-raises failures, a refusal by the lock included (RunBusyError)."""
    started = _dt.datetime.now(_dt.UTC)
    t0 = time.monotonic()
    status, error = "success", None
    jobs_before = _spark_jobs(ctx.spark)
    try:
        with stage_lock(
            str(ctx.cfg.run.lock.dir),
            ctx.stage,
            ctx.dt.iso,
            ctx.lineage.run_id,
            wait_seconds=float(ctx.cfg.run.lock.wait_seconds),
        ):
            fn(ctx)
    except NothingToDo as exc:
        status, error = "skipped", str(exc)
        raise
    except BaseException as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        seconds = time.monotonic() - t0
        _note_task_failures(ctx, jobs_before)
        _record_run(ctx, started, seconds, status, error)
        print(render_summary(ctx, seconds, status, error), flush=True)
    return ctx.report


def _spark_jobs(spark: SparkSession) -> set[int]:
    try:
        return set(spark.sparkContext.statusTracker().getJobIdsForGroup())
    except Exception:  # a stopped session: nothing to compare against
        return set()


def _note_task_failures(ctx: StageContext, jobs_before: set[int]) -> None:
    """Task attempts Spark retried during the stage (a lost executor, a killed Python worker)
    into the report, so `runs` says the stage got through failures and which kind."""
    failed = reattempted = 0
    try:
        tracker = ctx.spark.sparkContext.statusTracker()
        for job in _spark_jobs(ctx.spark) - jobs_before:
            info = tracker.getJobInfo(job)
            for stage_id in info.stageIds if info else []:
                stage = tracker.getStageInfo(stage_id)
                if stage is not None:
                    failed += stage.numFailedTasks
                    reattempted += int(stage.currentAttemptId > 0)
    except Exception:  # the run record must never hide the stage's own outcome
        log.exception("could not read Spark's task failures for %s", ctx.stage)
        return
    if failed or reattempted:
        ctx.report.details["spark_retries"] = (
            f"{failed} failed task attempt(s), {reattempted} stage(s) re-attempted"
        )


def _record_run(
    ctx: StageContext, started: _dt.datetime, seconds: float, status: str, error: str | None
) -> None:
    r = ctx.report
    row = {
        "run_id": ctx.lineage.run_id,
        "stage": ctx.stage,
        "config_hash": config_hash(ctx.cfg),
        "rows_in": r.rows_in,
        "rows_out": r.rows_out,
        "rows_quarantined": r.rows_quarantined,
        "seconds": round(seconds, 3),
        "status": status,
        "error": (error or None) and error[:4000],
        "details": json.dumps(r.details, default=str),
        "started_at": started,
        "dt": ctx.dt.day,
        "created_at": _dt.datetime.now(_dt.UTC),
    }
    try:
        import pyarrow as pa

        df = ctx.spark.createDataFrame(pa.Table.from_pylist([row], schema=RUNS.schema))
        ctx.warehouse.write(df, RUNS, mode="append")
    except Exception:  # the run record must never hide the stage's own outcome
        log.exception("could not append the runs record for %s", ctx.stage)


def render_summary(ctx: StageContext, seconds: float, status: str, error: str | None) -> str:
    r = ctx.report
    lines = [
        f"── {ctx.stage} · dt={ctx.dt} · {status.upper()} · {seconds:.1f}s",
        f"   run_id   {ctx.lineage.run_id}",
        f"   rows     in={_n(r.rows_in)}  out={_n(r.rows_out)}  quarantined={_n(r.rows_quarantined)}",
    ]
    for table, info in (r.details.get("tables") or {}).items():
        # `llm_calls[mine_intents.v2.text]`: the ledger rows of one stage live in llm_calls.
        spec = ALL_TABLES[table.split("[", 1)[0]]
        lines.append(
            f"   table    {table:<18} {info['rows']:>12,} rows  v{info['version']}  {ctx.warehouse.uri(spec)}"
        )
    for step, llm in (r.details.get("llm") or {}).items():
        lines.append(
            f"   llm      {step:<18} {llm['calls']:>8,} calls  {llm['errors']:,} errors  "
            f"{llm['prompt_tokens']:,} prompt tok ({llm['cached_prompt_tokens']:,} cached)  "
            f"{llm['generated_tokens']:,} generated tok"
            + (f"  {llm['generated_tokens'] / llm['seconds']:,.0f} tok/s" if llm.get("seconds") else "")
        )
    for key, value in r.details.items():
        if key not in ("tables", "llm"):
            lines.append(f"   {key:<8} {value}")
    if error:
        lines.append(f"   error    {error.splitlines()[0][:300]}")
    return "\n".join(lines)


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def open_context(cfg: DictConfig, stage: str, spark: SparkSession | None = None) -> StageContext:
    cfg = prepare(cfg, stage)
    if spark is None:
        spark = build_session(OmegaConf.to_container(cfg.spark, resolve=True), f"recgpt-{stage}")  # type: ignore[arg-type]
    storage = OmegaConf.to_container(cfg.storage, resolve=True)
    warehouse = Warehouse.from_config(spark, storage)  # type: ignore[arg-type]
    return StageContext(
        cfg, spark, warehouse, Lineage.now(RunDate.parse(cfg.run.dt), str(cfg.run.run_id)), stage
    )


def hydra_entry(stage: str, body: Callable[[DictConfig], None]) -> Callable[[], None]:
    """A Hydra entry point running `body(cfg)` with `run.stage` fixed (it names the log folder)
    and failures turned into a one-line message and exit code 1."""
    import hydra

    @hydra.main(
        config_path=str(Path(__file__).resolve().parent.parent / "conf"),
        config_name="config",
        version_base="1.3",
    )
    def _main(cfg: DictConfig) -> None:
        try:
            body(cfg)
        except NothingToDo as exc:
            print(f"{stage} skipped: {exc}", file=sys.stderr)
            sys.exit(SKIPPED_EXIT_CODE)
        except RecGPTError as exc:
            print(f"{stage} failed: {exc}", file=sys.stderr)
            sys.exit(1)
        except Exception:
            log.error("%s failed:\n%s", stage, traceback.format_exc())
            traceback.print_exc(file=sys.stderr)
            print(
                f"{stage} failed with an unexpected error (traceback above, also in the run's log "
                f"under {cfg.run.log_dir}/{stage}/)",
                file=sys.stderr,
            )
            sys.exit(1)

    def entry() -> None:
        if not any(a.startswith("run.stage=") for a in sys.argv[1:]):
            sys.argv.append(f"run.stage={stage}")
        _main()

    return entry


def main_for(stage: str, fn: StageFn) -> Callable[[], None]:
    """The entry point of one stage: `python -m jobs.<stage> run.dt=... <overrides>`."""

    def body(cfg: DictConfig) -> None:
        ctx = open_context(cfg, stage)
        try:
            execute(ctx, fn)
        finally:
            ctx.spark.stop()

    return hydra_entry(stage, body)


def record_llm(ctx: StageContext, outcomes: Any, stage: str) -> None:
    """An LLM stage's calls into the `llm_calls` ledger (replacing the (dt, stage) rows of an
    earlier run) and its calls and tokens per step into the summary and `runs`."""
    from udfs import llm

    written = llm.write_ledger(ctx.warehouse, outcomes, stage, ctx.lineage)
    ctx.report.wrote(f"llm_calls[{stage}]", written.rows, written.version)
    for step, summary in llm.summarize(outcomes).items():
        ctx.report.llm(step, summary)
