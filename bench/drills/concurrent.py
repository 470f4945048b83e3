"""Drill 3, two runs of one date at once: a manual ingest started beside the scheduled one.

The scheduled run (`first`) holds the date; a manual run that may not wait (`refused`) must
refuse with a message naming `first`, and one allowed to wait (`waiting`) must start only when
`first` is done and then replace the date's partitions. Afterwards the tables hold exactly what
one uninterrupted run writes (no duplicated or interleaved rows: every row is `waiting`'s), and
`runs` records all three attempts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from deltalake import DeltaTable

from bench.drills import DrillResult
from recgpt.runlock import holder_of

DT = "2025-10-28"
ROOT = Path(__file__).resolve().parents[2]
TABLES = {"behaviors": ["user_id", "ts", "item_id", "behavior"], "items": ["item_id"], "users": ["user_id"]}


def run(workdir: Path, cases: int | None = None) -> list[DrillResult]:
    users = 3000 if cases is None else 600
    world = [f"run.dt={DT}", f"data.users={users}", f"data.items={users // 4}"]
    alone, raced = workdir / "alone", workdir / "raced"
    started = time.perf_counter()
    result = DrillResult("concurrent.same_date", cases=3)

    subprocess.run(_ingest(alone, world, "alone"), check=True, capture_output=True, env=_env())
    first = subprocess.Popen(
        _ingest(raced, world, "first"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    _wait_for_holder(raced / "_locks" / f"ingest.dt={DT}.lock", "first", first)
    refused = subprocess.run(_ingest(raced, world, "refused"), capture_output=True, text=True, env=_env())
    waiting = subprocess.Popen(
        _ingest(raced, world, "waiting", "run.lock.wait_seconds=900"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    first_code = first.wait()
    waiting_out, waiting_err = waiting.communicate()

    if first_code != 0:
        result.failures.append(f"the first run failed: {first.stderr.read() if first.stderr else ''}")
    if refused.returncode == 0 or "already running as run first" not in refused.stderr:
        result.failures.append(f"the second run was not refused naming `first`: {refused.stderr[-300:]!r}")
    if waiting.returncode != 0 or "held by run first" not in waiting_out:
        result.failures.append(
            f"the waiting run did not wait for `first` and succeed: {waiting_err[-300:]!r}"
        )
    _compare(alone, raced, result)
    runs = DeltaTable(str(raced / "runs")).to_pandas().set_index("run_id")["status"].to_dict()
    if runs != {"first": "success", "refused": "failed", "waiting": "success"}:
        result.failures.append(f"runs does not record the three attempts: {runs}")
    result.details = {"runs": runs, "refusal": refused.stderr.strip().splitlines()[-1][:300]}
    result.seconds = round(time.perf_counter() - started, 1)
    return [result]


def _compare(alone: Path, raced: Path, result: DrillResult) -> None:
    """The raced warehouse holds what the lone run wrote, row for row, all from one run."""
    for name, key in TABLES.items():
        want, got = _rows(alone / name, key), _rows(raced / name, key)
        writers = set(DeltaTable(str(raced / name)).to_pandas()["run_id"])
        result.rows_in += len(want)
        result.rows_written += len(got)
        result.duplicates += int(got.duplicated().sum())
        result.rows_lost += max(len(want) - len(got.drop_duplicates()), 0)
        if writers != {"waiting"}:
            result.failures.append(f"{name} holds rows of runs {sorted(writers)}, not only `waiting`'s")
        elif (
            not got.drop_duplicates()
            .reset_index(drop=True)
            .equals(want.drop_duplicates().reset_index(drop=True))
        ):
            result.failures.append(f"{name} differs from the uninterrupted run's")


def _same(got: pd.DataFrame, want: pd.DataFrame) -> bool:
    return got.drop_duplicates().reset_index(drop=True).equals(want.drop_duplicates().reset_index(drop=True))


def _rows(path: Path, key: list[str]) -> pd.DataFrame:
    df = DeltaTable(str(path)).to_pandas()
    return df.drop(columns=["run_id", "created_at"]).sort_values(key).reset_index(drop=True)


def _ingest(warehouse: Path, world: list[str], run_id: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jobs.ingest",
        f"storage.warehouse={warehouse}",
        f"run.run_id={run_id}",
        *world,
        *extra,
    ]


def _wait_for_holder(lock: Path, run_id: str, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while holder_of(lock).get("run_id") != run_id:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"run {run_id} never took the date's lock: {proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.2)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}
