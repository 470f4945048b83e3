"""Offline evaluation end to end: the whole chain for one run date, on the synthetic world or on
MovieLens ml-100k split in time, with V2 and the V1 baseline mined for the same seeded sample of
users by the same model; then tag recall for each, co-visitation, evaluate (metrics and the HTML
report) and the data-quality gate. Prints the headline metrics side by side and writes
bench/results/eval_<data>.json.

    make eval                 # synthetic
    make eval-movielens       # ../shared/datasets/ml-100k
    python -m bench.evaluation --data movielens --users 60 --adaptor PATH [overrides...]

The sample: users with a reliable history before dt and at least one interaction in the held-out
window (the users an offline evaluation can score), ordered by a seeded hash of the user id.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from bench.machine import write_result
from jobs import compress, covisit, dq, embed_items, evaluate, ingest, mine_intents, recall, train_adaptor
from jobs.stage import StageContext, StageFn, execute, open_context
from recgpt.config import load_config
from recgpt.llm.server import ensure_server, stop_server
from recgpt.rundate import RunDate
from recgpt.tables import EVAL_METRICS, ITEMS, USER_CONTEXT
from udfs.evaluate import heldout

ROOT = Path(__file__).resolve().parent.parent
DATASETS: dict[str, dict[str, Any]] = {
    "synthetic": {"dt": "2025-10-28", "users": 64, "overrides": ["data=synthetic"]},
    # ml-100k runs 1997-09-20 .. 1998-04-22: as of 1998-01-01, 100 users have a history and
    # rate something in the next 30 days; the CPU model mines a sample of them.
    "movielens": {
        "dt": "1998-01-01",
        "users": 64,
        "overrides": [
            "data=movielens",
            f"data.path={ROOT.parent / 'shared' / 'datasets' / 'ml-100k'}",
            "data.holdout_days=30",
        ],
    },
}
HEADLINE = ("hr30", "exclusive_recall", "recall_at_30_tags", "recall_at_30_covisit", "persona_recovery")
PIPELINES = {"v2": "v2", "v1": "v1_baseline"}


@dataclass
class Chain:
    """What one evaluation run produced."""

    root: Path
    dt: RunDate
    users: int
    seconds: dict[str, float] = field(default_factory=dict)
    contexts: dict[str, StageContext] = field(default_factory=dict)
    report: str | None = None


def run_stage(
    cfg: DictConfig, fn: StageFn, name: str, spark: SparkSession | None
) -> tuple[StageContext, float]:
    ctx = open_context(cfg, name, spark)
    started = time.perf_counter()
    execute(ctx, fn)
    return ctx, time.perf_counter() - started


def sample_users(ctx: StageContext, window_days: int, n: int, seed: int, path: Path) -> int:
    """Writes the seeded sample of scorable users to `path`; returns its size."""
    wh, dt = ctx.warehouse, ctx.dt
    with_history = wh.read(USER_CONTEXT, dt=dt).where(F.col("events_kept") > 0).select("user_id")
    categories = wh.read_snapshot(ITEMS, dt).select("item_id", "category")
    behaviors = list(ctx.cfg.eval.behaviors)
    came_back = heldout(wh, dt, window_days, behaviors, categories).select("user_id")
    chosen = (
        with_history.join(came_back, "user_id")
        .orderBy(F.xxhash64(F.col("user_id"), F.lit(seed)), "user_id")
        .limit(n)
        .collect()
    )
    path.write_text("".join(f"{r.user_id}\n" for r in chosen))
    return len(chosen)


def run_chain(
    data: str, users: int, root: Path, adaptor: str | None, overrides: Sequence[str], seed: int = 0
) -> Chain:
    """The whole chain with both pipelines on one warehouse; one engine server for both."""
    spec = DATASETS[data]
    dt = RunDate.parse(spec["dt"])
    base = [f"run.dt={dt}", f"storage.warehouse={root}", *spec["overrides"], *overrides]
    cfg = load_config([*base, "pipeline=v2"])
    spark: SparkSession | None = None
    ctx: StageContext | None = None
    for name, fn in (
        ("ingest", ingest.run),
        ("embed_items", embed_items.run),
        ("compress", compress.run),
        ("covisit", covisit.run),
    ):
        ctx, _ = run_stage(cfg, fn, name, spark)
        spark = ctx.spark
    assert ctx is not None
    users_file = root / "_eval_users.txt"
    chosen = sample_users(ctx, int(cfg.eval.window_days), users, seed, users_file)
    print(f"[eval] {data}: mining {chosen} sampled users as of {dt}", flush=True)
    configs = {
        key: load_config([*base, f"pipeline={pipeline}", f"mine.users_file={users_file}"])
        for key, pipeline in PIPELINES.items()
    }
    if adaptor:
        target = Path(str(cfg.adaptor.artifacts_dir)) / Path(adaptor).name
        shutil.copytree(adaptor, target, dirs_exist_ok=True)
    run_stage(configs["v2"], train_adaptor.run, "train_adaptor", spark)

    chain = Chain(root, dt, chosen)
    llm = OmegaConf.to_container(cfg.llm, resolve=True)
    assert isinstance(llm, dict)
    ensure_server(llm, owner_pid=os.getpid())  # started before either pipeline is timed
    try:
        for key, pipeline_cfg in configs.items():
            chain.contexts[key], chain.seconds[key] = run_stage(
                pipeline_cfg, mine_intents.run, "mine_intents", spark
            )
            run_stage(pipeline_cfg, recall.run, "recall", spark)
    finally:
        stop_server(llm)
    ctx, _ = run_stage(configs["v2"], evaluate.run, "evaluate", spark)
    chain.report = str(ctx.report.details.get("report"))
    run_stage(configs["v2"], dq.run, "dq", spark)
    return chain


def metrics(ctx: StageContext, dt: RunDate) -> dict[str, dict[str, float | None]]:
    """metric -> {"v2": value, "v1": value} from eval_metrics."""
    names = {v: k for k, v in PIPELINES.items()}
    out: dict[str, dict[str, float | None]] = {}
    for r in ctx.warehouse.read(EVAL_METRICS, dt=dt).collect():
        out.setdefault(r.metric, {})[names.get(r.pipeline, r.pipeline)] = r.value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=sorted(DATASETS), default="synthetic")
    parser.add_argument("--users", type=int, help="users to mine (default: per dataset)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample")
    parser.add_argument(
        "--adaptor", help="an existing adaptor artifact folder to use instead of training one"
    )
    parser.add_argument("--workdir", help="warehouse goes here (default: a new temporary folder)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every stage")
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix=f"eval-{args.data}-"))
    users = int(args.users or DATASETS[args.data]["users"])
    started = time.perf_counter()
    chain = run_chain(args.data, users, root, args.adaptor, args.overrides, args.seed)
    total = time.perf_counter() - started
    ctx = chain.contexts["v2"]
    found = metrics(ctx, chain.dt)
    ctx.spark.stop()

    out: dict[str, Any] = {name: found.get(name, {"v2": None, "v1": None}) for name in HEADLINE}
    out["detail"] = {name: values for name, values in sorted(found.items()) if name not in HEADLINE}
    out |= {
        "data": args.data,
        "dt": chain.dt.iso,
        "users": chain.users,
        "mine_seconds": {k: round(v, 1) for k, v in chain.seconds.items()},
        "total_seconds": round(total, 1),
        "report": chain.report,
        "llm": str(ctx.cfg.llm.model_name),
    }
    path = write_result(f"eval_{args.data}", out)
    print(f"\nOffline evaluation, {args.data}, dt={chain.dt}, {chain.users} users ({out['llm']})")
    print(f"  {'metric':<24}{'V2':>10}{'V1':>10}")
    for name in (*HEADLINE, "failure_rate", "tokens_per_user"):
        values = found.get(name, {})
        cells = "".join(f"{_fmt(values.get(k)):>10}" for k in ("v2", "v1"))
        print(f"  {name:<24}{cells}")
    print(
        f"  mining seconds: V2 {chain.seconds['v2']:,.0f}, V1 {chain.seconds['v1']:,.0f}; total {total:,.0f}"
    )
    print(f"  report: {chain.report}")
    print(f"  written to {path}")
    print(json.dumps({name: out[name] for name in HEADLINE}))


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.4f}"


if __name__ == "__main__":
    main()
