"""The storage interface every job uses: write a DataFrame to a Delta table (replace the run
date's partition, replace the partitions written, or append) and read tables back.

Embedded default: delta-rs through the `recgpt_delta` Spark data source. When the session has
delta-spark configured (a cluster with the Delta jars), the same calls use `format("delta")`.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from recgpt import delta
from recgpt.errors import RecGPTError, StorageError
from recgpt.rundate import RunDate
from recgpt.tables import TableSpec
from sparkio.delta_source import FORMAT, encode_schema
from sparkio.session import has_delta_spark


@dataclass(frozen=True)
class Lineage:
    """The lineage columns a stage stamps on every row it writes."""

    dt: RunDate
    run_id: str
    created_at: _dt.datetime

    @classmethod
    def now(cls, dt: RunDate | str, run_id: str) -> Lineage:
        return cls(RunDate.parse(dt), run_id, _dt.datetime.now(_dt.UTC).replace(microsecond=0))


@dataclass(frozen=True)
class WriteResult:
    table: str
    version: int
    rows: int


class Warehouse:
    def __init__(
        self,
        spark: SparkSession,
        root: str,
        engine: str = "auto",
        options: Mapping[str, str] | None = None,
        commit_retries: int = 5,
        max_rows_per_file: int = 5_000_000,
        compression: str = "snappy",
        read_split_bytes: int = 128 * 1024 * 1024,
    ) -> None:
        if "://" not in root:
            import os

            root = os.path.abspath(root)
        self.spark = spark
        self.root = root.rstrip("/")
        self.options = {str(k): str(v) for k, v in (options or {}).items()}
        self.commit_retries = commit_retries
        self.max_rows_per_file = max_rows_per_file
        self.compression = compression
        self.read_split_bytes = read_split_bytes
        if engine == "auto":
            engine = "delta-spark" if has_delta_spark(spark) else "delta-rs"
        if engine not in ("delta-rs", "delta-spark"):
            raise StorageError(f"storage.engine must be auto, delta-rs or delta-spark, not {engine!r}")
        self.engine = engine

    @classmethod
    def from_config(cls, spark: SparkSession, storage_cfg: Mapping[str, Any]) -> Warehouse:
        return cls(
            spark,
            str(storage_cfg["warehouse"]),
            engine=str(storage_cfg.get("engine", "auto")),
            options=dict(storage_cfg.get("options") or {}),
            commit_retries=int(storage_cfg.get("commit_retries", 5)),
            max_rows_per_file=int(storage_cfg.get("max_rows_per_file", 5_000_000)),
            compression=str(storage_cfg.get("compression", "snappy")),
            read_split_bytes=int(storage_cfg.get("read_split_bytes", 128 * 1024 * 1024)),
        )

    # -- paths and metadata ---------------------------------------------------------------------
    def uri(self, table: TableSpec) -> str:
        if not isinstance(table, TableSpec):  # every call site names its table by its spec
            raise TypeError(f"a table is given by its TableSpec (recgpt.tables), not {table!r}")
        return delta.table_uri(self.root, table.name)

    def exists(self, table: TableSpec) -> bool:
        return delta.table_exists(self.uri(table), self.options)

    def version(self, table: TableSpec) -> int | None:
        return delta.table_version(self.uri(table), self.options)

    def vacuum(self, table: TableSpec, retention_hours: int = 168) -> list[str]:
        return delta.vacuum(self.uri(table), retention_hours, self.options)

    # -- writes ---------------------------------------------------------------------------------
    def conform(self, df: DataFrame, spec: TableSpec, lineage: Lineage | None = None) -> DataFrame:
        """Select the table's columns in order, cast to its types, and fill missing lineage."""
        fields = from_arrow_schema(spec.schema).fields
        columns: list[Column] = []
        for field in fields:
            if field.name in df.columns:
                col = F.col(field.name)
            elif lineage is not None and field.name in ("dt", "run_id", "created_at"):
                value: Any = {
                    "dt": lineage.dt.day,
                    "run_id": lineage.run_id,
                    "created_at": lineage.created_at,
                }[field.name]
                col = F.lit(value)
            else:
                raise StorageError(f"DataFrame for {spec.name} lacks column {field.name!r}")
            columns.append(col.cast(field.dataType).alias(field.name))
        return df.select(*columns)

    def write(
        self,
        df: DataFrame,
        spec: TableSpec,
        mode: delta.WriteMode,
        lineage: Lineage | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> WriteResult:
        """Write `df` as one Delta commit.

        mode="replace": replace the rows of `where` (default: dt = the lineage's run date), like
        replaceWhere; a row outside `where` fails the write. mode="replace_partitions": replace the
        dt partitions present in `df`. mode="append": add rows.
        """
        if mode == "replace" and not where:
            if lineage is None:
                raise StorageError(f"replacing {spec.name} needs a run date (lineage) or `where`")
            where = {"dt": lineage.dt}
        where_str = {k: delta.partition_value_string(v) or "" for k, v in (where or {}).items()}
        data = self.conform(df, spec, lineage)
        if spec.partition_by:
            data = data.sortWithinPartitions(*spec.partition_by)
        if self.engine == "delta-spark":
            return self._write_delta_spark(data, spec, mode, where_str)
        write_id = uuid.uuid4().hex
        options = {
            "path": self.uri(spec),
            "arrow_schema": encode_schema(spec.schema),
            "partition_by": ",".join(spec.partition_by),
            "mode": mode,
            "where": json.dumps(where_str),
            "storage_options": json.dumps(self.options),
            "commit_retries": str(self.commit_retries),
            "max_rows_per_file": str(self.max_rows_per_file),
            "compression": self.compression,
            "description": spec.doc,
            "metadata": json.dumps({"recgpt.write_id": write_id, "recgpt.table": spec.name}),
        }
        writer = data.write.format(FORMAT).mode("append" if mode == "append" else "overwrite")
        try:
            writer.options(**options).save()
        except RecGPTError:
            raise
        except Exception as exc:
            raise self._write_failed(spec, exc) from exc
        return self._find_commit(spec, write_id)

    def _write_failed(self, spec: TableSpec, exc: Exception) -> StorageError:
        """A failed write as one line naming the table, its state and the cause (a full disk, a
        failing task) instead of the JVM's and the Python worker's stack traces. Nothing was
        committed: a Delta commit is all or nothing, so the table is at the version it had."""
        try:
            version = self.version(spec)
            state = "does not exist yet" if version is None else f"is unchanged at version {version}"
        except Exception as read_exc:  # the disk that failed the write may fail the read too
            state = f"could not be read back ({failure_cause(read_exc)})"
        return StorageError(
            f"writing {spec.name} ({self.uri(spec)}) failed and the table {state}: {failure_cause(exc)}"
        )

    def _find_commit(self, spec: TableSpec, write_id: str) -> WriteResult:
        from deltalake import DeltaTable

        table = DeltaTable(self.uri(spec), storage_options=self.options)
        for entry in table.history(limit=50):
            if entry.get("recgpt.write_id") == write_id:
                return WriteResult(spec.name, int(entry["version"]), int(entry.get("numOutputRows", 0)))
        raise StorageError(f"write {write_id} to {spec.name} is not in the table history")

    def _write_delta_spark(
        self, data: DataFrame, spec: TableSpec, mode: str, where: Mapping[str, str]
    ) -> WriteResult:
        from delta.tables import DeltaTable as SparkDeltaTable

        writer = data.write.format("delta").partitionBy(*spec.partition_by)
        if mode == "append":
            writer = writer.mode("append")
        elif mode == "replace":
            writer = writer.mode("overwrite").option("replaceWhere", replace_where_sql(where))
        else:
            writer = writer.mode("overwrite").option("partitionOverwriteMode", "dynamic")
        writer.save(self.uri(spec))
        last = SparkDeltaTable.forPath(self.spark, self.uri(spec)).history(1).collect()[0]
        metrics = last["operationMetrics"] or {}
        return WriteResult(spec.name, int(last["version"]), int(metrics.get("numOutputRows", 0)))

    # -- reads ----------------------------------------------------------------------------------
    def read(
        self,
        table: TableSpec,
        dt: RunDate | str | None = None,
        dt_from: RunDate | str | None = None,
        dt_to: RunDate | str | None = None,
        version: int | None = None,
    ) -> DataFrame:
        """A table (optionally one dt, a dt range inclusive, or an older version) as a DataFrame."""
        if dt is not None:
            dt_from = dt_to = dt
        first = None if dt_from is None else RunDate.parse(dt_from).iso
        last = None if dt_to is None else RunDate.parse(dt_to).iso
        if self.engine == "delta-spark":
            reader = self.spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            df = reader.load(self.uri(table))
        else:
            options = {
                "path": self.uri(table),
                "storage_options": json.dumps(self.options),
                "split_bytes": str(self.read_split_bytes),
            }
            if version is not None:
                options["version"] = str(version)
            if first:
                options["dt_from"] = first
            if last:
                options["dt_to"] = last
            df = self.spark.read.format(FORMAT).options(**options).load()
        # The file-level pruning above is coarse; the filter keeps the semantics exact.
        if first and "dt" in df.columns:
            df = df.where(F.col("dt") >= F.lit(first).cast("date"))
        if last and "dt" in df.columns:
            df = df.where(F.col("dt") <= F.lit(last).cast("date"))
        return df

    def read_snapshot(self, table: TableSpec, as_of: RunDate | str) -> DataFrame:
        """The latest snapshot partition on or before `as_of` of a snapshot table (items, users).

        With delta-rs the latest date comes from the Delta log's partition values, so finding it
        costs no Spark job; delta-spark aggregates the column."""
        last = RunDate.parse(as_of).iso
        if self.engine != "delta-spark" and "dt" in table.partition_by:
            _, _, files = delta.live_files(self.uri(table), dt_to=last, storage_options=self.options)
            days = [d for f in files if (d := f.partition_values.get("dt"))]
            if not days:
                raise StorageError(f"{table.name} has no snapshot on or before {as_of}: run ingest first")
            return self.read(table, dt=max(days))
        df = self.read(table, dt_to=as_of)
        latest = df.agg(F.max("dt")).first()
        if latest is None or latest[0] is None:
            raise StorageError(f"{table.name} has no snapshot on or before {as_of}: run ingest first")
        return df.where(F.col("dt") == F.lit(latest[0]))


# A Python or Java exception line: `OSError: [Errno 28] ...`, `java.io.IOException: ...`.
_ERROR_LINE = re.compile(r"^\s*((?:[\w$]+\.)*\w*(?:Error|Exception|Exit)): (.+)$")
# Exceptions that only carry another one: their own line is not the cause.
_WRAPPERS = {"PythonException", "Py4JJavaError", "SparkException", "SparkRuntimeException"}


def failure_cause(exc: BaseException) -> str:
    """The line of a (possibly Spark-wrapped) exception that says what went wrong: the last
    error line of the innermost traceback in its text, else its first line."""
    text = re.sub(r"\n\s*(?:\x1b\[[0-9;]*m)*↳(?:\x1b\[[0-9;]*m)*\s*", ": ", str(exc))  # delta-rs's causes
    causes = [
        f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
        for line in text.splitlines()
        if (m := _ERROR_LINE.match(line)) and m.group(1).rsplit(".", 1)[-1] not in _WRAPPERS
    ]
    if causes:
        return causes[-1][:500]
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}"[:500]


def replace_where_sql(where: Mapping[str, str]) -> str:
    """replaceWhere predicate for delta-spark from partition column -> value."""
    parts = []
    for col, value in where.items():
        escaped = value.replace("'", "''")
        parts.append(f"`{col}` = '{escaped}'")
    return " AND ".join(parts)
