"""Ingest and a Delta round trip on a real Spark standalone cluster (master + 2 workers on
loopback), so nothing silently depends on running inside the driver."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from deltalake import DeltaTable

from scripts.standalone_cluster import standalone_cluster
from tests.conftest import ROOT

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


@pytest.mark.slow
def test_ingest_and_delta_round_trip_on_a_standalone_cluster(tmp_path, project_env):
    wh = tmp_path / "wh"
    with standalone_cluster(workers=2, cores=1, memory="1g", work_dir=str(tmp_path / "cluster")) as url:
        env = dict(project_env, SPARK_MASTER_URL=url)
        ingest = subprocess.run(
            [
                sys.executable,
                "-m",
                "jobs.ingest",
                "run.dt=2025-10-28",
                "spark=standalone",
                "data.users=80",
                "data.items=400",
                f"storage.warehouse={wh}",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ingest.returncode == 0, ingest.stderr[-4000:]
        trip = subprocess.run(
            [sys.executable, "-c", ROUND_TRIP, str(wh)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert trip.returncode == 0, trip.stderr[-4000:]
    import json

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
