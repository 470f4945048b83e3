"""The cluster launcher for real: Airflow's spark-submit launcher runs ingest on a Spark standalone
cluster (master + 2 workers on loopback), then a Delta round trip through the workers' executors,
so nothing silently depends on running inside the driver or on a local master."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from deltalake import DeltaTable

from scripts.standalone_cluster import standalone_cluster
from tests.conftest import ROOT
from tests.dag_support import DT, airflow, dag_config

ROUND_TRIP = textwrap.dedent("""
    import sys, json
    from recgpt import delta
    from recgpt.config import load_config
    from recgpt.tables import BEHAVIORS
    from sparkio.session import build_session
    from sparkio.warehouse import Lineage, Warehouse
    from omegaconf import OmegaConf

    wh_dir = sys.argv[1]
    cfg = load_config(["run.stage=roundtrip", "spark=standalone"])
    spark = build_session(OmegaConf.to_container(cfg.spark, resolve=True), "roundtrip")
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size()
    # Small read splits, so the read is many tasks spread over both workers.
    wh = Warehouse(spark, wh_dir, engine="delta-rs", read_split_bytes=64 * 1024)
    df = wh.read(BEHAVIORS)
    # Copy every day of behaviour through executor tasks into a new table, then compare.
    copy = BEHAVIORS.__class__("behaviors_copy", BEHAVIORS.doc, BEHAVIORS.columns, BEHAVIORS.partition_by)
    result = wh.write(df, copy, mode="replace_partitions")
    def where_am_i(_):
        # Executors run their Python workers in <worker work dir>/<app id>/<executor id>.
        import os
        yield os.getcwd()

    places = set(df.rdd.mapPartitions(where_am_i).collect())
    print(json.dumps({"executors": executors, "rows": result.rows, "spark_count": df.count(),
                      "partitions": df.rdd.getNumPartitions(), "executor_dirs": sorted(places)}))
    spark.stop()
""")


def submitted_to(master: str, tmp_path) -> tuple[dict, Path]:
    """A DAG config whose stages Airflow's SparkSubmitOperator sends to `master`, and the
    Airflow connection naming that master."""
    venv_bin = str(ROOT / ".venv" / "bin")
    config = dag_config(
        tmp_path,
        launcher="spark_submit",
        spark_submit={
            "conn_id": "spark_default",
            "overrides": ["spark=submitted", "data.users=80", "data.items=400"],
            "py_files": None,  # the workers share this machine's venv, where the project is installed
            "conf": {
                "spark.driver.memory": "1g",
                "spark.executor.memory": "1g",
                "spark.executor.cores": "1",
                "spark.cores.max": "2",
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
            },
            "env_vars": {"PYSPARK_PYTHON": f"{venv_bin}/python"},
        },
    )
    conn = {"AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": master})}
    return conn, config


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_spark_submit_launcher_ingests_on_a_standalone_cluster_and_delta_round_trips(tmp_path, airflow_env):
    wh = tmp_path / "wh"
    venv_bin = str(ROOT / ".venv" / "bin")
    with standalone_cluster(workers=2, cores=1, memory="1g", work_dir=str(tmp_path / "cluster")) as url:
        conn, config = submitted_to(url, tmp_path)
        env = {**airflow_env, **conn, "PATH": f"{venv_bin}:{airflow_env['PATH']}", "SPARK_MASTER_URL": url}
        # Airflow builds the spark-submit command from the connection and runs jobs/ingest.py
        # with the stage's Hydra arguments.
        proc = airflow(env, config, tmp_path, "tasks", "test", "recgpt_nightly", "ingest", DT)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        assert "spark-submit" in out and f"--master {url}" in out and "jobs/ingest.py" in out
        # `airflow tasks test` exits 0 even when the task fails: the stage's record says whether it ran.
        assert (wh / "runs").is_dir(), out[-4000:]
        runs = DeltaTable(str(wh / "runs")).to_pandas()
        assert runs[["stage", "status"]].values.tolist() == [["ingest", "success"]]
        trip = subprocess.run(
            [sys.executable, "-c", ROUND_TRIP, str(wh)],
            cwd=ROOT,
            env={**airflow_env, "SPARK_MASTER_URL": url},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert trip.returncode == 0, trip.stderr[-4000:]
    figures = json.loads(trip.stdout.strip().splitlines()[-1])
    behaviors = DeltaTable(str(wh / "behaviors")).to_pyarrow_table()
    copy = DeltaTable(str(wh / "behaviors_copy")).to_pyarrow_table()
    # The driver plus two worker executors took part; the tasks ran in worker processes.
    assert figures["executors"] == 3
    assert figures["partitions"] > 2
    dirs = figures["executor_dirs"]
    assert len(dirs) == 2 and {d.split("/cluster/")[1].split("/")[0] for d in dirs} == {
        "worker-0",
        "worker-1",
    }
    assert figures["rows"] == figures["spark_count"] == behaviors.num_rows == copy.num_rows > 0
    cols = ["user_id", "item_id", "behavior", "ts"]
    key = [(c, "ascending") for c in cols]
    assert copy.select(cols).sort_by(key).equals(behaviors.select(cols).sort_by(key))
