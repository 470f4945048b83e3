"""The nightly chain for one run date: every stage of `pipeline.stages` in order, in one Spark
session, each recorded in `runs` as if run alone. Airflow runs the stages one by one instead.

    python -m jobs.nightly run.dt=2025-10-28 [overrides]
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from omegaconf import DictConfig

from jobs.stage import StageFn, execute, hydra_entry, open_context, prepare


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
    root = str(cfg.storage.warehouse)
    root = root if "://" in root else str(Path(root).resolve())
    print(f"\nnightly dt={cfg.run.dt} done in {time.monotonic() - t0:.1f}s · run_id {cfg.run.run_id}")
    print(f"tables under {root}/ (Delta: open with deltalake.DeltaTable(path), DuckDB or Spark)")
    return str(cfg.run.run_id)


main = hydra_entry("nightly", lambda cfg: run_chain(cfg) and None)

if __name__ == "__main__":
    main()
