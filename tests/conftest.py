from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# A pytest-xdist worker's __main__ (execnet's) has neither __spec__ nor __file__, which
# pyspark.sql.connect (imported by great_expectations) takes for a doctest run and exits. A spec
# named __main__ says otherwise, and multiprocessing's spawn (vLLM's engine core) leaves such a
# main module alone, as it would without one.
_main = sys.modules["__main__"]
if getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
    _main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)

# Every JVM the suite starts (its own Spark session, each stage process, Airflow's tasks, the
# standalone cluster) lives for seconds on a tiny world: the quick C1 compiler alone gets such a
# process through sooner than C2 compiling beside it on 2 cores (a cold stage process 37 s → 28 s
# here). Production runs keep the JVM's default tiered compilation.
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1")


# `make test` runs the suite on two pytest-xdist workers (--dist loadgroup), each with its own
# session fixtures. Every test that runs a vLLM engine (the session's nightly chain and the tests
# reading it, the shared engine server's tests) is in one work unit, "engines": the chain runs
# once, and no two engines (3-5 GB each) are up at once. The other worker takes the rest, one
# module at a time, so module fixtures are built once.
ENGINE_FIXTURES = frozenset({"nightly_run", "llm_cfg"})
# The Airflow rerun of the nightly chain's date needs the chain's warehouse, not an engine (its
# LLM calls go to the scripted engine): a unit of its own on the other worker, which finds the
# chain done by the engines' worker (`shared_nightly`) instead of running it again. It is handed
# out after the units up to DAG_RERUN_AFTER, which keep the other worker busy about as long as
# the chain takes (some 550 s in the suite), so it seldom waits for it.
DAG_RERUN = "dag-rerun"
DAG_RERUN_AFTER = "tests/test_drill_workers.py"


def work_unit(item: pytest.Item) -> str:
    fixtures = set(getattr(item, "fixturenames", ()))
    if "dag_rerun" in fixtures:
        return DAG_RERUN
    if fixtures & ENGINE_FIXTURES:
        return "engines"
    return item.nodeid.split("::", 1)[0].split("@", 1)[0]


def pytest_itemcollected(item: pytest.Item) -> None:
    """Each test's work unit, marked as it is collected (xdist reads the marks in its own
    collection_modifyitems, which may run before any other)."""
    item.add_marker(pytest.mark.xdist_group(work_unit(item)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The engines' unit first, so the longest unit starts at once (the Makefile passes
    --no-loadscope-reorder: units are handed out in this order); the chain's tests lead it, since
    the engine server's tests would otherwise start a server the chain then stops. The other
    units follow by module, the DAG rerun's right after DAG_RERUN_AFTER's."""

    def unit_order(unit: str) -> tuple[int, str]:
        if unit == "engines":
            return (0, "")
        return (1, DAG_RERUN_AFTER + "~" if unit == DAG_RERUN else unit)

    items.sort(
        key=lambda item: (
            unit_order(work_unit(item)),
            min((0 for f in getattr(item, "fixturenames", ()) if f == "nightly_run"), default=1),
        )
    )


def worker_cores() -> int:
    """The cores one pytest worker may keep busy: all of them run serially, a share under xdist
    (two torch thread pools spinning on the same two cores take several times as long)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@pytest.fixture(scope="session", autouse=True)
def torch_threads_per_worker():
    """Torch in the test process uses the worker's share of the cores (its default is all)."""
    if worker_cores() < (os.cpu_count() or 1):
        import torch

        torch.set_num_threads(worker_cores())


@pytest.fixture(scope="session")
def spark():
    from sparkio.session import build_session

    session = build_session(
        {
            "master": "local[2]",
            "conf": {
                "spark.sql.shuffle.partitions": 4,
                "spark.default.parallelism": 2,
                "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                "spark.sql.session.timeZone": "UTC",
                "spark.sql.execution.arrow.pyspark.enabled": "true",
                "spark.driver.memory": "2g",
            },
            "log_level": "ERROR",
        },
        "recgpt-tests",
    )
    yield session
    session.stop()


@pytest.fixture
def warehouse_dir(tmp_path: Path) -> str:
    path = tmp_path / "warehouse"
    path.mkdir()
    return str(path)


@pytest.fixture
def warehouse(spark, warehouse_dir):
    from sparkio.warehouse import Warehouse

    return Warehouse(spark, warehouse_dir, engine="delta-rs")


@pytest.fixture(scope="session")
def project_env() -> dict[str, str]:
    """Environment for running the project's entry points as subprocesses."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture(scope="session")
def llm_cfg(tmp_path_factory):
    """The bundled model's `llm` config with one engine-server state dir for the whole session:
    the first test that needs the engine server starts it, every later one finds it running."""
    from recgpt.llm.server import stop_server
    from tests.llm_support import llm_config

    cfg = llm_config(**{"server.state_dir": str(tmp_path_factory.mktemp("llm-state"))})
    _ENGINE_CONFIGS.append(cfg)
    yield cfg
    stop_server(cfg)


# The engine-server configs of this worker's session (`llm_cfg`), stopped when its engines' unit
# is over (`pytest_runtest_teardown`).
_ENGINE_CONFIGS: list[dict] = []


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the engines' unit, this worker's engine server (some 3 GB) stops at once instead of
    at the session's end: the worker's other units run beside the other worker's Spark sessions and
    the standalone cluster, which need the memory. No later unit uses it (every test that does is
    in the engines' unit); one that did would start it again."""
    if work_unit(item) == "engines" and (nextitem is None or work_unit(nextitem) != "engines"):
        from recgpt.llm.server import stop_server

        for cfg in _ENGINE_CONFIGS:
            stop_server(cfg)


@pytest.fixture(scope="session")
def airflow_env(project_env) -> dict[str, str]:
    """The project's environment plus where the Airflow environment is; fails (does not skip)
    when it is missing, since `make setup` installs it."""
    from tests.dag_support import airflow_venv

    venv = airflow_venv()
    if not (venv / "bin" / "airflow").is_file():
        pytest.fail(f"no Airflow environment at {venv}: run `make setup-airflow`")
    return {**project_env, "RECGPT_AIRFLOW_VENV": str(venv)}


@pytest.fixture(scope="session")
def scripted_llm():
    """The deterministic fake OpenAI server (tests/fake_openai.py), for tests of control flow that
    run whole stages: its answers do not depend on batching, and it starts in no time."""
    from transformers import AutoTokenizer

    from tests.fake_openai import FakeOpenAI
    from tests.llm_support import llm_config

    with FakeOpenAI(AutoTokenizer.from_pretrained(llm_config()["model_path"]), delay_s=0.05) as server:
        yield server


@dataclass(frozen=True)
class ChainRun:
    warehouse: Path
    proc: subprocess.CompletedProcess[str]
    llm_state: Path | None = None  # the engine server's state dir, when the chain started one


def shared_nightly(tmp_path_factory, env: dict[str, str], before: Callable[[], None]) -> ChainRun:
    """The nightly chain (`jobs.nightly`, as `make run` runs it) for DT on the tiny synthetic world,
    mining on the real bundled model: once per `pytest` run, whichever worker needs it first runs
    it (`before` first) while the other waits, and both read the same warehouse. Nothing writes to
    it afterwards; a test that reruns a date works on a copy."""
    from tests.dag_support import nightly
    from tests.llm_support import TEST_ENGINE

    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's base is a folder of the run's own; without it, the run's base.
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    shared, outcome = root / "nightly", root / "nightly" / "outcome.json"
    with FileLock(str(root / "nightly.lock"), timeout=1800):
        if not outcome.is_file():
            before()
            shared.mkdir(exist_ok=True)
            state = shared / "llm-state"
            proc = nightly(shared, env, f"llm.server.state_dir={state}", *TEST_ENGINE)
            fields = ("args", "returncode", "stdout", "stderr")
            outcome.write_text(json.dumps({f: getattr(proc, f) for f in fields}))
        proc = subprocess.CompletedProcess(**json.loads(outcome.read_text()))
    return ChainRun(shared / "wh", proc, shared / "llm-state")


@pytest.fixture(scope="session")
def nightly_run(tmp_path_factory, project_env, llm_cfg) -> ChainRun:
    """The session's nightly chain (`shared_nightly`), read by every whole-chain test.

    The chain starts an engine server of its own (and stops it after mining): the session's shared
    one (about 4 GB) is stopped first, so the two never hold the machine's memory at once. The
    next test that needs the shared one starts it again."""
    from recgpt.llm.server import stop_server

    return shared_nightly(tmp_path_factory, project_env, lambda: stop_server(llm_cfg))


@dataclass(frozen=True)
class DagRerun:
    nightly: ChainRun  # the date's first run
    dag: ChainRun  # Airflow's rerun of it, on a copy


@pytest.fixture(scope="session")
def dag_rerun(tmp_path_factory, project_env, airflow_env, scripted_llm) -> DagRerun:
    """`airflow dags test` of the whole DAG for DT on a copy of the nightly chain's warehouse:
    every stage as Airflow launches it, and a rerun of a date that is already done.

    The DAG is orchestration: its stages' LLM calls go to the scripted engine, which answers at
    once and costs no engine start. The real model mined the date in the nightly run. No engine of
    this worker runs beside the chain should it run it (`shared_nightly`): the engines' worker
    then waits for the chain before it starts any."""
    from tests.dag_support import DT, airflow, dag_config, failure_report, scripted

    first = shared_nightly(tmp_path_factory, project_env, lambda: None)
    assert first.proc.returncode == 0, failure_report(first.proc)
    tmp = tmp_path_factory.mktemp("dag")
    shutil.copytree(first.warehouse, tmp / "wh")
    # One core per stage process: on the tiny world a second task slot mostly buys a second Python
    # worker importing torch and loading the embedder, while the other pytest worker wants the core.
    # No retries: a failed stage fails the run at once instead of waiting out Airflow's backoff.
    config = dag_config(tmp, [*scripted(scripted_llm.url), "spark.master='local[1]'"], retries=0)
    proc = airflow(airflow_env, config, tmp, "dags", "test", "recgpt_nightly", DT)
    return DagRerun(first, ChainRun(tmp / "wh", proc))
