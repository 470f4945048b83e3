"""The nightly chain for one run date: every stage of `pipeline.stages` in order, in one Spark
session, each recorded in `runs` as if run alone. Airflow runs the stages one by one instead.

A stage that called the LLM leaves its engine server behind in the executors (that is how one
engine serves every partition and step of the stage). Run alone, the stage's process ends and
the server with it; in the chain the process goes on, so once the chain's last LLM stage is done
it stops the engine servers its own local Spark started: the later stages get the memory back
(about 4 GB for the bundled model). Between two LLM stages (mine_intents, recall, explain) the
server stays up, so the second finds it instead of paying another start.

On local Spark the chain starts that server in the background while the stage before the LLM
stage runs (train_adaptor, which trains on one core fewer while the start is under way), and the
LLM stage's tasks find it up instead of waiting ~40 s for it.

    python -m jobs.nightly run.dt=2025-10-28 [overrides]
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from jobs.stage import StageContext, StageFn, StageReport, execute, hydra_entry, open_context, prepare
from recgpt.config import plain
from recgpt.llm.server import BACKGROUND_START, ensure_server, stop_servers_started_under
from recgpt.tables import USER_INTENT_TAGS
from sparkio.warehouse import Warehouse


def _stage_fn(stage: str) -> StageFn:
    module = importlib.import_module(f"jobs.{stage}")
    fn: StageFn = module.run
    return fn


def run_chain(cfg: DictConfig) -> str:
    """Run the chain; returns the run id shared by its stages."""
    stages = [str(s) for s in cfg.pipeline.stages]
    fns = {s: _stage_fn(s) for s in stages}  # fail fast on an unknown stage name
    # One run id for the whole chain, so its stages group together in `runs`.
    cfg = prepare(cfg, "nightly")
    t0 = time.monotonic()
    spark = None
    reports: dict[str, StageReport] = {}
    uses_llm = {s: bool(getattr(importlib.import_module(f"jobs.{s}"), "USES_LLM", False)) for s in stages}
    last_llm = max((i for i, s in enumerate(stages) if uses_llm[s]), default=-1)
    for i, (stage, following) in enumerate(zip(stages, [*stages[1:], None], strict=True)):
        ctx = open_context(cfg, stage, spark)
        spark = ctx.spark
        if following and uses_llm[following] and not uses_llm[stage]:
            start_engine_early(ctx, following)
        reports[stage] = execute(ctx, fns[stage])
        if i == last_llm:  # also when that stage had nothing to ask: an earlier one started it
            llm_cfg = OmegaConf.to_container(cfg.llm, resolve=True)
            for key in stop_servers_started_under(os.getpid(), llm_cfg):  # type: ignore[arg-type]
                print(f"   engine server {key} stopped after {stage}", flush=True)
    root = str(cfg.storage.warehouse)
    root = root if "://" in root else str(Path(root).resolve())
    print(f"\nnightly dt={cfg.run.dt} done in {time.monotonic() - t0:.1f}s · run_id {cfg.run.run_id}")
    if spark is not None and "mine_intents" in reports:
        print(sample_tags(ctx.warehouse, cfg))
    for stage, label in (("evaluate", "evaluation report"), ("dq", "data-quality report")):
        if path := (reports.get(stage) or StageReport()).details.get("report"):
            print(f"{label}: {path}")
    print(f"tables under {root}/ (Delta: open with deltalake.DeltaTable(path), DuckDB or Spark)")
    return str(cfg.run.run_id)


def start_engine_early(ctx: StageContext, for_stage: str) -> None:
    """Start the engine server the next stage's local tasks would start, in a background thread
    owned by this process (so the chain stops it after that stage). Only for a local master and
    the executor server placement: a cluster's executors start their own. A failed start is only
    reported: the stage's tasks then start the server themselves and fail with the reason."""
    llm_cfg = plain(ctx.cfg.llm)
    master = str(ctx.spark.sparkContext.master)
    if llm_cfg.get("placement") != "executor_server" or not master.startswith("local"):
        return

    def start() -> None:
        try:
            info = ensure_server(llm_cfg, owner_pid=os.getpid())
        except Exception as exc:
            print(f"   engine server for {for_stage} did not start early: {exc}", flush=True)
            return
        how = f"started early, in {info.start_seconds:.0f}s" if info.started else "already running"
        print(f"   engine server for {for_stage} up ({how})", flush=True)

    print(f"   starting the engine server for {for_stage} in the background", flush=True)
    threading.Thread(target=start, name=BACKGROUND_START, daemon=True).start()


def sample_tags(warehouse: Warehouse, cfg: DictConfig, users: int = 3, per_user: int = 3) -> str:
    """A few users' best tags of this run: the first thing to look at after a run."""
    from pyspark.sql import functions as F

    tags = (
        warehouse.read(USER_INTENT_TAGS, dt=str(cfg.run.dt))
        .where((F.col("run_id") == str(cfg.run.run_id)) & (F.col("rank") <= per_user))
        .select("user_id", "rank", "tag", "persona")
    )
    first = [r.user_id for r in tags.select("user_id").distinct().orderBy("user_id").limit(users).collect()]
    rows = tags.where(F.col("user_id").isin(first)).orderBy("user_id", "rank").collect()
    if not rows:
        return "tags: none written by this run"
    lines = ["tags (a few users, best first):"]
    for user in first:
        mine = [f"{r.tag} ({r.persona})" for r in rows if r.user_id == user]
        lines.append(f"   {user}: " + "; ".join(mine))
    return "\n".join(lines)


main = hydra_entry("nightly", lambda cfg: run_chain(cfg) and None)

if __name__ == "__main__":
    main()
