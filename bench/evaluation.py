"""Offline evaluation end to end: the whole chain for one run date, on the synthetic world or on
MovieLens ml-100k split in time, with V2 and the V1 baseline mined for the same seeded sample of
users by the same model; then tag recall for each, co-visitation, evaluate (metrics and the HTML
report) and the data-quality gate. V2 is mined twice, from hybrid contexts (its cost saving) and
from the text contexts V1 reads, so the price of the hybrid form is always beside its saving.
Prints the headline metrics side by side and writes bench/results/eval_<data>.json.

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
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from bench.machine import write_result
from jobs import compress, covisit, dq, embed_items, evaluate, ingest, mine_intents, recall, train_adaptor
from jobs.stage import StageContext, StageFn, execute, open_context
from recgpt.agents.generic import names_category, tag_key
from recgpt.config import load_config, plain
from recgpt.llm.server import ensure_server, stop_server
from recgpt.rundate import RunDate
from recgpt.tables import EVAL_COMPARISONS, EVAL_METRICS, ITEMS, USER_CONTEXT, USER_INTENT_TAGS
from udfs.evaluate import heldout
from udfs.generic_tags import category_reader

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
# Result key -> (pipeline, context mode) mined for the same users.
VARIANTS = {"v2": ("v2", "hybrid"), "v2_text": ("v2", "text"), "v1": ("v1_baseline", "text")}


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


@contextmanager
def engine_server(llm: dict[str, Any]) -> Iterator[float]:
    """The engine server of `llm` up for the block, so no timed stage pays its start, and stopped
    after it however the block ends; yields the seconds the start took."""
    started = time.perf_counter()
    ensure_server(llm, owner_pid=os.getpid())
    try:
        yield time.perf_counter() - started
    finally:
        stop_server(llm)


def variant_figures(
    ctx: StageContext, dt: RunDate, variant: tuple[str, str], wanted: set[str]
) -> dict[str, Any]:
    """The evaluate stage's `wanted` metrics of one (pipeline, context_mode) for dt, rounded, each
    with its 95% interval where it has one, and the model that mined the variant."""
    out: dict[str, Any] = {}
    for r in ctx.warehouse.read(EVAL_METRICS, dt=dt).collect():
        if (r.pipeline, r.context_mode) != variant or r.metric not in wanted:
            continue
        out[r.metric] = None if r.value is None else round(r.value, 4)
        out["model"] = r.model
        if r.ci95_low is not None:
            out[f"{r.metric}_ci95"] = [round(r.ci95_low, 4), round(r.ci95_high, 4)]
    return out


def tag_figures(ctx: StageContext, dt: RunDate, variant: tuple[str, str]) -> dict[str, Any]:
    """The tag lists of one (pipeline, context_mode) for dt: tagged users, tags per tagged user,
    distinct tags (folded as the generic-tag rule folds them), and the tag most users got, of all
    and of those naming no catalog category, with the share of tagged users it went to."""
    rows = (
        ctx.warehouse.read(USER_INTENT_TAGS, dt=dt)
        .where((F.col("pipeline") == variant[0]) & (F.col("context_mode") == variant[1]))
        .select("user_id", "tag")
        .collect()
    )
    per_user = Counter(r.user_id for r in rows)
    spelled = {tag_key(r.tag): r.tag for r in sorted(rows, key=lambda r: r.tag, reverse=True)}
    users_of = Counter(key for _, key in {(r.user_id, tag_key(r.tag)) for r in rows})
    known = category_reader(ctx.warehouse, dt)() if rows else []
    other = Counter({k: n for k, n in users_of.items() if not names_category(spelled[k], known)})
    counts = list(per_user.values())
    out: dict[str, Any] = {
        "tagged_users": len(per_user),
        "tags_per_user_median": statistics.median(counts) if counts else 0,
        "tags_per_user_mean": round(statistics.fmean(counts), 2) if counts else 0,
        "distinct_tags": len(users_of),
    }
    for name, found in (("top_tag", users_of), ("top_noncategory_tag", other)):
        key, n = found.most_common(1)[0] if found else (None, 0)
        out[name] = spelled.get(key) if key else None
        out[f"{name}_user_share"] = round(n / len(per_user), 3) if per_user else None
    return out


def run_inputs(cfg: DictConfig) -> StageContext:
    """The stages before mining (ingest, embed_items, compress, covisit) in one Spark session;
    returns the last one's context (its session serves the later stages)."""
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
    return ctx


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
    ctx = run_inputs(cfg)
    spark = ctx.spark
    users_file = root / "_eval_users.txt"
    chosen = sample_users(ctx, int(cfg.eval.window_days), users, seed, users_file)
    print(f"[eval] {data}: mining {chosen} sampled users as of {dt}", flush=True)
    configs = {
        key: load_config(
            [*base, f"pipeline={pipeline}", f"context.mode={mode}", f"mine.users_file={users_file}"]
        )
        for key, (pipeline, mode) in VARIANTS.items()
    }
    if adaptor:
        target = Path(str(cfg.adaptor.artifacts_dir)) / Path(adaptor).name
        shutil.copytree(adaptor, target, dirs_exist_ok=True)
    run_stage(configs["v2"], train_adaptor.run, "train_adaptor", spark)

    chain = Chain(root, dt, chosen)
    with engine_server(plain(cfg.llm)):  # one start, before either pipeline is timed
        for key, pipeline_cfg in configs.items():
            chain.contexts[key], chain.seconds[key] = run_stage(
                pipeline_cfg, mine_intents.run, "mine_intents", spark
            )
            run_stage(pipeline_cfg, recall.run, "recall", spark)
    ctx, _ = run_stage(configs["v2"], evaluate.run, "evaluate", spark)
    chain.report = str(ctx.report.details.get("report"))
    run_stage(configs["v2"], dq.run, "dq", spark)
    return chain


def variant_key(pipeline: str, mode: str) -> str:
    names = {v: k for k, v in VARIANTS.items()}
    return names.get((pipeline, mode), f"{pipeline}.{mode}")


def metrics(ctx: StageContext, dt: RunDate) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(metric -> {"v2": value, "v2_text": value, "v1": value}, metric -> {variant: [low, high]})
    from eval_metrics."""
    values: dict[str, dict[str, Any]] = {}
    ci: dict[str, dict[str, Any]] = {}
    for r in ctx.warehouse.read(EVAL_METRICS, dt=dt).collect():
        key = variant_key(r.pipeline, r.context_mode)
        values.setdefault(r.metric, {})[key] = r.value
        if r.ci95_low is not None:
            ci.setdefault(r.metric, {})[key] = [round(r.ci95_low, 4), round(r.ci95_high, 4)]
    return values, ci


def compared(ctx: StageContext, dt: RunDate) -> list[dict[str, Any]]:
    """eval_comparisons: each variant minus another or a baseline, with the paired interval."""
    rows = ctx.warehouse.read(EVAL_COMPARISONS, dt=dt).collect()
    out = []
    for r in sorted(rows, key=lambda r: (r.metric, r.pipeline, r.context_mode, r.other)):
        other = variant_key(*r.other.split(".", 1)) if "." in r.other else r.other
        out.append(
            {"metric": r.metric, "variant": variant_key(r.pipeline, r.context_mode), "minus": other}
            | {"difference": round(r.difference, 4), "ci95": [round(r.ci95_low, 4), round(r.ci95_high, 4)]}
            | {"users": r.users}
        )
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
    found, ci = metrics(ctx, chain.dt)
    pairs = compared(ctx, chain.dt)
    tags = {
        key: tag_figures(ctx, chain.dt, variant)
        | {
            f"generic_tag_rows_{done}": int(chain.contexts[key].report.details.get(detail, 0))
            for done, detail in (("dropped", "generic_tag"), ("cut", "generic_tag_cut"))
        }
        for key, variant in VARIANTS.items()
    }
    ctx.spark.stop()

    k = int(ctx.cfg.eval.k)
    out: dict[str, Any] = {name: found.get(name, dict.fromkeys(VARIANTS)) for name in HEADLINE}
    # The LLM-free baselines over each variant's users: as many categories as its tags name, 1, 3.
    out["history"] = {
        "matched": found.get(f"hr{k}_history", {}),
        "top1": found.get("hr_history_top1", {}),
        "top3": found.get("hr_history_top3", {}),
    }
    out["popular"] = {
        "matched": found.get(f"hr{k}_popular", {}),
        "top1": found.get("hr_popular_top1", {}),
        "top3": found.get("hr_popular_top3", {}),
    }
    out["ci95"] = ci
    out["comparisons"] = pairs
    out["tags"] = tags
    baselines = {
        f"hr{k}_history",
        f"hr{k}_popular",
        *(f"hr_{b}_top{n}" for b in ("history", "popular") for n in (1, 3)),
    }
    out["detail"] = {
        name: values
        for name, values in sorted(found.items())
        if name not in HEADLINE and name not in baselines
    }
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
    print(f"  {'metric':<24}{'V2 hybrid':>10}{'V2 text':>10}{'V1':>10}")
    for name in (*HEADLINE, "failure_rate", "tokens_per_user", f"hr{k}_history", f"hr{k}_popular"):
        values = found.get(name, {})
        cells = "".join(f"{_fmt(values.get(key)):>10}" for key in VARIANTS)
        print(f"  {name:<24}{cells}")
    for pair in pairs:
        if pair["metric"] == f"hr{k}" and pair["variant"] == "v2":
            low, high = pair["ci95"]
            print(
                f"  hr{k} v2 - {pair['minus']:<14} {pair['difference']:+.3f}  [{low:+.3f}, {high:+.3f}] "
                f"over {pair['users']} users"
            )
    for key, figures in tags.items():
        print(
            f"  {key}: {figures['tags_per_user_median']} tags per tagged user (median), top tag "
            f"{figures['top_tag']!r} for {figures['top_tag_user_share']} of them, top non-category "
            f"{figures['top_noncategory_tag']!r} {figures['top_noncategory_tag_user_share']}; "
            f"{figures['generic_tag_rows_dropped']} generic tag rows dropped, "
            f"{figures['generic_tag_rows_cut']} cut to their category"
        )
    seconds = ", ".join(f"{k} {chain.seconds[k]:,.0f}" for k in VARIANTS)
    print(f"  mining seconds: {seconds}; total {total:,.0f}")
    print(f"  report: {chain.report}")
    print(f"  written to {path}")
    print(json.dumps({name: out[name] for name in HEADLINE}))


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.4f}"


if __name__ == "__main__":
    main()
