"""Reward-filtered fine-tuning of the tag Expert: of the completions sampled per training prompt,
the best by the shaped reward (if it earns at least `min_reward`) becomes a supervised target,
and the model is fine-tuned on those targets with the loss on the completion's tokens only.

Full fine-tuning, not LoRA: the bundled model has 135M weights (a step on CPU takes seconds), and
the tuned weights are then an ordinary model folder that vLLM serves like the base one, with no
adapter support needed from the CPU build. The input embeddings (tied to the output layer in
SmolLM2) stay frozen: the hybrid adaptor maps items into that embedding space, so it stays valid
for the tuned model without retraining.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from recgpt.errors import ConfigError, RecGPTError
from recgpt.policy.serving import META

IGNORE = -100  # labels the loss skips: the prompt's tokens and padding


@dataclass(frozen=True)
class TuningSettings:
    """The `policy.rft` settings."""

    samples: int  # completions sampled per training prompt
    temperature: float
    min_reward: float  # a prompt whose best completion earns less teaches nothing
    steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    seed: int
    freeze_embeddings: bool = True
    teacher: str | None = None  # a conf/llm group whose answers join the policy's own
    teacher_samples: int = 4

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TuningSettings:
        settings = cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})
        if settings.samples < 1 or settings.steps < 1 or settings.batch_size < 1:
            raise ConfigError("policy.rft: samples, steps and batch_size must be at least 1")
        if settings.teacher and settings.teacher_samples < 1:
            raise ConfigError("policy.rft.teacher_samples must be at least 1 when a teacher is set")
        return settings

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def best_completions(
    sampled: Mapping[str, Sequence[tuple[str, float]]], min_reward: float
) -> dict[str, tuple[str, float]]:
    """Per prompt key, its best (completion, reward); ties go to the completion sampled first,
    and a prompt whose best earns less than `min_reward` is left out."""
    best: dict[str, tuple[str, float]] = {}
    for key, candidates in sampled.items():
        if not candidates:
            continue
        top = max(range(len(candidates)), key=lambda i: (candidates[i][1], -i))
        if candidates[top][1] >= min_reward:
            best[key] = candidates[top]
    return best


def best_of_sources(
    own: Mapping[str, Sequence[tuple[str, float]]],
    teacher: Mapping[str, Sequence[tuple[str, float]]],
    min_reward: float,
) -> tuple[dict[str, tuple[str, float]], set[str]]:
    """`best_completions` over the policy's own answers and a teacher's for the same prompts, and
    the keys whose target is the teacher's. On a tie the policy's own answer wins: the teacher
    is only taken when it earns strictly more."""
    joined = {key: [*own.get(key, ()), *teacher.get(key, ())] for key in {*own, *teacher}}
    best = best_completions(joined, min_reward)
    from_teacher = {
        key for key, (_, r) in best.items() if r > max((x for _, x in own.get(key, ())), default=-1.0)
    }
    return best, from_teacher


def training_pair(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], completion: str
) -> tuple[list[int], list[int]]:
    """Token ids of the chat-templated prompt followed by the completion and end of turn, and
    labels that are IGNORE over the prompt (the loss is on the answer only)."""
    prompt = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    answer_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        answer_ids.append(int(tokenizer.eos_token_id))
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def _batch(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (tokens, targets) in enumerate(pairs):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        labels[row, : len(targets)] = torch.tensor(targets)
        mask[row, : len(tokens)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def answer_loss(model: Any, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> float:
    """Mean loss per answer token over `pairs` (no gradient): the before/after figure."""
    model.eval()
    with torch.no_grad():
        total, tokens = 0.0, 0
        for pair in pairs:
            batch = _batch([pair], pad_id)
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            total += float(model(**batch).loss) * n
            tokens += n
    return total / max(tokens, 1)


def fine_tune(
    model: Any, pairs: Sequence[tuple[list[int], list[int]]], settings: TuningSettings, pad_id: int
) -> dict[str, Any]:
    """`settings.steps` AdamW steps on batches of `pairs` in a seeded order (cycling), the input
    embeddings frozen when configured. Returns the per-step losses and the seconds taken."""
    if not pairs:
        raise RecGPTError("no training pairs: no prompt's best completion reached policy.rft.min_reward")
    torch.manual_seed(settings.seed)
    order = random.Random(settings.seed)
    embeddings = model.get_input_embeddings().weight
    embeddings.requires_grad_(not settings.freeze_embeddings)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    model.train()
    queue: list[int] = []
    losses: list[float] = []
    started = time.perf_counter()
    for _ in range(settings.steps):
        picked: list[tuple[list[int], list[int]]] = []
        while len(picked) < min(settings.batch_size, len(pairs)):
            if not queue:
                queue = list(range(len(pairs)))
                order.shuffle(queue)
            picked.append(pairs[queue.pop()])
        loss = model(**_batch(picked, pad_id)).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(round(float(loss.detach()), 5))
    model.eval()
    return {"losses": losses, "seconds": round(time.perf_counter() - started, 2)}


def data_hash(rows: Sequence[tuple[str, str]]) -> str:
    """A hash of the (prompt key, completion) targets, in any order."""
    text = "\n".join(f"{k}\t{c}" for k, c in sorted(rows))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def version_of(meta: Mapping[str, Any]) -> str:
    key = {k: meta[k] for k in ("base_model", "method", "data_hash", "settings")}
    if meta.get("started_from"):  # tuned further from an earlier policy
        key["started_from"] = meta["started_from"]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def save_policy(model: Any, tokenizer: Any, root: str | Path, meta: Mapping[str, Any]) -> Path:
    """root/<version>/: the tuned weights and tokenizer in the Hugging Face layout vLLM loads,
    and policy.json (what it was trained from, on which users and dates, the rewards)."""
    version = version_of(meta)
    folder = Path(root) / version
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    (folder / META).write_text(json.dumps({**meta, "version": version}, indent=2, default=str))
    return folder
