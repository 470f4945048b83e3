"""The tag Expert as a policy: a training example is one planner persona of a user on a training
date; its prompt is exactly the one mining sends that persona's Expert; a completion earns the
reward of the tags that survive mining's own validation (an invalid tag is dropped before the
reward, as mining drops it before recall), so a policy never learns to emit what mining discards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from recgpt.agents.prompts import expert_prompt
from recgpt.agents.schemas import AgentSchemas, Persona, expert_tags, user_cores, within_cores
from recgpt.agents.settings import AgentSettings
from recgpt.agents.validate import ValidationContext, check_tags
from recgpt.context import line_categories
from recgpt.env_signals import SITUATION_FIELDS
from recgpt.policy.rewards import TagSetRewards
from recgpt.policy.scorer import TagRewarder, UserTruth

Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class ExpertExample:
    """One persona of one user on a training date, and what its tags are rewarded against."""

    persona: Persona
    situation: Mapping[str, Any]
    bought_titles: tuple[str, ...]
    truth: UserTruth
    # The categories the user's history's categories line names, most items first: with
    # `tag.history_cores` the Expert's schema lets its tags name only those, as mining's does.
    history_categories: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.truth.user_id}:{self.persona.name}"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ExpertExample:
        """From a row of `udfs.policy_data.training_examples`."""
        persona = Persona(
            str(row["name"]),
            str(row["description"]),
            tuple(row["evidence"] or ()),
            tuple(row["signals"] or ()),
        )
        truth = UserTruth(
            user_id=str(row["user_id"]),
            window_categories=frozenset(row["window_categories"] or ()),
            persona=f"{persona.name}: {persona.description}",
            history=tuple(row["history"] or ()),
            excluded=frozenset(row["excluded"] or ()),
        )
        situation = {c: row[c] for c in SITUATION_FIELDS if row.get(c) is not None}
        categories = line_categories(str(row.get("categories_line") or ""))
        return cls(persona, situation, tuple(row.get("bought_titles") or ()), truth, categories)


def messages(settings: AgentSettings, example: ExpertExample) -> list[dict[str, str]]:
    """The chat messages mining sends this persona's Expert (it reads the persona, not the
    history, unless `expert_history` is set: then training would need the hybrid history)."""
    if settings.expert_history:
        raise ValueError("the experts read the history (agents.expert_history): train them on it first")
    return [dict(m) for m in expert_prompt(settings, "", example.persona, example.situation).messages]


def expert_schema(settings: AgentSettings, example: ExpertExample) -> type[BaseModel]:
    """The schema the Expert answers this example under: the whole list of M tags, naming the
    cores mining's first call lets this user's tags name (its history's, with `tag.history_cores`)."""
    schemas = within_cores(settings, user_cores(settings, example.history_categories))
    assert schemas is not None  # user_cores names some of the run's cores, or all (none: the run's)
    return schemas.expert


@dataclass(frozen=True)
class Scored:
    """A completion's validated tags, its rewards and the reward it is trained on."""

    tags: tuple[str, ...]
    rewards: TagSetRewards
    reward: float
    error: str | None = None  # the completion could not be parsed


class ExpertReward:
    """Completion text -> reward, for one run's validation context and rewarder."""

    def __init__(
        self,
        schemas: AgentSchemas,
        validation: ValidationContext,
        rewarder: TagRewarder,
        embed: Embed | None = None,
    ) -> None:
        self.schemas, self.validation, self.rewarder, self.embed = schemas, validation, rewarder, embed

    def tags(self, example: ExpertExample, completion: str) -> tuple[str, ...]:
        """The completion's tags that pass mining's validation for this user, in order.
        Raises ValidationError (pydantic) when the text is not a valid Expert answer."""
        parsed = self.schemas.expert.model_validate_json(completion)
        proposed = expert_tags(parsed, example.persona.name)
        ctx = self.validation.for_user(example.bought_titles, [example.persona])
        return tuple(t.tag for t in check_tags(proposed, ctx, self.embed).kept)

    def score(self, example: ExpertExample, completion: str) -> Scored:
        try:
            tags = self.tags(example, completion)
        except (ValidationError, ValueError) as exc:
            nothing = TagSetRewards(0.0, 0.0, 0.0, 0.0)
            return Scored((), nothing, 0.0, f"invalid_output: {str(exc).splitlines()[0]}")
        rewards = self.rewarder.rewards(example.truth, tags)
        return Scored(tags, rewards, rewards.total(self.rewarder.shaping))

    def __call__(self, examples: Sequence[ExpertExample], completions: Sequence[str]) -> list[float]:
        """One reward per (example, completion): the shape a GRPO reward function has."""
        return [self.score(e, c).reward for e, c in zip(examples, completions, strict=True)]
