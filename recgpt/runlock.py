"""One run of a stage per date at a time.

Two runs of one date at once (a manual run beside the scheduled one, a retry racing a slow
attempt) would interleave their writes: both replace the date's partitions, and a staged stage
(mine_intents) shares its staging folder. Each stage therefore takes an exclusive lock on
(stage, date) before it starts. The lock is an OS file lock (flock) on a file under
`run.lock.dir`: the kernel releases it when the holder's process ends, however it ends, so a
killed run never leaves a stale lock behind. The file holds who has it (run id, stage, pid, host,
since when), so the run that is turned away can say which run is in the way.

The folder must be one every driver of the warehouse sees: the warehouse's own folder when it is
local (the default), a shared filesystem (NFS, EFS) when drivers run on several machines.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from recgpt.errors import ConfigError, RunBusyError

# Locks this process holds, by file: a chain re-entering its own stage lock does not deadlock.
_HELD: dict[Path, int] = {}


@contextlib.contextmanager
def stage_lock(
    lock_dir: str, stage: str, dt: str, run_id: str, wait_seconds: float = 0.0, poll_seconds: float = 1.0
) -> Iterator[None]:
    """Hold the (stage, dt) lock for the body. When another run holds it: wait up to
    `wait_seconds` for it to finish, then raise RunBusyError naming that run."""
    if "://" in lock_dir:
        raise ConfigError(
            f"run.lock.dir {lock_dir!r} is a URI: stage locks need a filesystem path every driver "
            "shares (set RECGPT_LOCK_DIR or run.lock.dir)"
        )
    path = Path(lock_dir) / f"{stage}.dt={dt}.lock"
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield
        finally:
            _HELD[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        _acquire(handle, path, stage, dt, wait_seconds, poll_seconds)
        _HELD[path] = 1
        try:
            _write_holder(handle, run_id, stage, dt)
            yield
        finally:
            del _HELD[path]
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _acquire(handle: IO[str], path: Path, stage: str, dt: str, wait_seconds: float, poll: float) -> None:
    deadline = time.monotonic() + max(wait_seconds, 0.0)
    announced = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = holder_of(path)
            if time.monotonic() >= deadline:
                waited = f" after waiting {wait_seconds:.0f}s" if wait_seconds > 0 else ""
                raise RunBusyError(
                    f"{stage} for dt={dt} is already running as {_describe(holder)}; refused{waited} "
                    f"so the two runs do not interleave their writes (lock {path}; retry when it "
                    "has finished, or set run.lock.wait_seconds to wait for it)"
                ) from None
            if not announced:
                print(f"   waiting for {stage} dt={dt}: held by {_describe(holder)}", flush=True)
                announced = True
            time.sleep(poll)


def _write_holder(handle: IO[str], run_id: str, stage: str, dt: str) -> None:
    handle.seek(0)
    handle.truncate(0)
    handle.write(
        json.dumps(
            {
                "run_id": run_id,
                "stage": stage,
                "dt": dt,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            }
        )
    )
    handle.flush()


def holder_of(path: Path) -> dict[str, Any]:
    """Who holds the lock file, as its holder wrote it ({} while it is being written)."""
    try:
        return dict(json.loads(path.read_text() or "{}"))
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another run (it has not written its name yet)"
    return (
        f"run {holder.get('run_id')} (pid {holder.get('pid')} on {holder.get('host')}, "
        f"since {holder.get('since')})"
    )
