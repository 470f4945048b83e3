"""Drill 1, Spark workers killed mid-stage: compress and mine_intents (on the scripted,
deterministic engine) run on a standalone cluster (master + 2 workers on loopback) while the
drill kills, separately, one executor's Python worker and one whole worker (its JVM, executor
and Python processes: a machine lost).

Each stage must either complete through Spark's retries or fail clearly; a failed one is rerun
(`resume=true` for mining). Either way its tables must end equal to an uninterrupted run's, with
no duplicate keys, and the stage's `runs` record must say what happened (the failed task
attempts Spark retried, or the error).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
from deltalake import DeltaTable

from bench.drills import DrillResult
from recgpt.config import load_config
from scripts.standalone_cluster import standalone_cluster

DT = "2025-10-28"
ROOT = Path(__file__).resolve().parents[2]
# Table -> its key, per stage; the comparison drops what differs between runs by design.
OUTPUTS = {
    "compress": {"user_context": ["user_id"]},
    "mine_intents": {
        "user_intent_tags": ["user_id", "rank"],
        "user_personas": ["user_id", "persona_rank"],
        "mining_failures": ["user_id"],
    },
}
VOLATILE = ("run_id", "created_at", "latency_ms")


def run(workdir: Path, cases: int | None = None) -> list[DrillResult]:
    """The full drill kills each victim during each stage; the reduced form (`cases` given: the
    CI test) kills one executor's Python worker during compress, on a smaller world."""
    full = cases is None
    users = 3000 if full else 600
    world = [f"run.dt={DT}", f"data.users={users}", f"data.items={users // 5}", "context.mode=text"]
    prepared, reference = workdir / "prepared", workdir / "reference"
    _stage("ingest", prepared, world)
    if full:
        _stage("embed_items", prepared, world)  # mining reads the catalog's embeddings
    shutil.copytree(prepared, reference)
    _stage("compress", reference, world)
    if not full:
        return [_drill_until_hit("compress", "python_worker", workdir, prepared, reference, world)]
    world.append(f"mine.users_file={_users_file(prepared, workdir / 'users.txt', 40)}")
    with _scripted_engine() as url:
        mining = [*_scripted(url), "mine.wave_users=8", "mine.batch_users=2"]
        _stage("mine_intents", reference, [*world, *mining])
        results = []
        for victim in ("python_worker", "worker"):
            for stage, extra in (("compress", []), ("mine_intents", mining)):
                results.append(
                    _drill_until_hit(stage, victim, workdir, prepared, reference, [*world, *extra])
                )
    return results


def _drill_until_hit(
    stage: str, victim: str, workdir: Path, prepared: Path, reference: Path, args: list[str]
) -> DrillResult:
    """The drill, again (up to three times) when its kill missed: a task can finish between the
    moment its worker is seen busy and the kill, and then nothing was put to the test."""
    for attempt in range(1, 4):
        result = _drill(stage, victim, workdir, prepared, reference, args)
        result.details["attempts"] = attempt
        if not result.details.get("missed"):
            break
    return result


def _drill(
    stage: str, victim: str, workdir: Path, prepared: Path, reference: Path, args: list[str]
) -> DrillResult:
    started = time.perf_counter()
    result = DrillResult(f"workers.{victim}_killed.{stage}", cases=1)
    wh = workdir / f"{stage}-{victim}"
    shutil.rmtree(wh, ignore_errors=True)
    shutil.copytree(reference if stage == "mine_intents" else prepared, wh)
    for table in OUTPUTS[stage]:  # the stage writes these afresh
        shutil.rmtree(wh / table, ignore_errors=True)
    cluster = workdir / f"cluster-{stage}-{victim}"
    shutil.rmtree(cluster, ignore_errors=True)
    with standalone_cluster(workers=2, cores=1, memory="1g", work_dir=str(cluster)) as master:
        env = {**_env(), "SPARK_MASTER_URL": master}
        job = subprocess.Popen(
            _command(stage, wh, [*args, "spark=standalone"]),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(job.stdout or []), daemon=True)
        reader.start()
        killed = _kill_when_busy(cluster / "worker-1", victim, job)
        code = job.wait(timeout=1800)
        reader.join(timeout=10)
        text = "".join(output)
        result.details = {"killed": killed, "exit_code": code}
        if code != 0:  # failed clearly? then the rerun must complete the date
            result.details["error"] = _last_error(text)
            rerun = [*args, "spark=standalone", *(["resume=true"] if stage == "mine_intents" else [])]
            again = subprocess.run(
                _command(stage, wh, rerun), cwd=ROOT, env=env, capture_output=True, text=True
            )
            result.details["rerun_exit_code"] = again.returncode
            if again.returncode != 0:
                result.failures.append(f"the rerun failed too: {_last_error(again.stdout + again.stderr)}")
    if not killed:
        result.failures.append(f"no {victim} was busy to kill while {stage} ran")
    _compare(reference, wh, stage, result)
    result.details["runs"] = _runs(wh, stage)
    if code == 0 and "spark_retries" not in result.details["runs"][-1]["details"]:
        # Either the kill hit no running task (it finished first) or `runs` does not record it.
        result.details["missed"] = True
        result.failures.append("the stage got through the kill but its runs record does not say so")
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def _kill_when_busy(
    worker_dir: Path, victim: str, job: subprocess.Popen[str], timeout: float = 600
) -> list[int]:
    """Kill `victim` on the worker whose work dir is `worker_dir` as soon as one of its
    executor's Python workers is running a task: returns the pids killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.poll() is None:
        busy = _busy(_python_workers(worker_dir))
        if busy:
            targets = busy if victim == "python_worker" else _worker_tree(worker_dir)
            for proc in targets:
                try:
                    proc.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass
            return [p.pid for p in targets]
        time.sleep(0.1)
    return []


def _busy(procs: list[psutil.Process], window: float = 0.5) -> list[psutil.Process]:
    """Those of `procs` that used the CPU during `window` seconds: running a task. Spark reuses
    a Python worker between tasks, and one idle between two tasks fails no task when killed."""

    def cpu(proc: psutil.Process) -> float | None:
        try:
            times = proc.cpu_times()
            return float(times.user + times.system)
        except psutil.NoSuchProcess:
            return None

    before = {p.pid: cpu(p) for p in procs}
    if procs:
        time.sleep(window)
    return [
        p for p in procs if (b := before[p.pid]) is not None and (a := cpu(p)) is not None and a > b + 0.02
    ]


def _python_workers(worker_dir: Path) -> list[psutil.Process]:
    """The forked Python workers (children of pyspark.daemon) of executors under `worker_dir`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "pyspark.daemon" in " ".join(proc.info["cmdline"] or []) and proc.cwd().startswith(
                str(worker_dir)
            ):
                found.extend(proc.children())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _worker_tree(worker_dir: Path) -> list[psutil.Process]:
    """The worker JVM started with `--work-dir worker_dir`, and everything under it."""
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "org.apache.spark.deploy.worker.Worker" in cmd and str(worker_dir) in cmd:
            return [proc, *proc.children(recursive=True)]
    return []


def _compare(reference: Path, wh: Path, stage: str, result: DrillResult) -> None:
    for table, key in OUTPUTS[stage].items():
        want, got = _table(reference / table, key), _table(wh / table, key)
        result.rows_in += len(want)
        result.rows_written += len(got)
        result.duplicates += int(got.duplicated(key).sum())
        result.rows_lost += max(len(want) - len(got.drop_duplicates(key)), 0)
        if not got.equals(want):
            result.failures.append(f"{table} differs from the uninterrupted run's")


def _table(path: Path, key: list[str]) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=key)
    df = DeltaTable(str(path)).to_pandas()
    df = df.drop(columns=[c for c in VOLATILE if c in df.columns])
    for col in df.columns:  # lists and arrays compare as tuples
        if df[col].map(lambda v: hasattr(v, "tolist")).any():
            df[col] = df[col].map(lambda v: tuple(v.tolist()) if hasattr(v, "tolist") else v)
    return df.sort_values(key).reset_index(drop=True)


def _runs(wh: Path, stage: str) -> list[dict]:
    runs = DeltaTable(str(wh / "runs")).to_pandas()
    mine = runs[runs.stage == stage].sort_values("started_at")
    return [{"status": r.status, "error": r.error, "details": r.details} for r in mine.itertuples()][-2:]


def _users_file(prepared: Path, path: Path, n: int) -> Path:
    """The first `n` users with behaviours, as mine.users_file (mining all would take long)."""
    users = sorted(set(DeltaTable(str(prepared / "behaviors")).to_pandas(columns=["user_id"]).user_id))[:n]
    path.write_text("".join(f"{u}\n" for u in users))
    return path


def _last_error(text: str) -> str:
    lines = [line for line in text.splitlines() if "failed" in line or "Error" in line]
    return (lines[-1] if lines else text.strip().splitlines()[-1] if text.strip() else "")[:300]


def _stage(stage: str, wh: Path, args: list[str]) -> None:
    done = subprocess.run(_command(stage, wh, args), cwd=ROOT, env=_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{stage} failed while preparing the drill: {_last_error(done.stderr)}")


def _command(stage: str, wh: Path, args: list[str]) -> list[str]:
    return [sys.executable, "-m", f"jobs.{stage}", f"storage.warehouse={wh}", *args]


def _scripted(url: str) -> list[str]:
    return ["llm.placement=remote", f"llm.http.base_url={url}", "llm.retry.attempts=1"]


class _scripted_engine:
    """The deterministic fake OpenAI server of the tests (answers depend on the prompt only, so
    a retried task asks and gets exactly what the first attempt did), slowed so a kill lands
    while calls are in flight."""

    def __enter__(self) -> str:
        from transformers import AutoTokenizer

        from tests.fake_openai import FakeOpenAI

        model = str(load_config([]).llm.model_path)
        self.server = FakeOpenAI(AutoTokenizer.from_pretrained(model), delay_s=0.3).__enter__()
        return self.server.url

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}
