"""Stage train_policy: tune the tag Experts on the run date's planner personas (the training date)
and save the tuned model as a versioned policy artifact. On demand, like train_adaptor, not a
step of the nightly chain:

    python -m jobs.train_policy run.dt=2025-10-14 policy.evaluate_from=2025-10-28

Reward-filtered fine-tuning (`policy.method=rft`): the base model samples `policy.rft.samples`
answers per Expert prompt (vLLM, in this process), each answer earns the shaped reward of the
tags mining's validation keeps (recgpt/policy: accuracy against the categories of the reward
window [dt, dt + policy.reward.window_days), the reward model's alignment, diversity, length),
and the model is fully fine-tuned on each prompt's best answer.

GRPO (`policy.method=grpo`, recgpt/policy/grpo.py): TRL's GRPOTrainer samples `policy.grpo.group_size`
answers per prompt from the current policy (transformers, under the Expert's JSON schema) and
rewards them the same way; `policy.reward.mode` picks CRS or the SUM ablation. To run GRPO on top
of reward-filtered tuning, start from that policy: `llm.policy=<its version>`.

A teacher (`policy.rft.teacher=<conf/llm group>`, e.g. the larger offline Qwen2.5-Coder-1.5B)
answers every prompt `policy.rft.teacher_samples` times as well; a prompt's target is the teacher's
answer where it earns strictly more than every answer of the policy's own (distillation where it
helps). The policy's and the teacher's engines run one after the other, never together.

Greedy answers of the starting and of the tuned model on the same prompts (vLLM) give the rewards
before and after.

No leakage: every training example's reward window must end by `policy.evaluate_from` (the first
date the policy may be evaluated on); the artifact records the training users, date and the last
rewarded day, and a later use of the policy on an earlier date is refused.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyspark.sql import functions as F

from jobs.stage import StageContext, main_for
from recgpt.agents.schemas import build_schemas
from recgpt.agents.settings import AgentSettings
from recgpt.config import load_config, plain
from recgpt.errors import ConfigError, RecGPTError
from recgpt.judge import reward as R
from recgpt.llm.engine import Engine, RetryPolicy
from recgpt.llm.model_cache import require_on_disk
from recgpt.llm.request import Request, Result, Sampling
from recgpt.llm.vllm_offline import VLLMOfflineBackend
from recgpt.policy import grpo as G
from recgpt.policy import serving as S
from recgpt.policy import tuning as T
from recgpt.policy.experts import ExpertExample, ExpertReward, Scored, expert_schema, messages
from recgpt.policy.rewards import REWARDS, Shaping, Window, check_no_leakage, reward_window
from recgpt.policy.scorer import TagRewarder
from recgpt.policy.serving import base_model_name
from recgpt.rundate import RunDate
from recgpt.tables import ITEMS
from udfs.embeddings import embedder_for
from udfs.llm import renderer_for
from udfs.mining import grounded_agents, mining_plan
from udfs.mining_scope import variant_of
from udfs.policy_data import training_examples
from udfs.recall import catalog

STAGE = "train_policy"
METHODS = ("rft", "grpo")  # the shaping (crs or sum) is policy.reward.mode for both


def examples_for(ctx: StageContext) -> list[ExpertExample]:
    """The training date's Expert examples (collected: a bounded, seeded sample of users)."""
    variant = variant_of(ctx.cfg)
    where = (F.col("pipeline") == variant["pipeline"]) & (F.col("context_mode") == variant["context_mode"])
    rows = training_examples(
        ctx.spark, ctx.warehouse, ctx.dt, where, plain(ctx.cfg.policy.data), plain(ctx.cfg.calendar)
    ).collect()
    if not rows:
        raise RecGPTError(
            f"no training examples for {ctx.dt}: no {variant['pipeline']} personas of users with behaviour "
            f"in the reward window (run mine_intents for the date; the window needs later behaviours)"
        )
    return [ExpertExample.from_row(r.asDict()) for r in rows]


def guard(examples: Sequence[ExpertExample], dt: RunDate, days: int, evaluate_from: Any) -> Window:
    """The reward window, checked against the first evaluation date."""
    window = reward_window(dt, days)
    if evaluate_from is None:
        raise ConfigError(
            "set policy.evaluate_from to the first date this policy may be evaluated on: every "
            f"reward window must end by then (this one ends {window.end.isoformat()})"
        )
    evaluation = Window(RunDate.parse(evaluate_from, "policy.evaluate_from").day, 1)
    check_no_leakage([(e.truth.user_id, window) for e in examples], evaluation)
    return window


def expert_reward(ctx: StageContext, settings: AgentSettings, shaping: Shaping) -> tuple[ExpertReward, str]:
    """Mining's validation for the date and a rewarder over the date's catalog; the reward
    model's version."""
    cfg, wh, dt = ctx.cfg, ctx.warehouse, ctx.dt
    plan = mining_plan(cfg, wh, dt, variant_of(cfg))
    validation = plan.validation(settings)
    embedding = plain(cfg.embedding)
    embedder = embedder_for(embedding)
    cat = catalog(wh, dt, str(cfg.embedding.model_name))
    categories = dict(wh.read_snapshot(ITEMS, dt).select("item_id", "category").collect())
    folder = R.resolve(cfg.reward.artifacts_dir, cfg.policy.get("reward_model"), embedder.name)
    rewarder = TagRewarder(
        list(cat.ids),
        cat.vectors,
        [categories.get(i) for i in cat.ids],
        embedder.encode,
        R.load(folder, embedder.encode),
        shaping,
        int(cfg.eval.category_items),
    )
    return ExpertReward(build_schemas(settings), validation, rewarder, embedder.encode), folder.name


def greedy_key(
    examples: Sequence[ExpertExample], settings: AgentSettings, shaping: Shaping, reward_model: str
) -> str:
    """What a greedy reward depends on besides the weights: the prompts, their reward windows'
    truth, the shaping and the reward model. A policy tuned further from one whose greedy
    reward after tuning has this key starts from that figure instead of measuring it again."""
    rows = [
        (e.key, json.dumps([messages(settings, e), e.history_categories, sorted(e.truth.window_categories)]))
        for e in examples
    ]
    rows.append(("reward", json.dumps([shaping.as_dict(), reward_model], sort_keys=True)))
    return T.data_hash(rows)


def sample(
    engine: Engine, settings: AgentSettings, examples: Sequence[ExpertExample], n: int, temperature: float
) -> dict[str, list[str]]:
    """Per example key, `n` answers (n = 1 at temperature 0: the greedy answer).

    No request carries a seed of its own: vLLM's CPU build stops its engine when a seeded
    request's prompt is prefilled over several steps (it rewinds the request's generator, which a
    CPU generator cannot do), as soon as a batch outgrows one step's token budget. The engine's
    own seed (`llm.seed`) keeps a rerun of the same batch reproducible."""
    base = settings.sampling.expert
    requests = [
        Request(
            key=f"{e.key}#{i}",
            messages=tuple(messages(settings, e)),
            schema=expert_schema(settings, e),
            sampling=Sampling(base.max_tokens, temperature, 1.0),
        )
        for e in examples
        for i in range(n)
    ]
    out: dict[str, list[str]] = {e.key: [] for e in examples}
    results: list[Result] = engine.generate(requests)
    for r in results:
        out[r.key.rsplit("#", 1)[0]].append(r.text if r.error is None else "")
    return out


def mean_reward(
    reward: ExpertReward, examples: Sequence[ExpertExample], answers: dict[str, list[str]]
) -> float:
    scores = [reward.score(e, answers[e.key][0]).reward for e in examples]
    return float(np.mean(scores)) if scores else 0.0


def sampled_figures(graded: Sequence[Scored], shaping: Shaping) -> dict[str, Any]:
    """Over every sampled answer: the mean of each reward, the share meeting each constraint,
    how many could not be parsed and the mean number of tags validation kept: where a zero
    reward comes from."""
    valid = [g for g in graded if g.error is None]
    gates = [g.rewards.gates(shaping) for g in valid]
    return {
        "answers": len(graded),
        "invalid": len(graded) - len(valid),
        "kept_tags": round(float(np.mean([len(g.tags) for g in valid])), 2) if valid else 0.0,
        "mean": {k: round(float(np.mean([getattr(g.rewards, k) for g in valid])), 4) for k in REWARDS}
        if valid
        else {},
        "gate_pass": {k: round(float(np.mean([g[k] for g in gates])), 4) for k in ("align", "div", "len")}
        if gates
        else {},
    }


def engine_for(llm: dict[str, Any]) -> Engine:
    return Engine(VLLMOfflineBackend(llm), renderer_for(llm), RetryPolicy.from_config(llm.get("retry")))


def run(ctx: StageContext) -> None:
    cfg = ctx.cfg
    method = str(cfg.policy.method)
    if method not in METHODS:
        raise ConfigError(f"policy.method must be one of {METHODS}, not {method!r}")
    # The Experts' prompts and schemas as mining will use them: with `tag.grounding` on, tags
    # name one of the catalog's categories as of dt, and sampled answers that do not score 0.
    settings = AgentSettings.from_config(grounded_agents(cfg, ctx.warehouse, ctx.dt))
    shaping = Shaping.from_config(plain(cfg.policy.reward))
    tuning = T.TuningSettings.from_config(plain(cfg.policy.rft))
    grpo = G.GRPOSettings.from_config(plain(cfg.policy.grpo)) if method == "grpo" else None
    # Before any engine starts: a teacher that is not a model on disk stops the job at once.
    teacher = teacher_llm(tuning.teacher) if grpo is None and tuning.teacher else None
    examples = examples_for(ctx)
    window = guard(examples, ctx.dt, int(cfg.policy.reward.window_days), cfg.policy.get("evaluate_from"))
    reward, reward_model = expert_reward(ctx, settings, shaping)
    key = greedy_key(examples, settings, shaping, reward_model)
    llm = plain(cfg.llm)
    start = S.policy_meta(llm["model_path"]) if llm.get("policy_version") else {}
    known = start.get("reward_after") if start.get("greedy_key") == key else None

    started = time.perf_counter()
    sampled: dict[str, list[str]] = {}
    if known is None or grpo is None:  # GRPO samples as it trains: no engine unless measuring
        engine = engine_for(llm)
        try:
            if known is None:
                known = mean_reward(reward, examples, sample(engine, settings, examples, 1, 0.0))
            if grpo is None:
                sampled = sample(engine, settings, examples, tuning.samples, tuning.temperature)
        finally:
            engine.close()
            del engine
            gc.collect()
    sample_seconds = time.perf_counter() - started
    taught = sample_teacher(teacher, settings, examples, tuning) if teacher else {}

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(llm.get("tokenizer_path") or llm["model_path"]))
    model = AutoModelForCausalLM.from_pretrained(str(llm["model_path"]), dtype="float32")
    if grpo is None:
        trained = tune_rft(model, tokenizer, settings, examples, reward, sampled, tuning, shaping, taught)
    else:
        trained = tune_grpo(model, tokenizer, settings, examples, reward, grpo)
    training_seconds = trained.pop("seconds")
    meta = {
        "base_model": base_model_name(llm),
        "started_from": llm.get("policy_version"),  # null: the base model itself
        "started_from_path": str(llm["model_path"]),  # the weights tuned: the base model's or a policy's
        "method": method,
        "roles": ["expert"],
        "data_hash": trained.pop("data_hash"),
        "settings": {method: trained.pop("settings"), "reward": shaping.as_dict()},
        "trained_for_dt": ctx.dt.iso,
        "reward_window": str(window),
        "trained_through": (window.end).isoformat(),  # the first day evaluation may score
        "training_users": sorted({e.truth.user_id for e in examples}),
        "prompts": len(examples),
        "reward_before": round(known, 4),
        "greedy_key": key,
        **trained,
        "seconds": {
            "sampling": round(sample_seconds, 1),
            **({"teacher_sampling": taught["seconds"]} if taught else {}),
            "training": training_seconds,
        },
        "run_id": ctx.lineage.run_id,
    }
    # Saved in the base model's dtype (bfloat16 for the bundled one): half the bytes, and the
    # frozen embeddings come back bit for bit.
    base_config = json.loads((Path(str(llm["model_path"])) / "config.json").read_text())
    model.to(
        dtype=getattr(torch, str(base_config.get("dtype") or base_config.get("torch_dtype") or "float32"))
    )
    folder = T.save_policy(model, tokenizer, str(cfg.policy.artifacts_dir), meta)
    del model
    gc.collect()

    tuned = {**llm, "model_path": str(folder), "tokenizer_path": str(folder)}
    engine = engine_for(tuned)
    try:
        after = sample(engine, settings, examples, 1, 0.0)
    finally:
        engine.close()
    meta["reward_after"] = round(mean_reward(reward, examples, after), 4)
    (folder / S.META).write_text(json.dumps({**meta, "version": folder.name}, indent=2))
    report(ctx, meta, folder)


def teacher_llm(name: str) -> dict[str, Any]:
    """The `llm` config of the teacher group `name` (conf/llm/<name>.yaml), whose model must be
    on disk."""
    from hydra.errors import HydraException

    try:
        llm = plain(load_config([f"run.stage={STAGE}", f"llm={name}"]).llm)
    except HydraException as err:
        options = sorted(
            p.stem for p in (Path(__file__).resolve().parent.parent / "conf" / "llm").glob("*.yaml")
        )
        raise ConfigError(
            f"policy.rft.teacher={name!r} is not a conf/llm group ({', '.join(options)})"
        ) from err
    require_on_disk(llm, "teacher")
    return llm


def sample_teacher(
    llm: dict[str, Any], settings: AgentSettings, examples: Sequence[ExpertExample], tuning: T.TuningSettings
) -> dict[str, Any]:
    """`tuning.teacher_samples` answers per prompt from the teacher (vLLM, at the tuning
    temperature): the same prompt and schema the policy answers."""
    started = time.perf_counter()
    engine = engine_for(llm)
    try:
        answers = sample(engine, settings, examples, tuning.teacher_samples, tuning.temperature)
    finally:
        engine.close()
        del engine
        gc.collect()
    return {
        "model": str(llm["model_name"]),
        "answers": answers,
        "seconds": round(time.perf_counter() - started, 1),
    }


def tune_rft(
    model: Any,
    tokenizer: Any,
    settings: AgentSettings,
    examples: Sequence[ExpertExample],
    reward: ExpertReward,
    sampled: dict[str, list[str]],
    tuning: T.TuningSettings,
    shaping: Shaping,
    taught: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Reward-filtered fine-tuning on each prompt's best sampled answer: the policy's own, or the
    teacher's (`taught`, from `sample_teacher`) where it earns more."""

    def grade(answers: dict[str, list[str]]) -> dict[str, list[tuple[str, Scored]]]:
        return {e.key: [(a, reward.score(e, a)) for a in answers.get(e.key, [])] for e in examples}

    def rewards(graded: dict[str, list[tuple[str, Scored]]]) -> dict[str, list[tuple[str, float]]]:
        return {k: [(a, g.reward) for a, g in answers] for k, answers in graded.items()}

    def figures(graded: dict[str, list[tuple[str, Scored]]]) -> dict[str, Any]:
        values = [r for s in rewards(graded).values() for _, r in s]
        return {
            "sampled_reward": round(float(np.mean(values)), 4) if values else 0.0,
            "sampled": sampled_figures([g for answers in graded.values() for _, g in answers], shaping),
        }

    graded = grade(sampled)
    teacher_graded = grade((taught or {}).get("answers", {}))
    best, from_teacher = T.best_of_sources(rewards(graded), rewards(teacher_graded), tuning.min_reward)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    by_key = {e.key: e for e in examples}
    pairs = [
        T.training_pair(tokenizer, messages(settings, by_key[k]), a) for k, (a, _) in sorted(best.items())
    ]
    stats = T.fine_tune(model, pairs, tuning, pad)
    return {
        "data_hash": T.data_hash([(k, a) for k, (a, _) in best.items()]),
        "settings": tuning.as_dict(),
        "targets": len(best),
        **figures(graded),
        **(
            {"teacher": {"model": taught["model"], "targets": len(from_teacher), **figures(teacher_graded)}}
            if taught
            else {}
        ),
        "losses": stats["losses"],
        "seconds": stats["seconds"],
    }


def tune_grpo(
    model: Any,
    tokenizer: Any,
    settings: AgentSettings,
    examples: Sequence[ExpertExample],
    reward: ExpertReward,
    grpo: G.GRPOSettings,
) -> dict[str, Any]:
    """GRPO on the Expert prompts, each decoding under its Expert's schema as mining does."""
    prompts = [(e.key, messages(settings, e)) for e in examples]
    by_prompt: dict[str, dict[str, Any]] = {}  # two users with one prompt: the first's schema
    for e, (_, m) in zip(examples, prompts, strict=True):
        by_prompt.setdefault(m[-1]["content"], expert_schema(settings, e).model_json_schema())
    G.schema_constrained(model, tokenizer, by_prompt)
    scorer = G.GroupReward(reward, examples)
    stats = G.train(model, tokenizer, prompts, scorer, grpo)
    return {
        "data_hash": T.data_hash([(k, json.dumps(m)) for k, m in prompts]),
        "settings": grpo.as_dict(),
        "reward_curve": stats["rewards"],
        "reward_std_curve": stats["reward_std"],
        "kl_curve": stats["kl"],
        "sampled": scorer.figures(),
        "losses": stats["losses"],
        "seconds": stats["seconds"],
    }


def report(ctx: StageContext, meta: dict[str, Any], folder: Path) -> None:
    r, method = ctx.report, meta["method"]
    r.rows_in, r.rows_out = meta["prompts"], meta.get("targets", meta["prompts"])
    r.details["policy"] = {"version": folder.name, "path": str(folder), "method": method}
    rewards = f"greedy before {meta['reward_before']:.3f}, after {meta['reward_after']:.3f}"
    r.details["sampled"] = meta["sampled"]
    if method == "rft":
        rewards += (
            f"; sampled mean {meta['sampled_reward']:.3f}; {meta['targets']} of {meta['prompts']} "
            "prompts with a target"
        )
        if "teacher" in meta:
            t = meta["teacher"]
            r.details["teacher"] = (
                f"{t['model']}: sampled mean {t['sampled_reward']:.3f}; "
                f"{t['targets']} targets are its answers"
            )
    else:
        curve = meta["reward_curve"]
        rewards += f"; group mean per step {curve[0]:.3f} -> {curve[-1]:.3f}" if curve else ""
    r.details["rewards"] = rewards
    losses = meta["losses"]
    r.details["training"] = f"{len(losses)} steps in {meta['seconds']['training']}s" + (
        f", loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""
    )


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
