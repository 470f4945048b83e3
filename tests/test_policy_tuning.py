"""Reward-filtered fine-tuning: each prompt's best sampled completion becomes a target (ties to
the first sampled, too-poor ones dropped), the loss covers the answer's tokens only, a few steps
on the real bundled model lower it with the input embeddings untouched, and the tuned folder
loads as an ordinary model."""

from __future__ import annotations

import json

import pytest
import torch

from recgpt.config import load_config, plain
from recgpt.errors import ConfigError, RecGPTError
from recgpt.policy import serving as S
from recgpt.policy import tuning as T
from tests.llm_support import llm_config

SETTINGS = T.TuningSettings(
    samples=4,
    temperature=0.8,
    min_reward=0.1,
    steps=6,
    batch_size=2,
    learning_rate=1e-4,
    weight_decay=0.0,
    seed=0,
)
MESSAGES = [
    {"role": "system", "content": "Answer in JSON."},
    {"role": "user", "content": "Tags for a hiker?"},
]
ANSWERS = ['{"tags":[{"tag":"trail boots"}]}', '{"tags":[{"tag":"camping tent"}]}']


def test_each_prompt_keeps_its_best_completion_if_it_earns_enough():
    sampled = {
        "u1:a": [("x", 0.2), ("y", 0.5), ("z", 0.5)],  # a tie: the one sampled first
        "u1:b": [("x", 0.05), ("y", 0.0)],  # best below min_reward: nothing to learn
        "u2:a": [],
    }
    assert T.best_completions(sampled, 0.1) == {"u1:a": ("y", 0.5)}
    assert T.best_completions(sampled, 0.0) == {"u1:a": ("y", 0.5), "u1:b": ("x", 0.05)}


def test_a_teachers_answer_is_the_target_only_where_it_earns_more():
    own = {
        "u1:a": [("x", 0.2), ("y", 0.5)],  # the teacher only ties: the policy's own answer
        "u1:b": [("x", 0.4)],  # the teacher earns more: its answer
        "u2:a": [("x", 0.0)],  # neither earns min_reward
        "u3:a": [],  # every answer of the policy failed
    }
    teacher = {"u1:a": [("t", 0.5)], "u1:b": [("t", 0.9)], "u2:a": [("t", 0.05)], "u3:a": [("t", 0.3)]}
    best, from_teacher = T.best_of_sources(own, teacher, 0.1)
    assert best == {"u1:a": ("y", 0.5), "u1:b": ("t", 0.9), "u3:a": ("t", 0.3)}
    assert from_teacher == {"u1:b", "u3:a"}
    assert T.best_of_sources(own, {}, 0.1) == (T.best_completions(own, 0.1), set())


def test_settings_come_from_the_config_and_are_checked():
    cfg = plain(load_config([]).policy.rft)
    assert T.TuningSettings.from_config(cfg).freeze_embeddings is True
    assert T.TuningSettings.from_config(cfg).teacher is None
    with pytest.raises(ConfigError, match="at least 1"):
        T.TuningSettings.from_config({**cfg, "steps": 0})
    with pytest.raises(ConfigError, match="teacher_samples"):
        T.TuningSettings.from_config({**cfg, "teacher": "qwen25_coder_1p5b_cpu", "teacher_samples": 0})


def test_a_teacher_is_an_llm_group_whose_model_is_on_disk(monkeypatch, tmp_path):
    from jobs.train_policy import teacher_llm

    with pytest.raises(ConfigError, match=r"'no_such_model' is not a conf/llm group .*smollm2_cpu"):
        teacher_llm("no_such_model")
    monkeypatch.setenv("RECGPT_MODEL_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match=r"Qwen2\.5-Coder-1\.5B-Instruct is not on disk.*make models-large"):
        teacher_llm("qwen25_coder_1p5b_cpu")


@pytest.fixture(scope="module")
def base():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = llm_config()["model_path"]
    return AutoTokenizer.from_pretrained(path), lambda: AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32
    )


def test_the_loss_covers_the_answer_only(base):
    tokenizer, _ = base
    ids, labels = T.training_pair(tokenizer, MESSAGES, ANSWERS[0])
    assert len(ids) == len(labels)
    answer = [t for t in labels if t != T.IGNORE]
    assert answer == ids[len(ids) - len(answer) :]  # the tail, nothing of the prompt
    assert tokenizer.decode(answer) == ANSWERS[0] + tokenizer.eos_token
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(ids[: len(ids) - len(answer)]) == prompt


def test_a_few_steps_lower_the_answer_loss_and_leave_the_embeddings(base, tmp_path):
    tokenizer, fresh = base
    model = fresh()
    before_embeddings = model.get_input_embeddings().weight.detach().clone()
    before_layer = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    pairs = [T.training_pair(tokenizer, MESSAGES, a) for a in ANSWERS]
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    loss_before = T.answer_loss(model, pairs, pad)
    stats = T.fine_tune(model, pairs, SETTINGS, pad)
    assert len(stats["losses"]) == SETTINGS.steps
    assert T.answer_loss(model, pairs, pad) < 0.8 * loss_before
    assert torch.equal(model.get_input_embeddings().weight, before_embeddings)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, before_layer)

    meta = {"base_model": "smollm2", "method": "rft", "data_hash": "h", "settings": SETTINGS.as_dict()}
    folder = T.save_policy(model, tokenizer, tmp_path, meta)
    assert (
        json.loads((folder / S.META).read_text())["version"]
        == folder.name
        == S.policy_meta(folder)["version"]
    )
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    assert T.answer_loss(again, pairs, pad) == pytest.approx(T.answer_loss(model, pairs, pad), rel=1e-4)
    assert T.save_policy(model, tokenizer, tmp_path, dict(meta)) == folder  # same inputs, same version


def test_nothing_to_train_on_says_why(base):
    with pytest.raises(RecGPTError, match="min_reward"):
        T.fine_tune(None, [], SETTINGS, 0)
    with pytest.raises(ConfigError, match="train_policy"):
        S.policy_meta("/nonexistent")
