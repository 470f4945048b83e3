"""Does training the Experts pay? V1, V2-base and V2 with each tuned policy, mined for the same
seeded users on an evaluation date after every training window, on the synthetic world and on
ml-100k.

For each dataset, two warehouses over the same data:

- training, at T = E - `--train-days-before` (its own ingest, through T + the reward window only):
  V2 mines a seeded sample of users with behaviour in [T, T + policy.reward.window_days) with
  `--miner` (the bundled SmolLM2-135M by default: with tags grounded in the history's categories
  it tags every user with about five, so the reward model learns from lists of the kind the policy
  writes, in a sixth of the 1.5B model's time; the 1.5B model was needed while the bundled one
  failed most users or gave one tag, which leaves the reward model no pair to rank); the
  judge (`--judge`, Qwen2.5-Coder-1.5B by default, the better judge of bench-judge) grades their
  tags; train_reward fits the reward model on those grades; train_policy tunes the Experts by
  reward-filtered fine-tuning (rft), then GRPO runs on top of it twice, once rewarded by CRS and
  once by the weighted SUM (the ablation). Every policy is trained with policy.evaluate_from=E, so
  the leakage guard refuses any training example whose reward window reaches E.
- evaluation, at E (the dataset's run date of bench/evaluation.py): inputs, one seeded sample of
  scorable users, then for each variant mine_intents → recall → evaluate, and its figures read
  back before the next variant replaces the date's V2 rows: V1 (v1_baseline), V2-base, V2 + rft,
  V2 + GRPO(SUM), V2 + GRPO(CRS).

Contexts are text for every variant (no tuned model needs an adaptor retrained, and V1 reads text
too), so only the policy differs between the V2 rows. The matched-budget history baseline (the
evaluate stage's `hr30_history`) is reported beside each variant.

    make bench-rl                                   # both datasets (about an hour each on 2 cores)
    python -m bench.rl --data synthetic --users 32 --train-users 48
    # the runs in the README ("Training the experts"), one dataset at a time: the judge's thresholds
    # set to ml-100k's training tags' quartiles (README, "The judge"), the 1.5B teacher, a shorter
    # GRPO, eager engines; --reuse keeps the training date's mined tags and reward model of an
    # earlier run in --workdir
    python -m bench.rl --data movielens --workdir /tmp/rl --reuse \
        llm.enforce_eager=true policy.grpo.steps=6 \
        policy.rft.teacher=qwen25_coder_1p5b_cpu policy.rft.teacher_samples=2 \
        judge.tag.relevance.pass=0.232 judge.tag.relevance.strong=0.353 \
        judge.tag.specificity.pass=0.087 judge.tag.specificity.strong=0.151 \
        judge.tag.consistency.pass=0.321 judge.tag.consistency.strong=0.508

A run stopped before its last variant: the same command with `--resume` keeps the dataset's
policies and measured variants from rl.json and mines only the variants it lacks.
`--evaluate-only NAME` evaluates the policies rl.json records again under other settings, without
training, on a warehouse of its own (their artifacts must still be under the --workdir that
trained them), and writes bench/results/rl_NAME.json; the README's two-tag budget:

    python -m bench.rl --evaluate-only budget2 llm.enforce_eager=true pipeline.agents.n_tags=2

Training runs in a process of its own, so the evaluation's engines get back the memory it held.
Writes bench/results/rl.json after every evaluated variant (`complete: false` until the last; a
dataset measured in an earlier run is kept beside the new one) and bench/results/rl_rewards.png
(mean reward per GRPO step, CRS and SUM, per dataset).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from bench.evaluation import (
    DATASETS,
    engine_server,
    run_inputs,
    run_stage,
    sample_users,
    variant_figures,
)
from bench.machine import RESULTS, write_result
from jobs import evaluate, judge, mine_intents, recall, train_policy, train_reward
from jobs.stage import StageContext, StageFn, prepare
from recgpt.config import load_config, plain
from recgpt.judge import reward as R
from recgpt.llm.server import stop_server
from recgpt.policy import serving as S
from recgpt.report.plots import reward_curve_plot
from recgpt.rundate import RunDate
from recgpt.tables import USER_INTENT_TAGS

# Result key -> pipeline; the V2 keys after v2_base name the policy they mine with.
VARIANTS = ("v1", "v2_base", "v2_rft", "v2_grpo_sum", "v2_grpo_crs")
POLICIES = ("v2_rft", "v2_grpo_sum", "v2_grpo_crs")
METRICS = ("hr30", "exclusive_recall", "hr30_history", "hr_history_top1", "failure_rate", "tokens_per_user")
GAIN_GOAL = 1.24  # the paper's relative gain of V2 (GRPO with CRS) over V1


def served(cfg: DictConfig, fn: StageFn, name: str, spark: SparkSession) -> tuple[StageContext, float]:
    """A stage whose engine server is started before the clock and stopped after it: the server
    of the llm the stage prepares (a tuned policy's weights when `llm.policy` names one), so its
    executors find it rather than starting one of their own that outlives the stage."""
    with engine_server(plain(prepare(cfg, name).llm)):
        return run_stage(cfg, fn, name, spark)


def dataset_overrides(data: str, train_dt: RunDate, eval_dt: RunDate) -> tuple[list[str], list[str]]:
    """The overrides of the training and of the evaluation warehouse. The training run ingests
    through its reward window only (nothing of the evaluation window is in its warehouse); the
    synthetic world is generated once, around E, and seen by each run as of its own cut-off."""
    spec = list(DATASETS[data]["overrides"])
    world = [f"data.anchor_dt={eval_dt}"] if data == "synthetic" else []
    training = [*spec, *world, f"run.dt={train_dt}", "data.holdout_days=${policy.reward.window_days}"]
    return training, [*spec, *world, f"run.dt={eval_dt}"]


def mined_by(ctx: StageContext, dt: RunDate) -> str | None:
    """The model whose V2 text tags the warehouse holds for dt, if any."""
    if not ctx.warehouse.exists(USER_INTENT_TAGS):
        return None
    rows = (
        ctx.warehouse.read(USER_INTENT_TAGS, dt=dt)
        .where((F.col("pipeline") == "v2") & (F.col("context_mode") == "text"))
        .select("model")
        .distinct()
        .collect()
    )
    return str(rows[0].model) if len(rows) == 1 else None


def train(
    data: str,
    root: Path,
    train_dt: RunDate,
    eval_dt: RunDate,
    users: int,
    miner: str,
    judge_model: str,
    seed: int,
    overrides: Sequence[str],
    reuse: bool = False,
) -> dict[str, Any]:
    """Mining, judging, reward model and the three policies at the training date; their versions
    and training figures. `reuse`: what an earlier run on the same warehouse made stands: the
    date's tags if `miner` mined them, and then the reward model trained after them."""
    training, _ = dataset_overrides(data, train_dt, eval_dt)
    base = [
        *training,
        f"storage.warehouse={root}",
        "pipeline=v2",
        "context.mode=text",
        f"policy.evaluate_from={eval_dt}",
        *overrides,
    ]
    ctx = run_inputs(load_config(base))
    spark = ctx.spark
    users_file = root / "_train_users.txt"
    chosen = sample_users(ctx, int(ctx.cfg.policy.reward.window_days), users, seed, users_file)
    print(f"[rl] {data}: training on {chosen} users as of {train_dt}", flush=True)
    seconds: dict[str, float] = {}
    mining = load_config([*base, f"mine.users_file={users_file}", f"llm={miner}"])
    mined = reuse and mined_by(ctx, train_dt) == str(mining.llm.model_name)
    reward = R.latest(Path(str(ctx.cfg.reward.artifacts_dir))) if mined else None
    if mined:
        print(f"[rl] {data}: reusing the tags {miner} mined for {train_dt}", flush=True)
    else:
        _, seconds["mine"] = served(mining, mine_intents.run, "mine_intents", spark)
    if reward is not None:
        print(f"[rl] {data}: reusing reward model {reward.name}", flush=True)
    else:
        judged = load_config([*base, f"judge.model={judge_model}"])
        try:
            _, seconds["judge"] = run_stage(judged, judge.run, "judge", spark)
        finally:
            stop_server(judge.judge_llm(judged))
        _, seconds["train_reward"] = run_stage(load_config(base), train_reward.run, "train_reward", spark)

    policies: dict[str, dict[str, Any]] = {}
    rft, seconds["v2_rft"] = run_stage(
        load_config([*base, "policy.method=rft"]), train_policy.run, "train_policy", spark
    )
    policies["v2_rft"] = S.policy_meta(rft.report.details["policy"]["path"])
    for key, mode in (("v2_grpo_sum", "sum"), ("v2_grpo_crs", "crs")):
        cfg = load_config(
            [
                *base,
                "policy.method=grpo",
                f"policy.reward.mode={mode}",
                f"llm.policy={policies['v2_rft']['version']}",
            ]
        )
        ran, seconds[key] = run_stage(cfg, train_policy.run, "train_policy", spark)
        policies[key] = S.policy_meta(ran.report.details["policy"]["path"])
    spark.stop()
    return {
        "dt": train_dt.iso,
        "users": chosen,
        "miner": miner,
        "judge": judge_model,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "policies": {
            key: {
                "version": meta["version"],
                "method": meta["method"],
                "reward_mode": meta["settings"]["reward"]["mode"],
                "trained_through": meta["trained_through"],
                "prompts": meta["prompts"],
                "reward_before": meta["reward_before"],
                "reward_after": meta.get("reward_after"),
                "reward_curve": meta.get("reward_curve", []),
                "kl_curve": meta.get("kl_curve", []),
                "seconds": meta["seconds"],
            }
            for key, meta in policies.items()
        },
        "artifacts_dir": str(load_config(base).policy.artifacts_dir),
    }


def train_apart(*args: Any) -> dict[str, Any]:
    """`train` in a process of its own: what the tuning held (several GB of weights, optimiser state
    and torch's allocator caches) goes back to the machine when it ends, before the evaluation's
    engines want their KV caches."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(train, *args).result()


def evaluate_variants(
    data: str,
    root: Path,
    train_dt: RunDate,
    eval_dt: RunDate,
    users: int,
    seed: int,
    trained: dict[str, Any],
    overrides: Sequence[str],
    on_variant: Callable[[dict[str, Any]], None] = lambda evaluated: None,
    measured: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every variant mined for the same sample at the evaluation date, scored one after another;
    `on_variant` sees the figures so far after each one. `measured`: the `evaluated` record of an
    earlier run on the same sample, whose variants stand and are not mined again."""
    _, evaluation = dataset_overrides(data, train_dt, eval_dt)
    base = [
        *evaluation,
        f"storage.warehouse={root}",
        "context.mode=text",
        f"policy.artifacts_dir={trained['artifacts_dir']}",
        *overrides,
    ]
    ctx = run_inputs(load_config([*base, "pipeline=v2"]))
    spark = ctx.spark
    users_file = root / "_eval_users.txt"
    chosen = sample_users(ctx, int(ctx.cfg.eval.window_days), users, seed, users_file)
    print(f"[rl] {data}: evaluating {chosen} users as of {eval_dt}", flush=True)
    if measured and (measured["users"], measured["dt"]) != (chosen, eval_dt.iso):
        raise SystemExit(
            f"--resume: rl.json's {data} variants were measured on {measured['users']} users as of "
            f"{measured['dt']}, this sample is {chosen} as of {eval_dt.iso}: rerun without --resume"
        )
    found: dict[str, Any] = dict((measured or {}).get("figures", {}))
    seconds: dict[str, float] = dict((measured or {}).get("mine_seconds", {}))
    for key in (k for k in VARIANTS if k not in found):
        pipeline = "v1_baseline" if key == "v1" else "v2"
        policy = [f"llm.policy={trained['policies'][key]['version']}"] if key in POLICIES else []
        cfg = load_config([*base, f"pipeline={pipeline}", f"mine.users_file={users_file}", *policy])
        _, seconds[key] = served(cfg, mine_intents.run, "mine_intents", spark)
        run_stage(cfg, recall.run, "recall", spark)
        scored, _ = run_stage(cfg, evaluate.run, "evaluate", spark)
        found[key] = variant_figures(scored, eval_dt, (pipeline, "text"), set(METRICS))
        print(f"[rl] {data} {key}: {json.dumps(found[key])}", flush=True)
        on_variant(evaluated(eval_dt, chosen, found, seconds))
    spark.stop()
    return evaluated(eval_dt, chosen, found, seconds)


def evaluated(
    eval_dt: RunDate, users: int, found: dict[str, Any], seconds: dict[str, float]
) -> dict[str, Any]:
    return {
        "dt": eval_dt.iso,
        "users": users,
        "figures": dict(found),
        "mine_seconds": {key: round(value, 1) for key, value in seconds.items()},
    }


def summary(trained: dict[str, Any], evaluated: dict[str, Any]) -> dict[str, Any]:
    """The dataset's entry of rl.json: each headline metric keyed by variant with its interval,
    the reward curves, training seconds and the targets. `complete` is false while variants are
    still to be evaluated (their figures are null)."""
    figures = evaluated["figures"]
    out: dict[str, Any] = {"complete": all(key in figures for key in VARIANTS)}
    for metric in ("hr30", "exclusive_recall", "hr30_history"):
        out[metric] = {key: figures.get(key, {}).get(metric) for key in VARIANTS}
        out[metric]["ci95"] = {key: figures.get(key, {}).get(f"{metric}_ci95") for key in VARIANTS}
    out["detail"] = figures
    out["reward_curves"] = {key: trained["policies"][key]["reward_curve"] for key in POLICIES[1:]}
    out["kl_curves"] = {key: trained["policies"][key]["kl_curve"] for key in POLICIES[1:]}
    out["training"] = trained
    out["training_seconds"] = {key: trained["seconds"][key] for key in POLICIES}
    out["evaluation"] = {k: v for k, v in evaluated.items() if k != "figures"}
    hr = out["hr30"]
    if out["complete"] and None not in (hr["v1"], hr["v2_grpo_crs"], hr["v2_grpo_sum"]):
        out["targets"] = {
            "grpo_crs_at_least_v1": hr["v2_grpo_crs"] >= hr["v1"],
            f"grpo_crs_at_least_{GAIN_GOAL}x_v1": hr["v2_grpo_crs"] >= GAIN_GOAL * hr["v1"],
            "grpo_crs_above_history": hr["v2_grpo_crs"] > (out["hr30_history"]["v2_grpo_crs"] or 0.0),
            "crs_at_least_sum": hr["v2_grpo_crs"] >= hr["v2_grpo_sum"],
        }
    return out


def recorded(
    out: dict[str, Any],
    data: str,
    trained: dict[str, Any],
    started: float,
    evaluated: dict[str, Any],
    name: str = "rl",
) -> None:
    """rl.json (or `name`.json) with the dataset's figures so far: a run stopped half-way keeps
    what it measured."""
    out[data] = summary(trained, evaluated) | {"seconds": round(time.perf_counter() - started, 1)}
    write_result(name, out)


def evaluate_again(args: argparse.Namespace, kept: dict[str, Any], root: Path) -> None:
    """`--evaluate-only NAME`: the policies rl.json records, evaluated again under other settings
    (the overrides) on a warehouse of their own, without training; figures in rl_NAME.json."""
    name = f"rl_{args.evaluate_only}"
    out: dict[str, Any] = {"variants": f"as rl.json, evaluated again with {args.overrides}"}
    out |= {"overrides": args.overrides, "seed": args.seed}
    # Every dataset's policies are checked before the first is evaluated (an hour on 2 cores).
    for data in args.data:
        if data not in kept:
            raise SystemExit(f"--evaluate-only: rl.json has no {data} policies; train them first")
        trained = kept[data]["training"]
        missing = [
            key
            for key, meta in trained["policies"].items()
            if not (Path(trained["artifacts_dir"]) / meta["version"]).is_dir()
        ]
        if missing:
            raise SystemExit(
                f"--evaluate-only: {data} policies {missing} are not in {trained['artifacts_dir']} "
                "any more: rerun bench.rl with that --workdir to train them"
            )
    for data in args.data:
        trained = kept[data]["training"]
        eval_dt = RunDate.parse(DATASETS[data]["dt"])
        started = time.perf_counter()
        evaluate_variants(
            data,
            root / data / args.evaluate_only,
            RunDate.parse(trained["dt"]),
            eval_dt,
            args.users,
            args.seed,
            trained,
            args.overrides,
            on_variant=partial(recorded, out, data, trained, started, name=name),
        )
    print(f"\nrl.json's policies evaluated again, written to {RESULTS / name}.json")
    for data in args.data:
        hr, history = out[data]["hr30"], out[data]["hr30_history"]
        print(
            f"  {data:<11}"
            + "".join(f"{key} {_pct(hr[key])} (history {_pct(history[key])})  " for key in VARIANTS)
        )


def write_plot(datasets: dict[str, Any]) -> Path | None:
    curves = {
        f"{data} GRPO({key.rsplit('_', 1)[-1].upper()})": values
        for data, found in datasets.items()
        for key, values in found.get("reward_curves", {}).items()
        if values
    }
    plot = reward_curve_plot(curves)
    if plot.png is None:
        return None
    path = RESULTS / "rl_rewards.png"
    path.write_bytes(plot.png)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", nargs="+", choices=sorted(DATASETS), default=["synthetic", "movielens"])
    parser.add_argument("--users", type=int, default=32, help="evaluated users per dataset")
    parser.add_argument(
        "--train-users", type=int, default=48, help="users mined and judged at the training date"
    )
    parser.add_argument("--train-days-before", type=int, default=14, help="T = E minus this many days")
    parser.add_argument("--miner", default="smollm2_cpu", help="conf/llm group that mines the training date")
    parser.add_argument("--judge", default="qwen25_coder_1p5b_cpu", help="conf/llm group of the judge")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --workdir: keep the training date's tags if --miner mined them, and their reward model",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="with --workdir: a dataset rl.json holds unfinished keeps its policies and evaluated "
        "variants; only the variants it lacks are mined",
    )
    parser.add_argument(
        "--evaluate-only",
        metavar="NAME",
        help="evaluate the policies rl.json records again, with the overrides (their artifacts must "
        "still be in their artifacts_dir), on a warehouse of their own; writes bench/results/rl_NAME.json",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="warehouses go here (default: a new temporary folder)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every stage")
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="rl-"))
    previous = RESULTS / "rl.json"
    kept = json.loads(previous.read_text()) if previous.is_file() else {}
    if args.evaluate_only:
        evaluate_again(args, kept, root)
        return
    out: dict[str, Any] = {
        "variants": "contexts: text; policies tune the Experts, served to every role",
        "overrides": args.overrides,
        "seed": args.seed,
    }
    out |= {data: kept[data] for data in DATASETS if data in kept and data not in args.data}
    for data in args.data:
        eval_dt = RunDate.parse(DATASETS[data]["dt"])
        train_dt = eval_dt.plus(-args.train_days_before)
        earlier = kept.get(data) if args.resume else None
        if earlier is not None:
            print(f"[rl] {data}: resuming: the policies and {len(earlier['detail'])} variants of rl.json")
        # The dataset's own seconds; a resumed run adds its time to what the stopped one spent.
        started = time.perf_counter() - float((earlier or {}).get("seconds", 0.0))
        trained = (
            earlier["training"]
            if earlier
            else train_apart(
                data,
                root / data / "train",
                train_dt,
                eval_dt,
                args.train_users,
                args.miner,
                args.judge,
                args.seed,
                args.overrides,
                args.reuse,
            )
        )

        evaluate_variants(
            data,
            root / data / "eval",
            train_dt,
            eval_dt,
            args.users,
            args.seed,
            trained,
            args.overrides,
            on_variant=partial(recorded, out, data, trained, started),  # rl.json after each variant
            measured=earlier and {**earlier["evaluation"], "figures": earlier["detail"]},
        )
    path = RESULTS / "rl.json"
    plot = write_plot({d: out[d] for d in DATASETS if d in out})
    print(f"\nTrained Experts, HR@30 on the evaluation date (text contexts), written to {path}")
    print(f"  {'data':<11}" + "".join(f"{key:>14}" for key in VARIANTS) + f"{'history':>10}")
    for data in (d for d in DATASETS if d in out):
        hr = out[data]["hr30"]
        cells = "".join(f"{_pct(hr.get(key)):>14}" for key in VARIANTS)
        print(f"  {data:<11}{cells}{_pct(out[data]['hr30_history'].get('v2_grpo_crs')):>10}")
    if plot:
        print(f"  reward curves: {plot}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    main()
