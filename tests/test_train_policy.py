"""train_policy on the nightly chain's warehouse with the real bundled model: with a reward model
in the warehouse, the Experts are sampled, rewarded, tuned and saved as a
versioned artifact that the engine serves (the greedy rewards after tuning come from it). A
training window reaching into the evaluation window is refused before any engine starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from jobs import train_policy
from jobs.stage import execute, open_context
from recgpt.config import load_config, plain
from recgpt.errors import RecGPTError
from recgpt.judge import reward as R
from recgpt.policy import tuning as T
from recgpt.rundate import RunDate
from tests.dag_support import DT, failure_report
from tests.llm_support import EAGER, llm_config
from tests.test_reward import SETTINGS, agreement_set
from udfs.embeddings import embedder_for

QUICK = (
    "policy.rft.samples=2",
    "policy.rft.steps=2",
    "policy.rft.batch_size=2",
    "policy.rft.min_reward=0.0",  # every prompt gets a target: the tiny world's rewards are mostly 0
    "policy.data.sample_users=3",
    EAGER,
)


def reward_artifact(cfg) -> None:
    """A reward model on the real encoder from the hand-made graded lists of the reward tests
    (the tiny chain's judge grades two users, too few pairs to train on)."""
    embedding = plain(cfg.embedding)
    embedder = embedder_for(embedding)
    examples = agreement_set()
    fit = R.train_reward(examples, SETTINGS, embedder.encode)
    encoder = {"name": embedder.name, "config": embedding}
    R.save(fit, str(cfg.reward.artifacts_dir), R.artifact_meta(examples, fit, encoder, SETTINGS, DT, "test"))


def embed_tokens(folder: str):
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if name.endswith("embed_tokens.weight"):
                    return f.get_tensor(name).float()
    raise AssertionError(f"no embed_tokens in {folder}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_policy_tunes_the_experts_into_an_artifact_the_engine_serves(nightly_run, spark, tmp_path):
    assert nightly_run.proc.returncode == 0, failure_report(nightly_run.proc)
    wh = tmp_path / "wh"
    shutil.copytree(nightly_run.warehouse, wh)

    def ctx(stage: str, *extra: str):
        cfg = load_config([f"storage.warehouse={wh}", f"run.dt={DT}", *QUICK, *extra])
        return open_context(cfg, stage, spark)

    reward_artifact(ctx("train_policy").cfg)
    too_soon = RunDate.parse(DT).plus(3).iso
    with pytest.raises(RecGPTError, match=f"evaluation window.*by {RunDate.parse(DT).plus(2).iso}"):
        train_policy.run(ctx("train_policy", f"policy.evaluate_from={too_soon}"))

    evaluate_from = RunDate.parse(DT).plus(7).iso
    report = execute(ctx("train_policy", f"policy.evaluate_from={evaluate_from}"), train_policy.run)
    folder = report.details["policy"]["path"]
    meta = T.policy_meta(folder)
    assert meta["version"] == report.details["policy"]["version"] and meta["method"] == "rft"
    assert meta["trained_through"] == evaluate_from and meta["trained_for_dt"] == DT
    assert 1 <= len(meta["training_users"]) <= 3 and meta["targets"] == meta["prompts"] == report.rows_in
    assert len(meta["losses"]) == 2
    for key in ("reward_before", "reward_after", "sampled_reward"):
        assert 0.0 <= meta[key] <= 1.0, (key, meta[key])
    # The input embeddings are the base model's: the hybrid adaptor stays valid.
    assert (embed_tokens(folder) == embed_tokens(llm_config()["model_path"])).all()
    assert json.loads((Path(folder) / "config.json").read_text())["model_type"] == "llama"
