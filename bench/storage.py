"""Storage benchmark: N synthetic behaviours written through the Delta layer (delta-rs bridge,
one commit) vs a bare `df.write.parquet` of the same cached DataFrame, both partitioned by dt,
alternating in the same run. Target: Delta path >= 0.7x the Parquet rows/s.

    make bench-storage [ARGS="--rows 10000000 --repeats 3"]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from bench.machine import write_result
from recgpt.rundate import RunDate
from recgpt.tables import BEHAVIORS
from sparkio.session import build_session
from sparkio.warehouse import Lineage, Warehouse


def behaviours(spark: SparkSession, rows: int, days: int) -> DataFrame:
    kinds = F.array(
        *[F.lit(k) for k in ("view", "view", "view", "click", "fav", "cart", "purchase", "search")]
    )
    base = F.lit("2025-09-01 00:00:00").cast("timestamp")
    df = spark.range(0, rows, numPartitions=spark.sparkContext.defaultParallelism * 2).select(
        F.concat(F.lit("u"), F.lpad((F.col("id") % 50_000).cast("string"), 8, "0")).alias("user_id"),
        F.concat(F.lit("i"), F.lpad((F.hash("id") % 100_000).cast("string"), 7, "0")).alias("item_id"),
        F.element_at(kinds, (F.col("id") % 8 + 1).cast("int")).alias("behavior"),
        F.when(
            F.col("id") % 8 == 7, F.concat(F.lit("waterproof boots "), (F.col("id") % 97).cast("string"))
        ).alias("query"),
        (base + F.make_interval(secs=(F.col("id") * 7919 % (days * 86400)).cast("int"))).alias("ts"),
        F.when(F.col("id") % 50 == 0, (F.col("id") % 5 + 1).cast("double")).alias("rating"),
    )
    return df.withColumn("dt", F.to_date("ts"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    spark = build_session(
        {
            "master": "local[*]",
            "conf": {
                "spark.driver.memory": "8g",
                "spark.sql.shuffle.partitions": 8,
                "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                "spark.sql.session.timeZone": "UTC",
                "spark.sql.execution.arrow.maxRecordsPerBatch": 65536,
            },
            "log_level": "ERROR",
        },
        "bench-storage",
    )
    root = tempfile.mkdtemp(prefix="bench-storage-")
    warehouse = Warehouse(spark, f"{root}/delta", engine="delta-rs")
    # Both writers get exactly the same rows, already materialised, in the same column order.
    df = warehouse.conform(
        behaviours(spark, args.rows, args.days), BEHAVIORS, Lineage.now(RunDate.parse("2025-10-01"), "bench")
    ).persist(StorageLevel.MEMORY_ONLY)
    rows = df.count()

    delta_s: list[float] = []
    parquet_s: list[float] = []
    for rep in range(args.repeats):
        shutil.rmtree(f"{root}/delta", ignore_errors=True)
        t0 = time.perf_counter()
        result = warehouse.write(df, BEHAVIORS, mode="replace_partitions")
        delta_s.append(time.perf_counter() - t0)
        assert result.rows == rows, (result.rows, rows)

        t0 = time.perf_counter()
        df.write.mode("overwrite").partitionBy("dt").parquet(f"{root}/parquet")
        parquet_s.append(time.perf_counter() - t0)
        print(f"repeat {rep + 1}: delta {delta_s[-1]:.1f}s  parquet {parquet_s[-1]:.1f}s", flush=True)

    delta_rate = rows / statistics.median(delta_s)
    parquet_rate = rows / statistics.median(parquet_s)
    figures = {
        "rows": rows,
        "delta_rows_per_s": round(delta_rate),
        "parquet_rows_per_s": round(parquet_rate),
        "ratio": round(delta_rate / parquet_rate, 3),
        "target_ratio": 0.7,
        "delta_seconds": [round(s, 2) for s in delta_s],
        "parquet_seconds": [round(s, 2) for s in parquet_s],
        "partitioned_by": "dt",
        "days": args.days,
        "spark_master": spark.sparkContext.master,
        "note": "median of repeats; both writes start from the same cached DataFrame",
    }
    path = write_result("storage", figures)
    print(f"rows                 {rows:,}")
    print(f"delta  rows/s        {delta_rate:,.0f}")
    print(f"parquet rows/s       {parquet_rate:,.0f}")
    print(f"ratio delta/parquet  {figures['ratio']}  (target >= 0.7)")
    print(f"written {path}")
    spark.stop()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
