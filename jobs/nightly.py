"""The nightly chain for one run date: every stage of `pipeline.stages` in order, in one Spark
session, each recorded in `runs` as if run alone. Airflow runs the stages one by one instead.

A stage that called the LLM leaves its engine server behind in the executors (that is how one
engine serves every partition and step of the stage). Run alone, the stage's process ends and
the server with it; in the chain the process goes on, so the chain stops the engine servers its
own local Spark started once such a stage is done: the later stages get the memory back (about
4 GB for the bundled model), and a later LLM stage starts a server again.

    python -m jobs.nightly run.dt=2025-10-28 [overrides]
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from jobs.stage import StageFn, execute, hydra_entry, open_context, prepare
from recgpt.llm.server import stop_servers_started_under


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
    for stage in stages:
        ctx = open_context(cfg, stage, spark)
        spark = ctx.spark
        execute(ctx, fns[stage])
        if ctx.report.details.get("llm"):
            llm_cfg = OmegaConf.to_container(cfg.llm, resolve=True)
            for key in stop_servers_started_under(os.getpid(), llm_cfg):  # type: ignore[arg-type]
                print(f"   engine server {key} stopped after {stage}", flush=True)
    root = str(cfg.storage.warehouse)
    root = root if "://" in root else str(Path(root).resolve())
    print(f"\nnightly dt={cfg.run.dt} done in {time.monotonic() - t0:.1f}s · run_id {cfg.run.run_id}")
    print(f"tables under {root}/ (Delta: open with deltalake.DeltaTable(path), DuckDB or Spark)")
    return str(cfg.run.run_id)


main = hydra_entry("nightly", lambda cfg: run_chain(cfg) and None)

if __name__ == "__main__":
    main()
