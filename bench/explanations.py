"""Explanations benchmark: the explain stage on the real bundled model for a seeded sample of
users of the synthetic world and of MovieLens ml-100k, every mode on the same (user, item) pairs:
V2's meta-prompting (a style guide, then the line), the one-prompt baseline (single) and the
fixed sentence (template). Per dataset and mode: diversity as the paper defines it (1 - mean
ROUGE-L F between the lines of the same item for different users), rule pass rate, words,
distinct-n, tokens and engine seconds per explanation. Writes bench/results/explanations.json.

    make bench-explanations
    python -m bench.explanations --data synthetic --users 100 [overrides...]

The users' tags come from V2 mined on the text context (explanations read the tag, its persona,
the item, the user's recent item of its category and the situation, never the mined context, so
the context form only changes which tags there are; the text form needs no adaptor training).
Targets: diversity meta >= 1.07 x single, pass rate meta >= 0.9.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pyspark.sql import functions as F

from bench.evaluation import DATASETS, run_inputs, run_stage, sample_users
from bench.machine import write_result
from jobs import explain, mine_intents, recall
from recgpt.config import load_config
from recgpt.llm.server import ensure_server, stop_server
from recgpt.rundate import RunDate
from recgpt.tables import EXPLANATION_FAILURES, ITEM_EXPLANATIONS
from udfs.explain import explanation_metrics, explanation_samples

MODES = ("meta", "single", "template")
FIGURES = {
    "diversity": "diversity",
    "diversity_all_lines": "diversity_all",
    "pass_rate": "pass_rate",
    "words_mean": "words",
    "distinct_1": "distinct1",
    "distinct_2": "distinct2",
    "tokens_per_explanation": "tokens",
    "seconds_per_explanation": "seconds",
    "calls_per_explanation": "calls",
}


def run_data(data: str, users: int, root: Path, seed: int, overrides: list[str]) -> dict[str, Any]:
    spec = DATASETS[data]
    dt = RunDate.parse(spec["dt"])
    base = [
        f"run.dt={dt}",
        f"storage.warehouse={root}",
        *spec["overrides"],
        "pipeline=v2",
        "context.mode=text",
    ]
    cfg = load_config([*base, *overrides])
    ctx = run_inputs(cfg)
    spark = ctx.spark
    users_file = root / "_explain_users.txt"
    chosen = sample_users(ctx, int(cfg.eval.window_days), users, seed, users_file)
    cfg = load_config([*base, f"mine.users_file={users_file}", *overrides])
    llm = dict(load_config(base).llm)
    ensure_server(llm, owner_pid=os.getpid())
    try:
        run_stage(cfg, mine_intents.run, "mine_intents", spark)
        run_stage(cfg, recall.run, "recall", spark)
        ctx, seconds = run_stage(cfg, explain.run, "explain", spark)
    finally:
        stop_server(llm)
    wh = ctx.warehouse
    metrics = explanation_metrics(wh, dt, int(cfg.eval.explanation_pairs_per_item))
    values = {(r.metric): r.value for r in metrics.itertuples()}
    counts = {(r.metric): int(r.users) for r in metrics.itertuples()}
    out: dict[str, Any] = {
        key: {m: _round(values.get(f"explain_{name}_{m}")) for m in MODES if f"explain_{name}_{m}" in values}
        for key, name in FIGURES.items()
    }
    explained = wh.read(ITEM_EXPLANATIONS, dt=dt)
    out["diversity_pairs"] = {m: counts.get(f"explain_diversity_{m}", 0) for m in MODES}
    out["diversity_all_lines_pairs"] = {m: counts.get(f"explain_diversity_all_{m}", 0) for m in MODES}
    out["explanations"] = {m: counts.get(f"explain_pass_rate_{m}", 0) for m in MODES}
    out["users"] = explained.select("user_id").distinct().count()
    out["sampled_users"] = chosen
    out["dt"] = dt.iso
    out["stage_seconds"] = round(seconds, 1)
    for key in ("diversity", "diversity_all_lines"):
        meta, single = out[key].get("meta"), out[key].get("single")
        out[f"{key}_meta_over_single"] = _round(meta / single) if meta and single else None
    samples = explanation_samples(wh, dt, 3)
    out["samples"] = (
        []
        if samples is None
        else [
            {k: (None if v != v else v) for k, v in row.items()}  # NaN -> null
            for row in samples.sort_values(["user_id", "tag_rank", "explanation_mode"])[
                ["user_id", "item_id", "tag", "explanation_mode", "style_guide", "explanation", "reason"]
            ].to_dict("records")
        ]
    )
    out["failure_reasons"] = {m: {r.reason: r["count"] for r in rows} for m, rows in _reasons(ctx).items()}
    ctx.spark.stop()
    return out


def _reasons(ctx: Any) -> dict[str, list[Any]]:
    rows = ctx.warehouse.read(EXPLANATION_FAILURES, dt=ctx.dt).groupBy("explanation_mode", "reason").count()
    out: dict[str, list[Any]] = {}
    for r in rows.orderBy(F.col("count").desc()).collect():
        out.setdefault(r.explanation_mode, []).append(r)
    return out


def _round(value: Any) -> Any:
    return None if value is None or value != value else round(float(value), 4)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="synthetic,movielens", help="comma-separated: synthetic, movielens")
    parser.add_argument("--users", type=int, default=100, help="sampled users per dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="warehouses go here (default: a new temporary folder)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every stage")
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-explanations-"))
    started = time.perf_counter()
    results = {}
    for data in args.data.split(","):
        results[data] = run_data(data, args.users, root / data, args.seed, list(args.overrides))
    figures = {
        "datasets": results,
        "targets": {"diversity_meta_over_single": 1.07, "pass_rate_meta": 0.9},
        "total_seconds": round(time.perf_counter() - started, 1),
        "llm": str(load_config([]).llm.model_name),
    }
    path = write_result("explanations", figures)
    for data, out in results.items():
        print(
            f"\nExplanations, {data}, dt={out['dt']}: {out['users']} users, "
            f"pairs per mode {out['explanations']}"
        )
        print(f"  {'figure':<26}" + "".join(f"{m:>10}" for m in MODES))
        for key in FIGURES:
            cells = "".join(f"{_cell(out[key].get(m)):>10}" for m in MODES)
            print(f"  {key:<26}{cells}")
        print(
            f"  diversity meta / single: {_cell(out['diversity_meta_over_single'])} written lines, "
            f"{_cell(out['diversity_all_lines_meta_over_single'])} all lines (target 1.07)"
        )
    print(f"\nwritten to {path}")


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
