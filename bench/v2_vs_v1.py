"""V2 vs V1 on the same users, model and data, in one run: the real mine_intents stage on the
bundled model, once as V2 (planner -> experts -> arbiter over the hybrid context) and once as the
V1 baseline (four independent routes over the V1 text context).

Reported per pipeline: LLM tokens per user (prompt + generated, from the `llm_calls` ledger),
wall seconds per user (the stage's own time, engine already warm), the duplicate-tag rate (share
of the tags the Experts or routes proposed that repeated another tag of the same user, exactly
or by embedding cosine >= the near-duplicate threshold), failures and tags per user, and HR@30
from the evaluate stage (bench/evaluation.py runs the chain). Target: V2 <= 0.5x V1's tokens per
user with HR@30 not lower. The users are a seeded sample of synthetic users with held-out activity.

    make bench-v2-vs-v1 [ARGS="--users 48 --adaptor PATH"]
    make bench-v2-vs-v1 ARGS="--reuse WAREHOUSE"     # the figures of a finished `make eval` run
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from pyspark.sql import functions as F

from bench.evaluation import DATASETS, PIPELINES, metrics, run_chain
from bench.machine import write_result
from jobs.stage import StageContext, open_context
from recgpt.config import load_config
from recgpt.rundate import RunDate
from recgpt.tables import LLM_CALLS, MINING_FAILURES, RUNS, USER_INTENT_TAGS


def mining_run(ctx: StageContext, pipeline: str, mode: str) -> tuple[float, dict[str, Any]]:
    """Seconds and summary details of the latest successful mine_intents run of the variant."""
    runs = (
        ctx.warehouse.read(RUNS, dt=ctx.dt)
        .where((F.col("stage") == "mine_intents") & (F.col("status") == "success"))
        .orderBy(F.col("started_at").desc())
        .collect()
    )
    for run in runs:
        details = json.loads(run.details or "{}")
        if str(details.get("variant", "")).startswith(f"pipeline={pipeline} context_mode={mode}"):
            return float(run.seconds), details
    raise SystemExit(f"no successful mine_intents run of {pipeline}/{mode} for {ctx.dt}")


def figures(ctx: StageContext, pipeline: str, mode: str, users: int) -> dict[str, Any]:
    """One pipeline's cost and output figures from the warehouse: the ledger, the mined tables
    and the mining run's record."""
    wh = ctx.warehouse
    variant = (F.col("pipeline") == pipeline) & (F.col("context_mode") == mode)
    ledger = (
        wh.read(LLM_CALLS, dt=ctx.dt)
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
    tags = wh.read(USER_INTENT_TAGS, dt=ctx.dt).where(variant)
    tagged = tags.select("user_id").distinct().count()
    failed = wh.read(MINING_FAILURES, dt=ctx.dt).where(variant).count()
    prompt, generated = int(ledger["prompt"] or 0), int(ledger["generated"] or 0)
    seconds, details = mining_run(ctx, pipeline, mode)
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
    parser.add_argument("--users", type=int, default=48, help="synthetic users to mine (seeded sample)")
    parser.add_argument(
        "--adaptor", help="an existing adaptor artifact folder to use instead of training one"
    )
    parser.add_argument("--workdir", help="warehouse goes here (default: a new temporary folder)")
    parser.add_argument(
        "--reuse",
        help="report on the warehouse of a finished `make eval` run (synthetic) instead of running "
        "the chain again: the same chain, both pipelines on the same users in one run",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every stage")
    args = parser.parse_args()
    if args.reuse:
        dt = RunDate.parse(DATASETS["synthetic"]["dt"])
        cfg = load_config([f"run.dt={dt}", f"storage.warehouse={args.reuse}", "pipeline=v2", *args.overrides])
        ctx = open_context(cfg, "bench", None)
        users = sum(1 for line in (Path(args.reuse) / "_eval_users.txt").read_text().splitlines() if line)
    else:
        root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-v2-v1-"))
        chain = run_chain("synthetic", args.users, root, args.adaptor, args.overrides)
        ctx, dt, users = chain.contexts["v2"], chain.dt, chain.users
    modes = {"v2": str(ctx.cfg.context.mode), "v1_baseline": "text"}
    results = {pipeline: figures(ctx, pipeline, modes[pipeline], users) for pipeline in PIPELINES.values()}
    hr30 = metrics(ctx, dt).get("hr30", {})
    v2_cfg = ctx.cfg
    ctx.spark.stop()

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
        "v2_hr30": hr30.get("v2"),
        "v1_hr30": hr30.get("v1"),
        "detail": results,
        "llm": str(v2_cfg.llm.model_name),
        "engine": "one OpenAI-compatible vLLM server for both pipelines, started before either is timed",
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
    print(f"  HR@30 V2 {out['v2_hr30']} vs V1 {out['v1_hr30']} (target: V2 not lower)")
    print(f"  written to {path}")
    print(json.dumps({k: out[k] for k in ("token_ratio", "v2_dup_rate", "v1_dup_rate")}))


if __name__ == "__main__":
    main()
