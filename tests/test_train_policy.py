"""train_policy on the nightly chain's warehouse with the real bundled model: with a reward model
in the warehouse, the Experts are sampled, rewarded, tuned and saved as a
versioned artifact that the engine serves (the greedy rewards after tuning come from it). A
training window reaching into the evaluation window is refused before any engine starts; the
tuned policy mines through `llm.policy` (its calls answered by the scripted engine), and every row
it writes names it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from deltalake import DeltaTable
from safetensors import safe_open

from jobs import mine_intents, train_policy
from jobs.stage import execute, open_context
from recgpt.config import load_config, plain
from recgpt.errors import ConfigError, RecGPTError
from recgpt.judge import reward as R
from recgpt.policy import serving as S
from recgpt.rundate import RunDate
from tests.dag_support import DT, TINY, failure_report, scripted
from tests.llm_support import TEST_ENGINE, llm_config
from tests.test_reward import SETTINGS, agreement_set
from udfs.embeddings import embedder_for

QUICK = (
    "policy.rft.samples=2",
    "policy.rft.steps=2",
    "policy.rft.batch_size=2",
    "policy.rft.min_reward=0.0",  # every prompt gets a target: the tiny world's rewards are mostly 0
    "policy.data.sample_users=2",
    *TEST_ENGINE,
)
GRPO_QUICK = (
    "policy.grpo.steps=1",  # a step of TRL's trainer (generation under the schema, update) is ~50 s here
    "policy.grpo.group_size=2",
    "policy.grpo.prompts_per_step=1",
    "policy.grpo.max_completion_tokens=32",  # cut off answers earn 0: only the control flow is under test
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
def test_train_policy_tunes_the_experts_into_an_artifact_the_engine_serves(
    nightly_run, spark, tmp_path, scripted_llm
):
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
    meta = S.policy_meta(folder)
    assert meta["version"] == report.details["policy"]["version"] and meta["method"] == "rft"
    assert meta["trained_through"] == evaluate_from and meta["trained_for_dt"] == DT
    assert 1 <= len(meta["training_users"]) <= 2 and meta["targets"] == meta["prompts"] == report.rows_in
    assert len(meta["losses"]) == 2
    for key in ("reward_before", "reward_after", "sampled_reward"):
        assert 0.0 <= meta[key] <= 1.0, (key, meta[key])
    # The input embeddings are the base model's: the hybrid adaptor stays valid.
    assert (embed_tokens(folder) == embed_tokens(llm_config()["model_path"])).all()
    assert json.loads((Path(folder) / "config.json").read_text())["model_type"] == "llama"

    # GRPO on top of it (TRL's trainer, answers decoded under the Expert schema): one step.
    grpo = execute(
        ctx(
            "train_policy",
            f"policy.evaluate_from={evaluate_from}",
            f"llm.policy={meta['version']}",
            "policy.method=grpo",
            *GRPO_QUICK,
        ),
        train_policy.run,
    )
    tuned = S.policy_meta(grpo.details["policy"]["path"])
    assert tuned["method"] == "grpo" and tuned["started_from"] == meta["version"]
    assert tuned["base_model"] == meta["base_model"] and tuned["version"] != meta["version"]
    # Same prompts, truth and reward: it starts from the figure its starting policy measured.
    assert tuned["greedy_key"] == meta["greedy_key"] and tuned["reward_before"] == meta["reward_after"]
    assert len(tuned["reward_curve"]) == len(tuned["kl_curve"]) == 1
    for r in (*tuned["reward_curve"], tuned["reward_before"], tuned["reward_after"]):
        assert 0.0 <= r <= 1.0
    assert tuned["sampled"]["answers"] == 1 * 1 * 2  # steps x prompts per step x group size
    assert (embed_tokens(grpo.details["policy"]["path"]) == embed_tokens(llm_config()["model_path"])).all()

    # Served: the date it was trained on is refused (its evaluation would score rewarded days)...
    mine_args = (*TINY, f"llm.policy={meta['version']}")
    with pytest.raises(ConfigError, match=f"from {evaluate_from} on may use it, not {DT}"):
        ctx("mine_intents", *mine_args)
    # ...so a copy marked as trained through DT stands in for a policy trained on earlier dates.
    earlier = Path(folder).parent / "through-dt"
    shutil.copytree(folder, earlier)
    (earlier / S.META).write_text(json.dumps({**meta, "version": earlier.name, "trained_through": DT}))
    users = wh / "users.txt"
    users.write_text("\n".join(sorted(set(DeltaTable(str(wh / "user_intent_tags")).to_pandas().user_id))[:2]))
    # The engine serving a tuned folder is proven above (the greedy rewards after tuning); here the
    # calls go to the scripted engine: what is under test is which model the rows name.
    served = ctx(
        "mine_intents",
        *TINY,
        f"llm.policy={earlier.name}",
        f"mine.users_file={users}",
        *scripted(scripted_llm.url),
    )
    execute(served, mine_intents.run)
    name = f"{llm_config()['model_name']}+policy-{earlier.name}"
    assert served.cfg.llm.model_path == str(earlier)
    run_id = served.lineage.run_id
    mined = {}
    for t in ("user_intent_tags", "mining_failures", "llm_calls"):
        rows = DeltaTable(str(wh / t)).to_pandas()
        mined[t] = rows[rows.run_id == run_id]
    assert len(mined["user_intent_tags"]) + len(mined["mining_failures"]) > 0
    assert len(mined["llm_calls"]) > 0
    for table, rows in mined.items():
        assert set(rows.model) <= {name}, (table, set(rows.model))
