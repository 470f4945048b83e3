"""Drill 2, the engine killed mid-stage: mine_intents on the real bundled model, its vLLM server
killed (SIGKILL, whole process group) while a wave's calls are in flight.

- `engine.killed`: the stage goes on. The calls in flight notice the server is gone, the first
  restarts it and all retry against the new one; the stage ends with every user either mined or
  in mining_failures with a reason, nobody twice, and the restart on record.
- `engine.job_killed`: the whole job (and with it its engine) killed after a staged wave; a run
  with `resume=true` completes the date from the staged waves, again every user exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from deltalake import DeltaTable

from bench.drills import DrillResult
from bench.evaluation import run_inputs
from recgpt.config import load_config, plain
from recgpt.llm.server import engine_starts, server_key, state_dir

DT = "2025-10-28"
ROOT = Path(__file__).resolve().parents[2]


def run(workdir: Path, cases: int | None = None) -> list[DrillResult]:
    users = 12 if cases is None else max(cases, 6)
    world = [
        f"run.dt={DT}",
        f"data.users={users}",
        "data.items=300",
        "data.history_days=90",
        "data.holdout_days=7",
        "context.mode=text",
        "pipeline=v2",
        "mine.wave_users=3",
        "mine.partitions=2",
        f"llm.server.state_dir={workdir / 'engine'}",  # its own server: killing it harms nobody else
    ]
    prepared = workdir / "prepared"
    ctx = run_inputs(load_config([f"storage.warehouse={prepared}", *world]))
    ctx.spark.stop()
    shutil.copytree(prepared, workdir / "killed_engine")
    shutil.copytree(prepared, workdir / "killed_job")
    return [
        _engine_killed(workdir / "killed_engine", world),
        _job_killed(workdir / "killed_job", world),
    ]


def _engine_killed(wh: Path, world: list[str]) -> DrillResult:
    started = time.perf_counter()
    result = DrillResult("engine.killed_mid_stage", cases=1)
    cfg = _llm_cfg(world)
    job = _start(wh, world)
    _wait_for_wave(wh, job)
    victim = _server_pid(cfg)
    os.killpg(victim, signal.SIGKILL)
    out, _ = job.communicate(timeout=1800)
    if job.returncode != 0:
        result.failures.append(f"the stage failed after the engine was killed: {out[-500:]}")
    starts = [s for s in engine_starts(cfg) if s.get("key") == server_key(cfg)]
    if len(starts) != 2:
        result.failures.append(f"{len(starts)} engine start(s) on record, expected the first and one restart")
    _check_users(wh, result)
    result.details["killed_server_pid"] = victim
    result.details["engine_starts"] = len(starts)
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def _job_killed(wh: Path, world: list[str]) -> DrillResult:
    started = time.perf_counter()
    result = DrillResult("engine.job_killed_then_resumed", cases=1)
    job = _start(wh, world)
    waves = _wait_for_wave(wh, job)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    if (wh / "user_intent_tags").exists():
        result.failures.append("the killed run wrote user_intent_tags before finishing")
    resumed = subprocess.run(
        _command(wh, world, "resume=true"), capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=1800
    )
    if resumed.returncode != 0:
        result.failures.append(f"the resume failed: {resumed.stderr[-500:]}")
    elif "already done" not in resumed.stderr:
        result.failures.append("the resume did not reuse the staged waves")
    _check_users(wh, result)
    result.details["waves_staged_before_the_kill"] = waves
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def _check_users(wh: Path, result: DrillResult) -> None:
    """Every user with history ends mined or failed with a reason, once; no key twice."""
    contexts = DeltaTable(str(wh / "user_context")).to_pandas()
    users = set(contexts[contexts.events_kept > 0].user_id)
    tags = _table(wh, "user_intent_tags")
    failures = _table(wh, "mining_failures")
    ledger = _table(wh, "llm_calls")
    mined, failed = set(tags.user_id), set(failures.user_id)
    result.rows_in += len(users)
    result.rows_written += len(mined)
    result.rows_quarantined += len(failed)
    result.rows_lost += len(users - mined - failed)
    result.duplicates += len(mined & failed) + int(tags.duplicated(["user_id", "rank"]).sum())
    result.duplicates += int(ledger.duplicated(["stage", "request_key"]).sum())
    if (failures.reason.fillna("") == "").any():
        result.failures.append("a mining failure without a reason")
    errors = ledger[ledger.error.notna()]
    result.details["failed_calls"] = errors.error.str.split(":").str[0].value_counts().to_dict()
    result.details["users"] = {"with_history": len(users), "mined": len(mined), "failed": len(failed)}


def _table(wh: Path, name: str) -> pd.DataFrame:
    path = wh / name
    return DeltaTable(str(path)).to_pandas() if path.exists() else pd.DataFrame(columns=["user_id"])


def _start(wh: Path, world: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _command(wh, world),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=_env(),
        start_new_session=True,
    )


def _wait_for_wave(wh: Path, job: subprocess.Popen[str], timeout: float = 1200) -> int:
    """Wait until the first wave is staged (the next one's calls are then on their way)."""
    staging = wh / "_staging" / "mine_intents" / f"dt={DT}" / "pipeline=v2" / "context_mode=text"
    deadline = time.monotonic() + timeout
    while not (staged := list(staging.glob("wave=*/_SUCCESS"))):
        if job.poll() is not None:
            raise RuntimeError(f"mine_intents ended before a wave was staged: {job.stdout.read()[-800:]}")
        if time.monotonic() > deadline:
            raise TimeoutError("no wave staged in time")
        time.sleep(0.2)
    return len(staged)


def _server_pid(cfg: dict) -> int:
    state = json.loads((state_dir(cfg) / f"{server_key(cfg)}.json").read_text())
    return int(state["pid"])


def _llm_cfg(world: list[str]) -> dict:
    return plain(load_config(world).llm)


def _command(wh: Path, world: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.mine_intents", f"storage.warehouse={wh}", *world, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}
