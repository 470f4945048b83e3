"""GRPO's pieces that need no training run: the reward function TRL calls (each completion scored
against the example its `key` names, its causes counted), the settings' bounds, and decoding
under the Expert's schema with the bundled model (what GRPO samples is what mining would parse)."""

from __future__ import annotations

import pytest

from recgpt.errors import ConfigError
from recgpt.policy import grpo as G
from recgpt.policy.experts import ExpertExample, expert_schema, messages
from tests.llm_support import llm_config
from tests.test_policy_experts import EXAMPLE, GROUNDED, ROW, answer, reward

OTHER = ExpertExample.from_row({**ROW, "user_id": "u2", "window_categories": ["toys"]})


def test_each_completion_is_scored_against_the_example_its_key_names():
    r = reward()
    fn = G.GroupReward(r, [EXAMPLE, OTHER])
    good = answer("trail gear", "kitchen set")
    completions = [[{"role": "assistant", "content": good}], [{"role": "assistant", "content": good}], "{"]
    got = fn(completions=completions, key=[EXAMPLE.key, OTHER.key, EXAMPLE.key], trainer_state=None)
    assert got == [r.score(EXAMPLE, good).reward, r.score(OTHER, good).reward, 0.0]
    assert got[0] > 0.0 and got[1] == 0.0  # the same tags recall u1's window, not u2's
    assert fn.figures() == {"answers": 3, "invalid": 1, "kept_tags": 2.0}
    assert fn.__name__ == "expert_reward"


def test_grpo_settings_refuse_a_group_that_compares_nothing():
    base = {
        "group_size": 4,
        "prompts_per_step": 2,
        "steps": 3,
        "beta": 0.04,
        "learning_rate": 1e-5,
        "temperature": 0.8,
        "max_completion_tokens": 64,
    }
    assert G.GRPOSettings.from_config(base).as_dict()["group_size"] == 4
    with pytest.raises(ConfigError, match="group_size must be at least 2"):
        G.GRPOSettings.from_config({**base, "group_size": 1})
    with pytest.raises(ConfigError, match="must be > 0"):
        G.GRPOSettings.from_config({**base, "steps": 0})


def test_sampling_under_the_schema_gives_each_prompt_answers_its_own_schema_parses():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = llm_config()["model_path"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    # Two users of one persona text but other histories: the second's prompt differs by its region's
    # situation, and its tags may name only its own history's category.
    toys = ExpertExample.from_row(
        {**ROW, "user_id": "u2", "season": "winter", "categories_line": "categories: toys 4"}
    )
    kitchen = ExpertExample.from_row({**ROW, "categories_line": "categories: kitchen 2"})
    chats = [messages(GROUNDED, e) for e in (toys, kitchen)]
    schemas = [expert_schema(GROUNDED, e) for e in (toys, kitchen)]
    G.schema_constrained(
        model,
        tokenizer,
        {c[-1]["content"]: s.model_json_schema() for c, s in zip(chats, schemas, strict=True)},
    )
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(**inputs, do_sample=True, temperature=0.8, max_new_tokens=344, pad_token_id=0)
    for row, schema, core in zip(
        out[:, inputs["input_ids"].shape[1] :], schemas, ("toys", "kitchen"), strict=True
    ):
        text = tokenizer.decode(row, skip_special_tokens=True)
        parsed = schema.model_validate_json(text)  # raises if the grammar let anything else through
        assert all(t.tag.startswith(core) for t in parsed.tags)
    # A prompt no schema was given for is refused, not decoded unconstrained.
    summer = ExpertExample.from_row({**ROW, "season": "summer"})
    other = tokenizer.apply_chat_template(
        messages(GROUNDED, summer), tokenize=False, add_generation_prompt=True
    )
    with pytest.raises(ValueError, match="no Expert schema"):
        model.generate(**tokenizer([other], return_tensors="pt", add_special_tokens=False), max_new_tokens=2)
