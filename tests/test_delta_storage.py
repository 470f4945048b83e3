"""The Delta storage layer: one commit per write, replaceWhere semantics, failure atomicity,
concurrent writers, and identical reads through Spark and through the deltalake package."""

from __future__ import annotations

import datetime as dt
import os
import threading

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from recgpt import delta
from recgpt.errors import CommitConflictError, StorageError
from recgpt.rundate import RunDate
from recgpt.tables import BEHAVIORS, ITEMS, QUARANTINE
from sparkio.warehouse import Lineage

UTC = dt.UTC


def behaviors_df(spark, day: str, n: int, user_prefix: str = "u"):
    base = dt.datetime.fromisoformat(day).replace(tzinfo=UTC)
    rows = [
        (f"{user_prefix}{i % 7}", f"i{i}", "view", None, base + dt.timedelta(minutes=i), None)
        for i in range(n)
    ]
    df = spark.createDataFrame(
        rows, "user_id string, item_id string, behavior string, query string, ts timestamp, rating double"
    )
    return df.withColumn("dt", F.to_date("ts"))


def lineage(day: RunDate | str = "2025-10-28", run: str = "r1") -> Lineage:
    return Lineage.now(day, run)


def sorted_rows(table: pa.Table, keys=("ts", "user_id")) -> list[dict]:
    return table.sort_by([(k, "ascending") for k in keys]).to_pylist()


def test_round_trip_spark_and_deltalake_agree(spark, warehouse):
    df = behaviors_df(spark, "2025-10-27", 500).unionByName(behaviors_df(spark, "2025-10-28", 300))
    result = warehouse.write(df, BEHAVIORS, mode="replace_partitions", lineage=lineage())
    assert result.rows == 800 and result.version == 0

    via_spark = warehouse.read(BEHAVIORS).toArrow()
    via_deltalake = DeltaTable(warehouse.uri(BEHAVIORS)).to_pyarrow_table()
    cols = BEHAVIORS.column_names
    assert via_spark.num_rows == via_deltalake.num_rows == 800
    assert sorted_rows(via_spark.select(cols)) == sorted_rows(
        via_deltalake.select(cols).cast(via_spark.select(cols).schema)
    )
    # Partition pruning by dt returns exactly that day, given as a RunDate or in ISO form.
    assert warehouse.read(BEHAVIORS, dt="2025-10-27").count() == 500
    assert warehouse.read(BEHAVIORS, dt=RunDate.parse("2025-10-28").minus(1)).count() == 500
    assert warehouse.read(BEHAVIORS, dt_from=RunDate.parse("2025-10-28")).count() == 300


def test_replace_is_idempotent_and_only_touches_its_partition(spark, warehouse):
    warehouse.write(
        behaviors_df(spark, "2025-10-27", 50), BEHAVIORS, mode="replace", lineage=lineage("2025-10-27")
    )
    for run in ("r1", "r2"):
        warehouse.write(
            behaviors_df(spark, "2025-10-28", 40),
            BEHAVIORS,
            mode="replace",
            lineage=lineage("2025-10-28", run),
        )
    counts = {
        r["dt"].isoformat(): r["count"] for r in warehouse.read(BEHAVIORS).groupBy("dt").count().collect()
    }
    assert counts == {"2025-10-27": 50, "2025-10-28": 40}
    assert {r.run_id for r in warehouse.read(BEHAVIORS, dt="2025-10-28").select("run_id").collect()} == {"r2"}
    # Each write was exactly one commit.
    assert warehouse.version(BEHAVIORS) == 2


def test_replace_partitions_replaces_only_the_days_written(spark, warehouse):
    both = behaviors_df(spark, "2025-10-27", 10).unionByName(behaviors_df(spark, "2025-10-28", 10))
    warehouse.write(both, BEHAVIORS, mode="replace_partitions", lineage=lineage())
    warehouse.write(
        behaviors_df(spark, "2025-10-28", 3), BEHAVIORS, mode="replace_partitions", lineage=lineage(run="r2")
    )
    counts = {
        r["dt"].isoformat(): r["count"] for r in warehouse.read(BEHAVIORS).groupBy("dt").count().collect()
    }
    assert counts == {"2025-10-27": 10, "2025-10-28": 3}


def test_replace_with_two_partition_columns(spark, warehouse):
    def q(stage: str, n: int):
        rows = [("behaviors", "f.csv", "{}", "bad", stage)] * n
        return spark.createDataFrame(
            rows, "table_name string, source string, raw string, reason string, stage string"
        )

    lin = lineage()
    warehouse.write(
        q("ingest", 5), QUARANTINE, mode="replace", lineage=lin, where={"dt": lin.dt, "stage": "ingest"}
    )
    warehouse.write(q("dq", 2), QUARANTINE, mode="replace", lineage=lin, where={"dt": lin.dt, "stage": "dq"})
    warehouse.write(
        q("ingest", 4), QUARANTINE, mode="replace", lineage=lin, where={"dt": lin.dt, "stage": "ingest"}
    )
    counts = {r["stage"]: r["count"] for r in warehouse.read(QUARANTINE).groupBy("stage").count().collect()}
    assert counts == {"ingest": 4, "dq": 2}


def _data_files(root: str) -> set[str]:
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".parquet")}


def test_failing_task_leaves_table_at_previous_version(spark, warehouse):
    warehouse.write(behaviors_df(spark, "2025-10-28", 20), BEHAVIORS, mode="replace", lineage=lineage())
    before_files = _data_files(warehouse.uri(BEHAVIORS))

    @F.udf("string")
    def explode_on_row_7(item_id):
        if item_id == "i7":
            raise ValueError("boom inside a task")
        return item_id

    broken = (
        behaviors_df(spark, "2025-10-28", 20)
        .repartition(2)
        .withColumn("item_id", explode_on_row_7("item_id"))
    )
    with pytest.raises(Exception, match="boom inside a task"):
        warehouse.write(broken, BEHAVIORS, mode="replace", lineage=lineage(run="r2"))
    assert warehouse.version(BEHAVIORS) == 0
    assert {r.run_id for r in warehouse.read(BEHAVIORS).select("run_id").distinct().collect()} == {"r1"}
    assert warehouse.read(BEHAVIORS).count() == 20
    live = {f.path for f in delta.live_files(warehouse.uri(BEHAVIORS))[2]}
    assert {p.split("/behaviors/")[1] for p in live} == {p.split("/behaviors/")[1] for p in before_files}
    # A task cancelled mid-write may leave an uncommitted file behind (readers never see it);
    # vacuum removes such orphans.
    warehouse.vacuum(BEHAVIORS, retention_hours=0)
    assert _data_files(warehouse.uri(BEHAVIORS)) == before_files


def test_row_outside_the_replaced_partition_fails_the_write(spark, warehouse):
    warehouse.write(behaviors_df(spark, "2025-10-28", 5), BEHAVIORS, mode="replace", lineage=lineage())
    stray = behaviors_df(spark, "2025-10-28", 5).unionByName(behaviors_df(spark, "2025-10-29", 1))
    with pytest.raises(Exception, match="replaces only dt=2025-10-28"):
        warehouse.write(stray, BEHAVIORS, mode="replace", lineage=lineage(run="r2"))
    assert warehouse.version(BEHAVIORS) == 0


def test_null_in_required_column_is_refused(spark, warehouse):
    df = behaviors_df(spark, "2025-10-28", 5).withColumn("user_id", F.lit(None).cast("string"))
    with pytest.raises(Exception, match="non-nullable column 'user_id'"):
        warehouse.write(df, BEHAVIORS, mode="replace", lineage=lineage())
    assert not warehouse.exists(BEHAVIORS)


def test_read_an_older_version(spark, warehouse):
    warehouse.write(behaviors_df(spark, "2025-10-28", 5), BEHAVIORS, mode="replace", lineage=lineage())
    warehouse.write(
        behaviors_df(spark, "2025-10-28", 9), BEHAVIORS, mode="replace", lineage=lineage(run="r2")
    )
    assert warehouse.read(BEHAVIORS, version=0).count() == 5
    assert warehouse.read(BEHAVIORS).count() == 9


def test_a_snapshot_as_of_a_run_date_is_the_latest_on_or_before_it(spark, warehouse):
    def items(*ids: str):
        return spark.createDataFrame(
            [(i, f"item {i}", "things", None, None, None) for i in ids],
            "item_id string, title string, category string, category_path string, brand string, price double",
        )

    warehouse.write(items("a"), ITEMS, mode="replace", lineage=lineage("2025-09-30"))
    warehouse.write(items("a", "b"), ITEMS, mode="replace", lineage=lineage("2025-10-28"))

    def ids(as_of: RunDate | str) -> list[str]:
        return sorted(r.item_id for r in warehouse.read_snapshot(ITEMS, as_of).collect())

    # Between two snapshots (and across the month end) the older one is current.
    assert ids(RunDate.parse("2025-10-01")) == ["a"]
    assert ids(RunDate.parse("2025-10-28")) == ["a", "b"] == ids("2025-10-28")
    with pytest.raises(
        StorageError, match=r"^items has no snapshot on or before 2025-09-29: run ingest first$"
    ):
        warehouse.read_snapshot(ITEMS, RunDate.parse("2025-09-30").minus(1))


def test_reading_a_missing_table_says_which(spark, warehouse):
    with pytest.raises(Exception, match=r"no Delta table at .*behaviors"):
        warehouse.read(BEHAVIORS).count()


# -- concurrency, on the commit protocol itself (what every Spark write ends in) ----------------


def _arrow_rows(day: str, n: int, writer: str) -> pa.RecordBatch:
    ts = dt.datetime.fromisoformat(day).replace(tzinfo=UTC)
    return pa.RecordBatch.from_pylist(
        [
            {
                "user_id": writer,
                "item_id": f"i{i}",
                "behavior": "view",
                "query": None,
                "ts": ts,
                "rating": None,
                "dt": ts.date(),
                "run_id": writer,
                "created_at": ts,
            }
            for i in range(n)
        ],
        schema=BEHAVIORS.schema,
    )


def _write(uri: str, writer: str, mode: str, n: int, day: str = "2025-10-28") -> None:
    parts = delta.PartWriter(
        uri, BEHAVIORS.schema, BEHAVIORS.partition_by, required={"dt": day} if mode == "replace" else {}
    )
    adds = parts.write_batches([_arrow_rows(day, n, writer)])
    delta.commit(
        uri,
        BEHAVIORS.schema,
        BEHAVIORS.partition_by,
        adds,
        mode,  # type: ignore[arg-type]
        where={"dt": day} if mode == "replace" else None,
        retries=10,
    )


def test_concurrent_appends_all_land_and_the_table_stays_readable(warehouse_dir):
    uri = delta.table_uri(warehouse_dir, "behaviors")
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            for _ in range(5):
                _write(uri, name, "append", 10)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Appends never conflict logically: every one must land, each in its own version.
    assert errors == []
    table = DeltaTable(uri).to_pyarrow_table()
    assert table.num_rows == 4 * 5 * 10
    assert delta.table_version(uri) == 4 * 5 - 1


def test_concurrent_replaces_of_one_partition_leave_exactly_one_copy(warehouse_dir):
    uri = delta.table_uri(warehouse_dir, "behaviors")
    _write(uri, "seed", "replace", 3)
    outcomes: dict[str, BaseException | None] = {}

    def worker(name: str) -> None:
        try:
            _write(uri, name, "replace", 25)
            outcomes[name] = None
        except BaseException as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failures = [e for e in outcomes.values() if e is not None]
    # A loser fails clearly (conflict) rather than corrupting the table.
    assert all(isinstance(e, (CommitConflictError, StorageError)) for e in failures), failures
    table = DeltaTable(uri).to_pyarrow_table()
    writers = set(table.column("run_id").to_pylist())
    assert table.num_rows == 25 and len(writers) == 1 and writers <= set(outcomes)
    assert outcomes[writers.pop()] is None


def test_an_empty_table_and_an_empty_range_read_as_zero_rows(spark, warehouse):
    empty = behaviors_df(spark, "2025-10-28", 3).limit(0)
    result = warehouse.write(empty, BEHAVIORS, mode="replace", lineage=lineage())
    assert result.rows == 0 and warehouse.exists(BEHAVIORS)
    assert warehouse.read(BEHAVIORS).count() == 0
    warehouse.write(behaviors_df(spark, "2025-10-28", 3), BEHAVIORS, mode="replace", lineage=lineage())
    assert warehouse.read(BEHAVIORS, dt="2024-01-01").count() == 0
    assert warehouse.read(BEHAVIORS, dt="2025-10-28").count() == 3
