"""V2 vs V1 on the same users, model and data, in one run: the real mine_intents stage on the
bundled model, once as V2 (planner -> experts -> arbiter over the hybrid context) and once as the
V1 baseline (four independent routes over the V1 text context).

Reported per pipeline: LLM tokens per user (prompt + generated, from the `llm_calls` ledger),
wall seconds per user (the stage's own time, engine already warm), the duplicate-tag rate (share
of the tags the Experts or routes proposed that repeated another tag of the same user, exactly
or by embedding cosine >= the near-duplicate threshold), failures and tags per user. HR@30 needs
the evaluation stage and is null until it exists. Target: V2 <= 0.5x V1's tokens per user.

    make bench-v2-vs-v1 [ARGS="--users 48 --adaptor PATH"]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from bench.machine import write_result
from jobs import compress, embed_items, ingest, mine_intents, train_adaptor
from jobs.stage import StageContext, StageFn, execute, open_context
from recgpt.config import load_config
from recgpt.llm.server import ensure_server, stop_server
from recgpt.tables import LLM_CALLS, MINING_FAILURES, USER_INTENT_TAGS

DT = "2025-10-28"


def run_stage(cfg: Any, fn: StageFn, name: str, spark: SparkSession | None) -> tuple[StageContext, float]:
    ctx = open_context(cfg, name, spark)
    started = time.perf_counter()
    execute(ctx, fn)
    return ctx, time.perf_counter() - started


def figures(ctx: StageContext, pipeline: str, mode: str, seconds: float, users: int) -> dict[str, Any]:
    wh = ctx.warehouse
    variant = (F.col("pipeline") == pipeline) & (F.col("context_mode") == mode)
    ledger = (
        wh.read(LLM_CALLS, dt=DT)
        .where(F.col("stage") == f"mine_intents.{pipeline}.{mode}")
        .agg(
            F.count("*").alias("calls"),
            F.sum("prompt_tokens").alias("prompt"),
            F.sum("cached_prompt_tokens").alias("cached"),
            F.sum("generated_tokens").alias("generated"),
        )
        .first()
    )
    assert ledger is not None
    tags = wh.read(USER_INTENT_TAGS, dt=DT).where(variant)
    tagged = tags.select("user_id").distinct().count()
    failed = wh.read(MINING_FAILURES, dt=DT).where(variant).count()
    prompt, generated = int(ledger["prompt"] or 0), int(ledger["generated"] or 0)
    details = ctx.report.details
    return {
        "pipeline": pipeline,
        "context_mode": mode,
        "users": users,
        "calls_per_user": round(int(ledger["calls"]) / users, 2),
        "prompt_tokens_per_user": round(prompt / users, 1),
        "cached_prompt_tokens_per_user": round(int(ledger["cached"] or 0) / users, 1),
        "generated_tokens_per_user": round(generated / users, 1),
        "tokens_per_user": round((prompt + generated) / users, 1),
        "seconds_per_user": round(seconds / users, 3),
        "duplicate_rate": details.get("duplicate_rate"),
        "proposed_tags": details.get("proposed_tags"),
        "tagged_users": tagged,
        "failed_users": failed,
        "tags_per_tagged_user": round(tags.count() / max(tagged, 1), 2),
        "rejected": details.get("rejected"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=48, help="synthetic users (all with a history)")
    parser.add_argument(
        "--adaptor", help="an existing adaptor artifact folder to use instead of training one"
    )
    parser.add_argument("--workdir", help="warehouse goes here (default: a new temporary folder)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every stage")
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-v2-v1-"))
    base = [f"run.dt={DT}", f"storage.warehouse={root}", f"data.users={args.users}", *args.overrides]
    v2_cfg = load_config([*base, "pipeline=v2"])
    v1_cfg = load_config([*base, "pipeline=v1_baseline"])

    spark: SparkSession | None = None
    for name, fn in (("ingest", ingest.run), ("embed_items", embed_items.run), ("compress", compress.run)):
        ctx, _ = run_stage(v2_cfg, fn, name, spark)
        spark = ctx.spark
    if args.adaptor:
        target = Path(str(v2_cfg.adaptor.artifacts_dir)) / Path(args.adaptor).name
        shutil.copytree(args.adaptor, target, dirs_exist_ok=True)
    run_stage(v2_cfg, train_adaptor.run, "train_adaptor", spark)
    users = ctx.warehouse.read("user_context", dt=DT).where(F.col("events_kept") > 0).count()

    # One engine server for both pipelines, started before either is timed.
    llm = OmegaConf.to_container(v2_cfg.llm, resolve=True)
    assert isinstance(llm, dict)
    started = time.perf_counter()
    ensure_server(llm, owner_pid=os.getpid())
    engine_start = time.perf_counter() - started

    results = {}
    for cfg, pipeline in ((v2_cfg, "v2"), (v1_cfg, "v1_baseline")):
        ctx, seconds = run_stage(cfg, mine_intents.run, "mine_intents", spark)
        mode = mine_intents.context_mode(ctx)
        results[pipeline] = figures(ctx, pipeline, mode, seconds, users)
    stop_server(llm)
    assert spark is not None
    spark.stop()

    v2, v1 = results["v2"], results["v1_baseline"]
    out = {
        "users": users,
        "v2_tokens_per_user": v2["tokens_per_user"],
        "v1_tokens_per_user": v1["tokens_per_user"],
        "token_ratio": round(v2["tokens_per_user"] / max(v1["tokens_per_user"], 1e-9), 3),
        "v2_seconds_per_user": v2["seconds_per_user"],
        "v1_seconds_per_user": v1["seconds_per_user"],
        "v2_dup_rate": v2["duplicate_rate"],
        "v1_dup_rate": v1["duplicate_rate"],
        "v2_hr30": None,  # evaluation stage not built yet
        "v1_hr30": None,
        "engine_start_seconds": round(engine_start, 1),
        "detail": results,
        "llm": str(v2_cfg.llm.model_name),
    }
    path = write_result("v2_vs_v1", out)
    print(f"\nV2 vs V1 on {users} users ({out['llm']}, engine warm)")
    for name, r in (("V2 (hybrid)", v2), ("V1 (text)", v1)):
        print(
            f"  {name:<12} {r['tokens_per_user']:>8,.0f} tokens/user "
            f"({r['prompt_tokens_per_user']:,.0f} prompt + "
            f"{r['generated_tokens_per_user']:,.0f} generated, {r['calls_per_user']} calls) · "
            f"{r['seconds_per_user']:.2f} s/user · duplicate rate {r['duplicate_rate']} · "
            f"{r['tagged_users']} tagged, {r['failed_users']} failed"
        )
    print(f"  token ratio V2/V1 {out['token_ratio']} (target <= 0.5)")
    print(f"  written to {path}")
    print(json.dumps({k: out[k] for k in ("token_ratio", "v2_dup_rate", "v1_dup_rate")}))


if __name__ == "__main__":
    main()
