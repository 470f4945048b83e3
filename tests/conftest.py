from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


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
    yield cfg
    stop_server(cfg)


@pytest.fixture
def machine_for_a_chain(llm_cfg) -> None:
    """A whole-chain test starts engines of its own: the session's shared engine server (about
    4 GB) is stopped first, so the two never hold the machine's memory at once. The next test
    that needs the shared one starts it again."""
    from recgpt.llm.server import stop_server

    stop_server(llm_cfg)


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
def dag_warehouse(tmp_path_factory, airflow_env, llm_cfg):
    """One `airflow dags test` of the whole DAG for DT on the tiny synthetic world: (warehouse,
    DAG config, the finished process). Shared by the DAG test (which reruns it) and the notebooks."""
    from recgpt.llm.server import stop_server
    from tests.dag_support import DT, airflow, dag_config

    stop_server(llm_cfg)  # as machine_for_a_chain (a session fixture cannot use that one)

    tmp = tmp_path_factory.mktemp("dag")
    config = dag_config(tmp)
    proc = airflow(airflow_env, config, tmp, "dags", "test", "recgpt_nightly", DT)
    return tmp / "wh", config, proc
