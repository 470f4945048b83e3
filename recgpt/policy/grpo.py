"""GRPO for the tag Expert with TRL's `GRPOTrainer`: per training prompt a group of answers is
sampled from the current policy, each earns the shaped reward of the tags mining's validation
keeps (`ExpertReward`, CRS or SUM), and the policy moves towards the answers above their group's
mean, held near the starting model by a KL penalty (β).

On CPU TRL generates with transformers (its vLLM weight sync needs CUDA). Mining decodes the
Expert's answer under its JSON schema; so does training here, through xgrammar's logits processor
for transformers (the grammar backend vLLM uses): the policy is rewarded for the tags of answers
shaped as mining would receive them, not for getting the JSON right by chance. As in
reward-filtered tuning, the input embeddings (tied to the output layer in SmolLM2) stay frozen,
so the hybrid adaptor stays valid.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from recgpt.errors import ConfigError
from recgpt.policy.experts import ExpertExample, ExpertReward


@dataclass(frozen=True)
class GRPOSettings:
    """The `policy.grpo` settings."""

    group_size: int  # answers sampled per prompt (TRL's num_generations)
    prompts_per_step: int
    steps: int
    beta: float  # KL penalty towards the starting model (0: no reference model is loaded)
    learning_rate: float
    temperature: float
    max_completion_tokens: int
    seed: int = 0
    freeze_embeddings: bool = True
    use_cpu: bool = True  # false on a GPU machine, with bf16
    bf16: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> GRPOSettings:
        settings = cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})
        if settings.group_size < 2:
            raise ConfigError("policy.grpo.group_size must be at least 2: the advantage compares a group")
        if settings.steps < 1 or settings.prompts_per_step < 1 or settings.max_completion_tokens < 1:
            raise ConfigError("policy.grpo: steps, prompts_per_step and max_completion_tokens must be > 0")
        return settings

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


RewardFn = Callable[..., list[float | None]]


class GroupReward:
    """TRL's reward-function shape: one float per completion; the dataset's `key` column names
    the example each completion answers. Counts what it scored (answers, unparsable ones, tags
    validation kept), so a run's zero rewards can be traced to their cause."""

    __name__ = "expert_reward"  # the name TRL logs the reward under

    def __init__(self, reward: ExpertReward, examples: Sequence[ExpertExample]) -> None:
        self.reward, self.by_key = reward, {e.key: e for e in examples}
        self.answers = self.invalid = self.kept_tags = 0

    def __call__(self, completions: Sequence[Any], key: Sequence[str], **_: Any) -> list[float | None]:
        texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
        scored = [self.reward.score(self.by_key[k], t) for k, t in zip(key, texts, strict=True)]
        self.answers += len(scored)
        self.invalid += sum(s.error is not None for s in scored)
        self.kept_tags += sum(len(s.tags) for s in scored)
        return [s.reward for s in scored]

    def figures(self) -> dict[str, Any]:
        valid = self.answers - self.invalid
        return {
            "answers": self.answers,
            "invalid": self.invalid,
            "kept_tags": round(self.kept_tags / valid, 2) if valid else 0.0,
        }


def schema_constrained(model: Any, tokenizer: Any, schemas: Mapping[str, Mapping[str, Any]]) -> None:
    """Make `model.generate` decode each prompt under its JSON schema (compact, as mining's
    engine does). `schemas`: by the text of a prompt's last message, which the rendered prompt
    holds verbatim (two prompts of the same text decode under the first's schema); a fresh
    xgrammar processor per call, since one holds the state of one batch, with one grammar per
    row. A prompt none of `schemas` matches is an error: it would decode unconstrained."""
    import xgrammar as xgr
    from transformers import LogitsProcessorList
    from xgrammar.contrib.hf import LogitsProcessor

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=int(model.config.vocab_size))
    compiler = xgr.GrammarCompiler(info)
    compiled: dict[str, Any] = {}  # by the schema's JSON: prompts share few distinct schemas
    grammars = []
    for text, schema in schemas.items():
        spec = json.dumps(dict(schema), sort_keys=True)
        if spec not in compiled:
            compiled[spec] = compiler.compile_json_schema(spec, any_whitespace=False)
        grammars.append((text, compiled[spec]))
    generate = model.generate

    def grammar_of(row: Any) -> Any:
        prompt = tokenizer.decode(row, skip_special_tokens=False)
        for text, grammar in grammars:
            if text in prompt:
                return grammar
        raise ValueError(f"no Expert schema for the prompt ending {prompt[-120:]!r}")

    def constrained(*args: Any, **kwargs: Any) -> Any:
        rows = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        processors.append(LogitsProcessor([grammar_of(row) for row in rows]))
        return generate(*args, logits_processor=processors, **kwargs)

    model.generate = constrained


def train(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[tuple[str, list[dict[str, str]]]],
    reward_fn: GroupReward,
    settings: GRPOSettings,
) -> dict[str, Any]:
    """`settings.steps` GRPO steps on the (key, chat messages) prompts. Returns the per-step mean
    reward, its spread within groups, KL and loss as TRL logged them, and the seconds taken."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model.get_input_embeddings().weight.requires_grad_(not settings.freeze_embeddings)
    data = Dataset.from_list([{"prompt": m, "key": k} for k, m in prompts])
    with tempfile.TemporaryDirectory(prefix="grpo-") as scratch:
        args = GRPOConfig(
            output_dir=scratch,
            use_cpu=settings.use_cpu,
            bf16=settings.bf16,
            num_generations=settings.group_size,
            per_device_train_batch_size=settings.group_size * settings.prompts_per_step,
            gradient_accumulation_steps=1,
            max_steps=settings.steps,
            learning_rate=settings.learning_rate,
            beta=settings.beta,
            temperature=settings.temperature,
            max_completion_length=settings.max_completion_tokens,
            seed=settings.seed,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward_fn, args=args, train_dataset=data, processing_class=tokenizer
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    logged = [h for h in trainer.state.log_history if "reward" in h]
    model.eval()

    def curve(name: str) -> list[float]:
        return [round(float(h.get(name, 0.0)), 5) for h in logged]

    return {
        "rewards": curve("reward"),
        "reward_std": curve("reward_std"),
        "kl": curve("kl"),
        "losses": curve("loss"),
        "seconds": round(seconds, 2),
    }
