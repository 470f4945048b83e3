"""`llm.policy`: which artifact it names, the served model's name, and the dates it is refused on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recgpt.errors import ConfigError
from recgpt.policy import serving as S
from recgpt.policy.serving import META
from recgpt.rundate import RunDate

LLM = {"model_name": "Base-135M", "model_path": "/models/base", "policy": None}


def artifact(root: Path, version: str, base: str = "Base-135M", through: str = "2025-11-04", age: int = 0):
    folder = root / version
    folder.mkdir(parents=True)
    meta = {"version": version, "base_model": base, "trained_through": through}
    (folder / META).write_text(json.dumps(meta))
    stamp = 1_700_000_000 + age
    os.utime(folder / META, (stamp, stamp))
    return folder


def test_no_policy_leaves_the_llm_as_configured(tmp_path):
    assert S.with_policy(LLM, tmp_path, RunDate.parse("2025-11-04")) == LLM


def test_a_policy_is_served_under_its_own_name_with_the_base_named_for_the_adaptor(tmp_path):
    folder = artifact(tmp_path, "abc123")
    out = S.with_policy({**LLM, "policy": "abc123"}, tmp_path, RunDate.parse("2025-11-04"))
    assert out["model_path"] == out["tokenizer_path"] == str(folder)
    assert out["model_name"] == "Base-135M+policy-abc123"
    assert S.base_model_name(out) == "Base-135M" and S.base_model_name(LLM) == "Base-135M"
    # Applied again (each stage of the chain prepares the config), it only re-checks the date.
    assert S.with_policy(out, tmp_path, RunDate.parse("2025-11-05")) == out
    with pytest.raises(ConfigError, match="not 2025-11-03"):
        S.with_policy(out, tmp_path, RunDate.parse("2025-11-03"))


def test_a_date_before_trained_through_is_refused(tmp_path):
    artifact(tmp_path, "abc123", through="2025-11-04")
    with pytest.raises(ConfigError, match="from 2025-11-04 on may use it, not 2025-10-28"):
        S.with_policy({**LLM, "policy": "abc123"}, tmp_path, RunDate.parse("2025-10-28"))


def test_latest_is_the_newest_policy_of_the_configured_base_model(tmp_path):
    artifact(tmp_path, "old", age=0)
    artifact(tmp_path, "new", age=10)
    artifact(tmp_path, "other", base="Other-1B", age=20)
    out = S.with_policy({**LLM, "policy": "latest"}, tmp_path, RunDate.parse("2025-11-04"))
    assert out["policy_version"] == "new"
    with pytest.raises(ConfigError, match="no policy artifact for Missing"):
        S.policy_folder(tmp_path, "latest", "Missing")


def test_an_unknown_version_or_another_models_policy_is_refused(tmp_path):
    artifact(tmp_path, "other", base="Other-1B")
    with pytest.raises(ConfigError, match=r"no policy artifact .*those under .*: other"):
        S.with_policy({**LLM, "policy": "nope"}, tmp_path, RunDate.parse("2025-11-04"))
    with pytest.raises(ConfigError, match="tuned from Other-1B, this run's llm is Base-135M"):
        S.with_policy({**LLM, "policy": "other"}, tmp_path, RunDate.parse("2025-11-04"))


def test_every_stage_config_serves_the_policy(tmp_path):
    from jobs.stage import prepare
    from recgpt.config import load_config

    root = f"policy.artifacts_dir={tmp_path / 'policy'}"
    artifact(tmp_path / "policy", "abc123", base="SmolLM2-135M-Instruct", through="2025-10-28")
    out = prepare(load_config(["run.dt=2025-10-28", "llm.policy=abc123", root]), "mine_intents")
    assert out.llm.model_name == "SmolLM2-135M-Instruct+policy-abc123"
    assert out.llm.base_model_name == "SmolLM2-135M-Instruct"
    early = load_config(["run.dt=2025-10-27", "llm.policy=abc123", root])
    with pytest.raises(ConfigError, match="not 2025-10-27"):
        prepare(early, "mine_intents")

    # Training further from it is checked against the new artifact's first evaluation date.
    def training(evaluate_from: str):
        since = f"policy.evaluate_from={evaluate_from}"
        return load_config(["run.dt=2025-10-20", "llm.policy=abc123", since, root])

    assert prepare(training("2025-10-28"), "train_policy").llm.policy_version == "abc123"
    with pytest.raises(ConfigError, match="not 2025-10-27"):
        prepare(training("2025-10-27"), "train_policy")


def test_the_rl_benchmark_starts_the_server_of_the_policy_its_stage_serves(tmp_path, monkeypatch):
    """bench/rl.py starts each variant's engine server before the clock: it must be the tuned
    policy's, the one the stage's executors look for (with the base model's they started their
    own, which outlived the stage and took the next engine's memory)."""
    from contextlib import nullcontext

    from bench import rl
    from jobs.stage import prepare
    from recgpt.config import load_config, plain
    from recgpt.llm.server import server_key

    root = tmp_path / "policy"
    cfg = load_config(["run.dt=2025-11-05", f"policy.artifacts_dir={root}", "llm.policy=abc123"])
    artifact(root, "abc123", base=str(cfg.llm.model_name))
    started: list[dict] = []
    staged: list[dict] = []
    monkeypatch.setattr(rl, "engine_server", lambda llm: started.append(llm) or nullcontext())
    monkeypatch.setattr(rl, "run_stage", lambda c, fn, name, _: staged.append(plain(prepare(c, name).llm)))
    rl.served(cfg, lambda ctx: None, "mine_intents", None)  # type: ignore[arg-type]
    assert started[0]["model_path"] == str(root / "abc123")
    assert server_key(started[0]) == server_key(staged[0])
