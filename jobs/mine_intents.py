"""Stage mine_intents: every user with a reliable history as of the run date gets interest tags
from the agents — V2 (Global Planner -> one Expert per persona -> Decision Arbiter) or the V1
baseline (independent routes) — validated before anything is written.

    python -m jobs.mine_intents run.dt=2025-10-28 [context.mode=text] [pipeline=v1_baseline] [resume=true]

Users are mined in waves; each finished wave is staged (Parquet, committed with a _SUCCESS
marker) before the next starts, and the tables are written from the staged waves at the end, one
replace per table for (dt, pipeline, context_mode). A killed run resumed with `resume=true`
skips the users of finished waves (and users already in the tables), so it ends with the same
tables as an uninterrupted run; without `resume` a rerun recomputes everything idempotently.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from jobs.stage import StageContext, main_for
from recgpt import adaptor as A
from recgpt.delta import filesystem
from recgpt.errors import RecGPTError
from recgpt.tables import LLM_CALLS, MINING_FAILURES, USER_CONTEXT, USER_INTENT_TAGS, USER_PERSONAS
from udfs.mining import mine_users, miner_runner, mining_inputs

STAGE = "mine_intents"
PIPELINES = ("v2", "v1_baseline")
DONE = "_SUCCESS"
SETTINGS = "_settings.json"
LINEAGE = ("dt", "run_id", "created_at")


def context_mode(ctx: StageContext) -> str:
    """V1 reads its text context whatever `context.mode` says: hybrid inference is V2's."""
    return "text" if str(ctx.cfg.pipeline.name) == "v1_baseline" else str(ctx.cfg.context.mode)


def adaptor_folder(ctx: StageContext) -> Path:
    """The adaptor a hybrid run uses: `adaptor.version` if pinned, else the newest artifact; it
    must belong to the configured LLM and embedding model."""
    root = Path(str(ctx.cfg.adaptor.artifacts_dir))
    pinned = ctx.cfg.adaptor.get("version")
    folder = root / str(pinned) if pinned else A.latest(root)
    if folder is None or not (folder / A.META).is_file():
        raise RecGPTError(
            f"context.mode=hybrid needs an entity adaptor under {root}: run `python -m jobs.train_adaptor "
            f"run.dt={ctx.dt}` first (or mine with context.mode=text)"
        )
    meta = json.loads((folder / A.META).read_text())
    expected = {"llm": str(ctx.cfg.llm.model_name), "embedding_model": str(ctx.cfg.embedding.model_name)}
    found = {k: meta.get(k) for k in expected}
    if found != expected:
        raise RecGPTError(f"adaptor {folder.name} was trained for {found}, this run uses {expected}")
    return folder


def mining_settings(
    ctx: StageContext, llm_cfg: dict[str, Any], agents_cfg: dict[str, Any], adaptor: Path | None
) -> dict[str, Any]:
    """What decides a user's outcome besides the data: a resumed run must match it exactly."""
    agents = json.dumps(agents_cfg, sort_keys=True, default=str)
    return {
        "model": str(llm_cfg["model_name"]),
        "prompt_version": str(agents_cfg["prompt_version"]),
        "agents_sha256": hashlib.sha256(agents.encode()).hexdigest()[:16],
        "adaptor": adaptor.name if adaptor else None,
        "users_file": str(ctx.cfg.mine.get("users_file") or ""),
    }


def refuse_mixed_settings(
    ctx: StageContext, staging: Staging, settings: dict[str, Any], staged: bool
) -> None:
    """A resume finishes the same run: staged waves or tables mined with another model, prompt
    version, agent settings or adaptor would end up mixed with the new users' outcomes."""
    before = staging.settings()
    if staged and before != settings:
        changed = sorted(k for k in settings if (before or {}).get(k) != settings[k])
        raise RecGPTError(
            f"resume=true, but the staged waves under {staging.uri} were mined with other settings "
            f"({', '.join(changed)}): rerun without resume to recompute the date"
        )
    if ctx.warehouse.exists(USER_INTENT_TAGS):
        mixed = (
            ctx.warehouse.read(USER_INTENT_TAGS, dt=ctx.dt)
            .where(
                (F.col("pipeline") == ctx.cfg.pipeline.name)
                & (F.col("context_mode") == context_mode(ctx))
                & (
                    (F.col("model") != settings["model"])
                    | (F.col("prompt_version") != settings["prompt_version"])
                )
            )
            .select("model", "prompt_version")
            .distinct()
            .collect()
        )
        if mixed:
            found = ", ".join(f"{r.model} / {r.prompt_version}" for r in mixed)
            raise RecGPTError(
                f"resume=true, but user_intent_tags for {ctx.dt} holds tags of {found}, not "
                f"{settings['model']} / {settings['prompt_version']}: rerun without resume"
            )


def listed_users(ctx: StageContext) -> DataFrame:
    """The user ids of `mine.users_file` (one per line): an evaluation mines a chosen sample.
    Every listed id must have a user_context row for dt: a list drawn from other data (another
    date or dataset) is refused instead of silently mining fewer users than it names."""
    path = str(ctx.cfg.mine.users_file)
    if not Path(path).is_file():
        raise RecGPTError(f"mine.users_file {path} does not exist")
    ids = sorted({line.strip() for line in Path(path).read_text().splitlines() if line.strip()})
    listed = ctx.spark.createDataFrame([(i,) for i in ids], "user_id string")
    contexts = ctx.warehouse.read(USER_CONTEXT, dt=ctx.dt).select("user_id")
    unknown = listed.join(contexts, "user_id", "left_anti")
    n_unknown = unknown.count()
    if n_unknown:
        examples = ", ".join(r.user_id for r in unknown.orderBy("user_id").limit(5).collect())
        raise RecGPTError(
            f"mine.users_file {path}: {n_unknown:,} of its {len(ids):,} user ids have no "
            f"user_context row for {ctx.dt} (e.g. {examples}); list users of this date"
        )
    return listed


def contexts_in_scope(ctx: StageContext) -> DataFrame:
    """user_context rows of dt the stage accounts for: every user's, or those of the users listed
    in `mine.users_file`."""
    contexts = ctx.warehouse.read(USER_CONTEXT, dt=ctx.dt)
    if ctx.cfg.mine.get("users_file"):
        contexts = contexts.join(listed_users(ctx), "user_id", "left_semi")
    return contexts


def users_in_scope(ctx: StageContext) -> DataFrame:
    """Users the stage must give an outcome: those in scope with a reliable history as of dt."""
    return contexts_in_scope(ctx).where(F.col("events_kept") > 0).select("user_id")


class Staging:
    """Finished waves of one (dt, pipeline, context_mode) under the warehouse's _staging/."""

    def __init__(self, ctx: StageContext, pipeline: str, mode: str) -> None:
        root = str(ctx.cfg.storage.warehouse).rstrip("/")
        self.uri = f"{root}/_staging/{STAGE}/dt={ctx.dt}/pipeline={pipeline}/context_mode={mode}"
        self.fs, self.path = filesystem(self.uri)

    def settings(self) -> dict[str, Any] | None:
        """What the staged waves were mined with (None before the first wave)."""
        path = f"{self.path}/{SETTINGS}"
        from pyarrow import fs as pafs

        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as fh:
            return dict(json.loads(fh.read().decode()))

    def start(self, settings: dict[str, Any]) -> None:
        """Empty staging that records what its waves will be mined with."""
        self.drop()
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(f"{self.path}/{SETTINGS}") as fh:
            fh.write(json.dumps(settings, sort_keys=True).encode())

    def wave_uri(self, wave: int) -> str:
        return f"{self.uri}/wave={wave:05d}"

    def waves(self) -> tuple[list[int], list[int]]:
        """(finished, unfinished) wave numbers."""
        from pyarrow import fs as pafs

        info = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        finished, unfinished = [], []
        for entry in info:
            name = entry.path.rstrip("/").rsplit("/", 1)[-1]
            if entry.type != pafs.FileType.Directory or not name.startswith("wave="):
                continue
            done = self.fs.get_file_info(f"{entry.path}/{DONE}").type == pafs.FileType.File
            (finished if done else unfinished).append(int(name.split("=", 1)[1]))
        return sorted(finished), sorted(unfinished)

    def drop(self, wave: int | None = None) -> None:
        path = self.path if wave is None else f"{self.path}/wave={wave:05d}"
        from pyarrow import fs as pafs

        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            self.fs.delete_dir(path)


def explode_outputs(outcomes: DataFrame, lineage: dict[str, Any]) -> dict[str, DataFrame]:
    """The stage's tables (without dt/run_id/created_at) from outcome rows."""
    mined_by = [F.lit(v).alias(k) for k, v in lineage.items()]
    model = F.coalesce(F.col("model"), F.lit("unknown")).alias("model")
    personas = outcomes.select(
        "user_id", F.posexplode("personas").alias("pos", "p"), model, *mined_by
    ).select(
        "user_id",
        (F.col("pos") + 1).cast("int").alias("persona_rank"),
        F.col("p.name").alias("name"),
        F.col("p.description").alias("description"),
        F.col("p.evidence").alias("evidence"),
        F.col("p.signals").alias("signals"),
        "model",
        *lineage,
    )
    tags = outcomes.select("user_id", F.explode("tags").alias("t"), model, *mined_by).select(
        "user_id",
        "t.rank",
        "t.tag",
        "t.persona",
        "t.score",
        "t.reason",
        "t.evidence_item_ids",
        "model",
        *lineage,
    )
    failures = outcomes.where(F.col("failure_step").isNotNull()).select(
        "user_id",
        F.col("failure_step").alias("step"),
        F.col("failure_reason").alias("reason"),
        "rejected",
        model,
        *mined_by,
    )
    calls = outcomes.select("user_id", F.explode("calls").alias("c"), model).select(
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
        "model",
        F.col("c.step").alias("step"),
    )
    return {"personas": personas, "tags": tags, "failures": failures, "calls": calls}


def run(ctx: StageContext) -> None:
    cfg, wh, spark = ctx.cfg, ctx.warehouse, ctx.spark
    pipeline = str(cfg.pipeline.name)
    if pipeline not in PIPELINES:
        raise RecGPTError(f"pipeline must be one of {PIPELINES}, not {pipeline!r}")
    mode = context_mode(ctx)
    mine_cfg = cfg.mine
    resume = bool(cfg.get("resume", False))
    if not wh.exists(USER_CONTEXT):
        raise RecGPTError("no user_context table: run `python -m jobs.compress` for this date first")
    folder = adaptor_folder(ctx) if mode == "hybrid" else None

    llm_cfg = OmegaConf.to_container(cfg.llm, resolve=True)
    emb_cfg = OmegaConf.to_container(cfg.embedding, resolve=True)
    agents_cfg = OmegaConf.to_container(cfg.pipeline.agents, resolve=True)
    calendar_cfg = OmegaConf.to_container(cfg.calendar, resolve=True)
    assert isinstance(llm_cfg, dict) and isinstance(emb_cfg, dict) and isinstance(agents_cfg, dict)
    assert isinstance(calendar_cfg, dict)
    variant = {"pipeline": pipeline, "context_mode": mode}
    where = {"dt": ctx.dt, **variant}
    lineage = {**variant, "prompt_version": str(agents_cfg["prompt_version"])}

    inputs = mining_inputs(
        spark,
        wh,
        ctx.dt,
        mode,
        {
            "embedding_model": emb_cfg["model_name"],
            "bought_days": agents_cfg["validation"]["bought_days"],
            "calendar": calendar_cfg,
        },
    )
    contexts = contexts_in_scope(ctx)
    if mine_cfg.get("users_file"):
        inputs = inputs.join(contexts.select("user_id"), "user_id", "left_semi")
    inputs = inputs.persist(StorageLevel.MEMORY_AND_DISK)
    total = inputs.count()
    without_history = contexts.where(F.col("events_kept") == 0).count()

    staging = Staging(ctx, pipeline, mode)
    settings = mining_settings(ctx, llm_cfg, agents_cfg, folder)
    finished, unfinished = staging.waves()
    if resume:
        refuse_mixed_settings(ctx, staging, settings, bool(finished))
    else:
        finished, unfinished = [], []
    if not finished:
        staging.start(settings)
    for wave in unfinished:  # a killed run's half-written wave
        staging.drop(wave)

    def staged() -> DataFrame | None:
        done = staging.waves()[0]
        if not done:
            return None
        return spark.read.parquet(*[staging.wave_uri(w) for w in done])

    # Users whose outcome already exists: in a finished wave, or (resume) in the tables.
    done_users = spark.createDataFrame([], "user_id string")
    kept: dict[str, DataFrame] = {}
    if resume:
        previous = staged()
        if previous is not None:
            done_users = previous.select("user_id")
        for key, spec in (
            ("tags", USER_INTENT_TAGS),
            ("failures", MINING_FAILURES),
            ("personas", USER_PERSONAS),
        ):
            if wh.exists(spec):
                rows = wh.read(spec, dt=ctx.dt).where(
                    (F.col("pipeline") == pipeline) & (F.col("context_mode") == mode)
                )
                # Staged outcomes win over rows of an earlier final write.
                kept[key] = rows.join(done_users, "user_id", "left_anti").persist(
                    StorageLevel.MEMORY_AND_DISK
                )
        in_tables = [kept[k].select("user_id") for k in ("tags", "failures") if k in kept]
        for users in in_tables:
            done_users = done_users.unionByName(users)
        done_users = done_users.distinct()

    todo = inputs.join(done_users, "user_id", "left_anti").persist(StorageLevel.MEMORY_AND_DISK)
    n_todo = todo.count()
    wave_users = int(mine_cfg.wave_users)
    waves = max(1, math.ceil(n_todo / wave_users)) if n_todo else 0
    first_wave = (max(finished) + 1) if finished else 0
    brands = [
        r.brand
        for r in wh.read_snapshot("items", ctx.dt)
        .where(F.col("brand").isNotNull())
        .select("brand")
        .distinct()
        .collect()
    ]
    runner = miner_runner(
        pipeline,
        mode,
        llm_cfg,
        emb_cfg,
        agents_cfg,
        brands,
        str(folder) if folder else None,
        int(mine_cfg.batch_users),
        int(cfg.compress.core_title_words),
    )
    started = time.monotonic()
    print(
        f"[{STAGE}] {pipeline}/{mode}: {total:,} users with history, {total - n_todo:,} already done, "
        f"{n_todo:,} to mine in {waves} wave(s)",
        file=sys.stderr,
        flush=True,
    )
    for i in range(waves):
        wave = first_wave + i
        part = todo.where(F.pmod(F.xxhash64("user_id"), F.lit(waves)) == i)
        if mine_cfg.get("partitions"):
            part = part.repartition(int(mine_cfg.partitions))
        mine_users(part, runner).write.mode("overwrite").parquet(staging.wave_uri(wave))
        print(
            f"[{STAGE}] wave {i + 1}/{waves} staged · {time.monotonic() - started:,.0f}s",
            file=sys.stderr,
            flush=True,
        )
    todo.unpersist()

    outcomes = staged()
    parts: dict[str, DataFrame] = explode_outputs(outcomes, lineage) if outcomes is not None else {}
    report = ctx.report
    for key, spec in (("personas", USER_PERSONAS), ("tags", USER_INTENT_TAGS), ("failures", MINING_FAILURES)):
        columns = [c for c in spec.column_names if c not in LINEAGE]
        frames = [f.select(*columns) for f in (parts.get(key), kept.get(key)) if f is not None]
        data = (
            frames[0]
            if frames
            else spark.createDataFrame([], from_arrow_schema(spec.schema)).select(*columns)
        )
        for extra in frames[1:]:
            data = data.unionByName(extra)
        written = wh.write(data, spec, mode="replace", lineage=ctx.lineage, where=where)
        report.wrote(spec.name, written.rows, written.version)

    if outcomes is not None:
        ledger_stage = f"{STAGE}.{pipeline}.{mode}"
        calls = parts["calls"]
        ledger = calls.select(F.lit(ledger_stage).alias("stage"), *[c for c in calls.columns if c != "step"])
        written = wh.write(
            ledger,
            LLM_CALLS,
            mode="replace",
            lineage=ctx.lineage,
            where={"dt": ctx.dt, "stage": ledger_stage},
        )
        report.wrote(f"llm_calls[{ledger_stage}]", written.rows, written.version)
        summarize(ctx, outcomes, calls)
    staging.drop()
    for frame in kept.values():
        frame.unpersist()
    inputs.unpersist()

    report.rows_in = total + without_history
    mined = wh.read(USER_INTENT_TAGS, dt=ctx.dt).where(
        (F.col("pipeline") == pipeline) & (F.col("context_mode") == mode)
    )
    tagged = mined.select("user_id").distinct().count()
    failed = (
        wh.read(MINING_FAILURES, dt=ctx.dt)
        .where((F.col("pipeline") == pipeline) & (F.col("context_mode") == mode))
        .count()
    )
    report.rows_out = tagged
    report.rows_quarantined = failed
    report.details["users"] = (
        f"{total:,} with history: {tagged:,} tagged, {failed:,} failed (mining_failures); "
        f"{without_history:,} without reliable history not mined"
    )
    report.details["variant"] = f"pipeline={pipeline} context_mode={mode}" + (
        f" adaptor={folder.name}" if folder else ""
    )
    sample = mined.orderBy("user_id", "rank").limit(int(agents_cfg["n_tags"])).collect()
    if sample:
        # One user's tags (the first user may have fewer than N).
        shown = "; ".join(
            f"{r.rank}. {r.tag} ({r.persona})" for r in sample if r.user_id == sample[0].user_id
        )
        report.details["sample"] = f"{sample[0].user_id}: {shown}"


def summarize(ctx: StageContext, outcomes: DataFrame, calls: DataFrame) -> None:
    """Calls and tokens per step and per user, and validation rejections, in the summary."""
    users = outcomes.count()
    steps = (
        calls.groupBy("step")
        .agg(
            F.count("*").alias("calls"),
            F.count("error").alias("errors"),
            F.sum("prompt_tokens").alias("prompt"),
            F.sum("cached_prompt_tokens").alias("cached"),
            F.sum("generated_tokens").alias("generated"),
        )
        .collect()
    )
    total_prompt = sum(int(r.prompt or 0) for r in steps)
    total_generated = sum(int(r.generated or 0) for r in steps)
    for r in sorted(steps, key=lambda r: r.step):
        ctx.report.llm(
            r.step,
            {
                "calls": int(r.calls),
                "errors": int(r.errors),
                "prompt_tokens": int(r.prompt or 0),
                "cached_prompt_tokens": int(r.cached or 0),
                "generated_tokens": int(r.generated or 0),
            },
        )
    per_user = max(users, 1)
    ctx.report.details["tokens"] = (
        f"per user: {total_prompt / per_user:,.0f} prompt + {total_generated / per_user:,.0f} generated"
    )
    redundancy = outcomes.agg(F.sum("proposed").alias("proposed"), F.sum("duplicates").alias("dups")).first()
    assert redundancy is not None
    proposed = int(redundancy["proposed"] or 0)
    ctx.report.details["duplicate_rate"] = round(int(redundancy["dups"] or 0) / max(proposed, 1), 4)
    ctx.report.details["proposed_tags"] = proposed
    rejected: dict[str, int] = {}
    for r in outcomes.where(F.col("rejected").isNotNull()).select("rejected").collect():
        for code, n in json.loads(r.rejected).items():
            rejected[code] = rejected.get(code, 0) + int(n)
    if rejected:
        ctx.report.details["rejected"] = ", ".join(f"{k} {v:,}" for k, v in sorted(rejected.items()))


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
