"""mine_intents as a stage: waves staged and written once, failures in their own table, a killed
run resumed to exactly the tables of an uninterrupted one, and reruns that duplicate nothing.

The model's answers come from a deterministic fake OpenAI server (tests/fake_openai.py): the real
engine's outputs depend on how requests were batched, which a kill-and-resume comparison cannot
allow. The real model runs the stage in tests/test_nightly.py and the injection test below."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from tests.conftest import ROOT
from tests.dag_support import DT, MINED_TABLES, TINY, failure_report, scripted

pytestmark = pytest.mark.slow


def job(module: str, wh: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", module, f"run.dt={DT}", f"storage.warehouse={wh}", *TINY, *extra]


def fake_llm(url: str) -> list[str]:
    return ["context.mode=text", *scripted(url), "mine.wave_users=6", "mine.batch_users=4"]


def mine(
    wh: Path, url: str, env: dict[str, str], *extra: str, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        job("jobs.mine_intents", wh, *fake_llm(url), *extra),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def table(wh: Path, name: str, sort: list[str]) -> pd.DataFrame:
    df = DeltaTable(str(wh / name)).to_pandas()
    df = df.drop(columns=[c for c in ("run_id", "created_at", "latency_ms") if c in df.columns])
    for col in df.columns:  # lists compare as tuples
        if df[col].map(lambda v: hasattr(v, "tolist")).any():
            df[col] = df[col].map(lambda v: tuple(v.tolist()) if hasattr(v, "tolist") else v)
    return df.sort_values(sort).reset_index(drop=True)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, nightly_run):
    """A warehouse with ingest, embed_items and compress done for DT: a copy of the session's
    nightly run without the tables that mining and the stages after it wrote."""
    assert nightly_run.proc.returncode == 0, failure_report(nightly_run.proc)
    wh = tmp_path_factory.mktemp("mine") / "wh"
    shutil.copytree(nightly_run.warehouse, wh)
    for name in (*MINED_TABLES, "_staging"):
        shutil.rmtree(wh / name, ignore_errors=True)
    return wh


def test_failures_kill_resume_and_rerun(prepared, scripted_llm, tmp_path, project_env):
    fake = scripted_llm
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    shutil.copytree(prepared, whole)
    shutil.copytree(prepared, killed)

    contexts = DeltaTable(str(whole / "user_context")).to_pandas()
    with_history = set(contexts[contexts.events_kept > 0].user_id)
    waves = -(-len(with_history) // 6)  # mine.wave_users=6
    assert waves >= 3

    # Uninterrupted.
    proc = mine(whole, fake.url, project_env)
    assert f"{waves} wave(s)" in proc.stderr
    tags = table(whole, "user_intent_tags", ["user_id", "rank"])
    failures = table(whole, "mining_failures", ["user_id"])
    assert set(tags.user_id) | set(failures.user_id) == with_history
    assert not set(tags.user_id) & set(failures.user_id)
    # The fake cuts some planner answers off: those users fail at the planner, with the reason.
    assert len(failures) > 0 and set(failures.step) == {"planner"}
    assert failures.reason.str.startswith("invalid_output").all()
    assert (tags.groupby("user_id")["rank"].apply(lambda r: list(r) == list(range(1, len(r) + 1)))).all()

    # Killed after its first staged wave, then resumed.
    staging = killed / "_staging" / "mine_intents" / f"dt={DT}" / "pipeline=v2" / "context_mode=text"
    run = subprocess.Popen(
        job("jobs.mine_intents", killed, *fake_llm(fake.url)),
        cwd=ROOT,
        env=project_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not list(staging.glob("wave=*/_SUCCESS")):
        assert run.poll() is None, "the run ended before a wave was staged"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    finished = len(list(staging.glob("wave=*/_SUCCESS")))
    assert 1 <= finished < waves and not (killed / "user_intent_tags").exists()

    # A resume with other prompts would mix two runs' outcomes: refused, staging untouched.
    mixed = mine(killed, fake.url, project_env, "resume=true", "pipeline.agents.prompt_version=v9", ok=False)
    assert (
        mixed.returncode == 1 and "made with other settings (agents_sha256, prompt_version)" in mixed.stderr
    )
    assert len(list(staging.glob("wave=*/_SUCCESS"))) == finished

    resumed = mine(killed, fake.url, project_env, "resume=true")
    assert "0 already done" not in resumed.stderr and "already done" in resumed.stderr
    for name, key in (
        ("user_intent_tags", ["user_id", "rank"]),
        ("user_personas", ["user_id", "persona_rank"]),
        ("mining_failures", ["user_id"]),
    ):
        pd.testing.assert_frame_equal(table(whole, name, key), table(killed, name, key))
    ledger = ["stage", "request_key"]
    assert table(whole, "llm_calls", ledger)[ledger].equals(table(killed, "llm_calls", ledger)[ledger])
    assert not staging.exists()  # cleaned up after the tables were written

    # A rerun recomputes and replaces; a resume of a finished date mines nobody.
    mine(whole, fake.url, project_env)
    pd.testing.assert_frame_equal(table(whole, "user_intent_tags", ["user_id", "rank"]), tags)
    done = mine(whole, fake.url, project_env, "resume=true")
    assert (
        f"{len(with_history)} users with history, {len(with_history)} already done, 0 to mine" in done.stderr
    )
    pd.testing.assert_frame_equal(table(whole, "user_intent_tags", ["user_id", "rank"]), tags)
    # Nor may a resume add users mined by another prompt version to the finished tables.
    other = mine(whole, fake.url, project_env, "resume=true", "pipeline.agents.prompt_version=v9", ok=False)
    assert other.returncode == 1 and "holds tags of" in other.stderr


def test_a_users_file_mines_exactly_its_users_and_refuses_unknown_ids(
    prepared, scripted_llm, tmp_path, project_env
):
    fake = scripted_llm
    wh = tmp_path / "wh"
    shutil.copytree(prepared, wh)
    contexts = DeltaTable(str(wh / "user_context")).to_pandas()
    with_history = sorted(contexts[contexts.events_kept > 0].user_id)
    without = sorted(contexts[contexts.events_kept == 0].user_id)

    # An id this date does not know (a list drawn from other data) stops the stage, naming it.
    listed = tmp_path / "users.txt"
    listed.write_text("\n".join([*with_history[:3], "u_from_elsewhere"]) + "\n")
    refused = mine(wh, fake.url, project_env, f"mine.users_file={listed}", ok=False)
    assert refused.returncode == 1
    assert (
        "1 of its 4 user ids have no user_context row for 2025-10-28 (e.g. u_from_elsewhere)"
        in refused.stderr
    )
    assert not (wh / "user_intent_tags").exists()

    # Listed users only: those with history get an outcome, the listed one without is counted.
    listed.write_text("\n".join([*with_history[:3], *without[:1], with_history[0]]) + "\n")
    proc = mine(wh, fake.url, project_env, f"mine.users_file={listed}")
    tags = DeltaTable(str(wh / "user_intent_tags")).to_pandas()
    failures = DeltaTable(str(wh / "mining_failures")).to_pandas()
    assert set(tags.user_id) | set(failures.user_id) == set(with_history[:3])
    assert f"3 with history: {tags.user_id.nunique()} tagged" in proc.stdout
    assert f"{len(without[:1])} without reliable history not mined" in proc.stdout
