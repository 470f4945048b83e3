"""One run of a stage per date: a second run is refused (or waits) and names the run holding the
date; the lock dies with its holder, so a killed run never blocks the next night."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

from jobs import ingest
from jobs.stage import execute, open_context
from recgpt.config import load_config
from recgpt.errors import ConfigError, RunBusyError
from recgpt.runlock import holder_of, stage_lock

HOLD = textwrap.dedent("""
    import sys, time
    from recgpt.runlock import stage_lock
    with stage_lock(sys.argv[1], sys.argv[2], "2025-10-28", run_id=sys.argv[3]):
        print("held", flush=True)
        time.sleep(float(sys.argv[4]))
""")


def hold(lock_dir: Path, stage: str, run_id: str, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the lock, as a concurrent run would."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_dir), stage, run_id, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_of_the_date_is_refused_naming_the_first(tmp_path):
    other = hold(tmp_path, "ingest", "scheduled__2025-10-28", 30)
    try:
        with pytest.raises(
            RunBusyError,
            match=r"ingest for dt=2025-10-28 is already running as run "
            r"scheduled__2025-10-28 \(pid \d+",
        ):
            with stage_lock(str(tmp_path), "ingest", "2025-10-28", "manual-1"):
                pytest.fail("the body must not run while another run holds the date")
        # Another stage, or another date, is not in the way.
        with stage_lock(str(tmp_path), "compress", "2025-10-28", "manual-1"):
            pass
        with stage_lock(str(tmp_path), "ingest", "2025-10-29", "manual-1"):
            pass
    finally:
        other.kill()
        other.wait()


def test_a_waiting_run_starts_when_the_holder_finishes_and_a_killed_holder_frees_the_lock(tmp_path, capsys):
    other = hold(tmp_path, "ingest", "first", 2)
    started = time.monotonic()
    with stage_lock(str(tmp_path), "ingest", "2025-10-28", "second", wait_seconds=60, poll_seconds=0.2):
        assert holder_of(tmp_path / "ingest.dt=2025-10-28.lock")["run_id"] == "second"
        # The first run holds the date for 2 s: the body cannot have started before that.
        assert 1.5 <= time.monotonic() - started < 30
    other.wait()
    assert "waiting for ingest dt=2025-10-28: held by run first" in capsys.readouterr().out

    killed = hold(tmp_path, "ingest", "killed", 300)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    with stage_lock(str(tmp_path), "ingest", "2025-10-28", "after-kill"):
        pass


def test_the_chain_reenters_its_own_lock_and_a_uri_is_refused(tmp_path):
    with stage_lock(str(tmp_path), "ingest", "2025-10-28", "chain"):
        with stage_lock(str(tmp_path), "ingest", "2025-10-28", "chain"):
            pass
        assert holder_of(tmp_path / "ingest.dt=2025-10-28.lock")["run_id"] == "chain"
    with pytest.raises(ConfigError, match="RECGPT_LOCK_DIR"):
        with stage_lock("s3://bucket/locks", "ingest", "2025-10-28", "x"):
            pass


def test_a_refused_stage_writes_nothing_and_records_the_refusal(spark, tmp_path):
    wh = tmp_path / "wh"
    cfg = load_config([f"storage.warehouse={wh}", "run.dt=2025-10-28", "data.users=20", "data.items=60"])
    other = hold(wh / "_locks", "ingest", "scheduled__2025-10-28", 60)
    try:
        with pytest.raises(RunBusyError, match="scheduled__2025-10-28"):
            execute(open_context(cfg, "ingest", spark), ingest.run)
    finally:
        other.kill()
        other.wait()
    assert not (wh / "behaviors").exists()
    runs = DeltaTable(str(wh / "runs")).to_pandas()
    assert runs.status.tolist() == ["failed"]
    assert "already running as run scheduled__2025-10-28" in runs.error.iloc[0]
