"""A Spark standalone cluster on loopback from the scripts inside the pyspark package: one master
and N workers as child processes, for `conf/spark/standalone.yaml` and the cluster tests.

    python -m scripts.standalone_cluster --workers 2     # runs until Ctrl-C
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyspark


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spark_class() -> str:
    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


@contextmanager
def standalone_cluster(
    workers: int = 2,
    cores: int = 1,
    memory: str = "1g",
    work_dir: str | None = None,
    log_dir: str | None = None,
) -> Iterator[str]:
    """Start a master and `workers` workers on 127.0.0.1; yields the master URL; stops them all."""
    env = dict(
        os.environ, SPARK_LOCAL_IP="127.0.0.1", SPARK_PYTHON=sys.executable, PYSPARK_PYTHON=sys.executable
    )
    log_root = Path(log_dir or work_dir or ".").resolve()
    log_root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(log_root / "master.log", "wb") as out:
            master = subprocess.Popen(
                [
                    _spark_class(),
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--webui-port",
                    str(_free_port()),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(master)
        _wait_port(port, 60, master, "spark master")
        url = f"spark://127.0.0.1:{port}"
        for i in range(workers):
            wdir = Path(work_dir or log_root) / f"worker-{i}"
            wdir.mkdir(parents=True, exist_ok=True)
            wport = _free_port()
            with open(log_root / f"worker-{i}.log", "wb") as out:
                worker = subprocess.Popen(
                    [
                        _spark_class(),
                        "org.apache.spark.deploy.worker.Worker",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(wport),
                        "--webui-port",
                        str(_free_port()),
                        "--cores",
                        str(cores),
                        "--memory",
                        memory,
                        "--work-dir",
                        str(wdir),
                        url,
                    ],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            procs.append(worker)
            _wait_port(wport, 60, worker, f"spark worker {i}")
        yield url
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--memory", default="1g")
    parser.add_argument("--work-dir", default="warehouse/_cluster")
    args = parser.parse_args()
    with standalone_cluster(args.workers, args.cores, args.memory, args.work_dir) as url:
        print(
            f"master {url}; run stages with: SPARK_MASTER_URL={url} python -m jobs.<stage> spark=standalone"
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
