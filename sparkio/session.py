"""Spark session factory: builds the session from the `spark` config group and registers the
Delta bridge data source, so every job starts Spark the same way."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from pyspark.sql import SparkSession

from sparkio.delta_source import DeltaRsDataSource


def build_session(spark_cfg: Mapping[str, Any], app_name: str | None = None) -> SparkSession:
    python = spark_cfg.get("python") or sys.executable
    # Executors and the driver's Python workers must run the project's interpreter.
    os.environ["PYSPARK_PYTHON"] = python
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    master = spark_cfg.get("master")
    if str(master).startswith("local"):
        # Local runs stay on loopback (and Spark stops warning about the host name).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    builder = SparkSession.builder.appName(app_name or str(spark_cfg.get("app_name", "recgpt")))
    if master:  # null: spark-submit already chose the master
        builder = builder.master(str(master))
    conf = {str(k): str(v) for k, v in (spark_cfg.get("conf") or {}).items()}
    if str(master).startswith("local") and spark_cfg.get("cds", True):
        conf = with_class_archive(conf)
    for key, value in conf.items():
        builder = builder.config(key, value)
    builder = builder.config("spark.pyspark.python", python)
    # Malformed-line detection in CSV sources needs every field parsed, whatever a query selects.
    builder = builder.config("spark.sql.csv.parser.columnPruning.enabled", "false")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(str(spark_cfg.get("log_level", "WARN")))
    spark.dataSource.register(DeltaRsDataSource)
    return spark


def with_class_archive(conf: dict[str, str]) -> dict[str, str]:
    """`conf` with the driver JVM mapping its classes from the class-data archive of
    `make setup` (sparkio.cds), when there is one and the classpath is Spark's own."""
    from sparkio.cds import java_options

    if any(conf.get(k) for k in ("spark.jars", "spark.jars.packages", "spark.driver.extraClassPath")):
        return conf
    options = java_options()
    if not options:
        return conf
    key = "spark.driver.extraJavaOptions"
    return {**conf, key: f"{conf.get(key, '')} {options}".strip()}


def has_delta_spark(spark: SparkSession) -> bool:
    """True when the session was configured with the Delta Lake extension (delta-spark jars)."""
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    return "DeltaSparkSessionExtension" in extensions
