"""The Expert as a policy: its training prompt is the one mining sends, and a completion earns the
reward of the tags mining's validation keeps (unparsable answers and rejected tags earn nothing),
as one reward per (example, completion) for a GRPO trainer."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from pydantic import ValidationError

from recgpt.agents.prompts import expert_prompt
from recgpt.agents.schemas import build_schemas
from recgpt.agents.settings import AgentSettings
from recgpt.agents.validate import ValidationContext
from recgpt.config import load_config, plain
from recgpt.policy.experts import ExpertExample, ExpertReward, expert_schema, messages
from tests.test_policy_scorer import rewarder

SETTINGS = AgentSettings.from_config(plain(load_config([]).pipeline.agents))
# Tags grounded in catalog cores, each user's limited to its history's (mining's defaults).
GROUNDED = replace(
    SETTINGS, tag=replace(SETTINGS.tag, cores=("hiking", "kitchen", "toys"), history_cores=True)
)
ROW = {
    "user_id": "u1",
    "persona_rank": 1,
    "name": "outdoor cook",
    "description": "cooks on camping trips",
    "evidence": ["trail boots"],
    "signals": [],
    "season": "autumn",
    "weather": "rain",
    "festivals": None,
    "trends": ["camping"],
    "history": ["trail boots"],
    "excluded": ["k3"],
    "bought_titles": ["kitchen knife"],
    "window_categories": ["hiking", "kitchen"],
}
EXAMPLE = ExpertExample.from_row(ROW)


def answer(*tags: str) -> str:
    return json.dumps({"tags": [{"tag": t, "reason": "fits", "evidence": "trail boots"} for t in tags]})


def reward() -> ExpertReward:
    validation = ValidationContext.for_run(SETTINGS, ["Northpeak"])
    return ExpertReward(build_schemas(SETTINGS), validation, rewarder())


def test_the_training_prompt_is_the_one_mining_sends():
    sent = expert_prompt(
        SETTINGS, "", EXAMPLE.persona, {"season": "autumn", "weather": "rain", "trends": ["camping"]}
    )
    assert messages(SETTINGS, EXAMPLE) == [dict(m) for m in sent.messages]
    assert "outdoor cook" in messages(SETTINGS, EXAMPLE)[-1]["content"]
    assert EXAMPLE.truth.window_categories == {"hiking", "kitchen"} and EXAMPLE.key == "u1:outdoor cook"


def test_a_valid_answer_earns_the_reward_of_its_kept_tags():
    r = reward()
    scored = r.score(EXAMPLE, answer("trail gear", "kitchen set"))
    assert scored.tags == ("trail gear", "kitchen set") and scored.error is None
    assert scored.reward == 1.0 == scored.rewards.acc


def test_tags_mining_would_reject_earn_nothing():
    r = reward()
    # A brand, and the persona's own name restated: dropped before the reward, as mining drops them.
    scored = r.score(EXAMPLE, answer("northpeak trail gear", "outdoor cook", "kitchen set"))
    assert scored.tags == ("kitchen set",)
    assert scored.rewards.acc == 0.5 and scored.reward == 0.0  # one tag: no diversity, gate shut


@pytest.mark.parametrize(
    "completion",
    ["not json", answer("Trail Gear!"), json.dumps({"tags": []}), answer("one two three four five six")],
)
def test_an_answer_the_schema_refuses_earns_zero_and_says_why(completion):
    scored = reward().score(EXAMPLE, completion)
    assert scored.reward == 0.0 and scored.tags == () and scored.error.startswith("invalid_output")


def test_rewards_come_one_per_completion():
    r = reward()
    got = r(
        [EXAMPLE, EXAMPLE, EXAMPLE],
        [answer("trail gear", "kitchen set"), "{}", answer("trail gear", "trail pack")],
    )
    assert got == [1.0, 0.0, 0.5]


def test_sampled_answers_carry_no_seed_of_their_own():
    """vLLM's CPU build stops its engine when a seeded request is prefilled over several steps:
    train_policy's sampled answers rely on the engine's seed instead."""
    from jobs.train_policy import sample
    from recgpt.llm.request import Result

    sent = []

    class Recording:
        def generate(self, requests):
            sent.extend(requests)
            return [
                Result(r.key, None, answer("hiking boots"), None, None, 9, None, 9, 1.0, "stop", 1)
                for r in requests
            ]

    out = sample(Recording(), SETTINGS, [EXAMPLE], 3, 0.8)
    assert out == {EXAMPLE.key: [answer("hiking boots")] * 3}
    assert [r.sampling.temperature for r in sent] == [0.8] * 3
    assert all(r.sampling.seed is None for r in sent)


def test_the_schema_names_the_cores_mining_would_let_the_user_name():
    row = {**ROW, "categories_line": "categories: kitchen 3, garden 2, toys 1"}
    example = ExpertExample.from_row(row)
    assert example.history_categories == ("kitchen", "garden", "toys")
    schema = expert_schema(GROUNDED, example)
    schema.model_validate_json(answer("toys", "kitchen set"))
    with pytest.raises(ValidationError):  # the catalog's, but not in this user's history
        schema.model_validate_json(answer("hiking boots"))
    # No categories line: any of the catalog's cores, as mining grounds a user without one.
    bare = ExpertExample.from_row(ROW)
    assert bare.history_categories == ()
    expert_schema(GROUNDED, bare).model_validate_json(answer("hiking boots"))
    # Without history_cores every user answers under the run's own schema.
    anywhere = replace(GROUNDED, tag=replace(GROUNDED.tag, history_cores=False))
    assert expert_schema(anywhere, example) is build_schemas(anywhere).expert


def test_each_sampled_prompt_carries_its_own_users_schema():
    from jobs.train_policy import sample

    sent = []

    class Recording:
        def generate(self, requests):
            sent.extend(requests)
            return []

    toys = ExpertExample.from_row({**ROW, "user_id": "u2", "categories_line": "categories: toys 4"})
    kitchen = ExpertExample.from_row({**ROW, "categories_line": "categories: kitchen 2"})
    sample(Recording(), GROUNDED, [toys, kitchen], 2, 0.8)
    schemas = {r.key: r.schema for r in sent}
    assert schemas["u2:outdoor cook#0"] is schemas["u2:outdoor cook#1"] is expert_schema(GROUNDED, toys)
    schemas["u1:outdoor cook#0"].model_validate_json(answer("kitchen set"))
    with pytest.raises(ValidationError):
        schemas["u1:outdoor cook#0"].model_validate_json(answer("toys"))
