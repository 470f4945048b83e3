"""Delta Lake through delta-rs: task-side Parquet part writers and driver-side single commits.

Spark tasks call `PartWriter` to write Parquet files into the table folder and return `FileAdd`
records; the driver turns all of them into ONE Delta transaction with `commit`. Nothing is visible
to readers until that commit, so a failed write leaves the table at its previous version.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recgpt.errors import CommitConflictError, StorageError

log = logging.getLogger(__name__)

WriteMode = Literal["append", "replace", "replace_partitions"]


def table_uri(warehouse: str, name: str) -> str:
    return f"{warehouse.rstrip('/')}/{name}"


def _filesystem(uri: str, storage_options: Mapping[str, str] | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem task-side file IO uses. Object stores take their credentials from
    the environment here (storage_options configure delta-rs, which commits and plans reads)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(uri)
    if uri.startswith("file://"):
        return pafs.LocalFileSystem(), uri[len("file://") :]
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


def filesystem(uri: str, storage_options: Mapping[str, str] | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path of a warehouse location (local path or object-store URI)."""
    return _filesystem(uri, storage_options)


def partition_value_string(value: Any) -> str | None:
    """Delta's string encoding of a partition value."""
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _partition_dir(partition_by: Sequence[str], values: Sequence[str | None]) -> str:
    parts = []
    for col, val in zip(partition_by, values, strict=True):
        parts.append(f"{col}={'__HIVE_DEFAULT_PARTITION__' if val is None else val}")
    return "/".join(parts)


@dataclass(frozen=True)
class FileAdd:
    """A Parquet file written by a task and not yet committed."""

    path: str  # relative to the table root
    size: int
    partition_values: dict[str, str | None]
    num_records: int
    modification_time: int

    def to_action(self) -> Any:
        from deltalake.transaction import AddAction

        return AddAction(
            path=self.path,
            size=self.size,
            partition_values=self.partition_values,
            modification_time=self.modification_time,
            data_change=True,
            stats=json.dumps({"numRecords": self.num_records}),
        )


@dataclass
class PartWriter:
    """Writes one task's Arrow batches as Parquet files under the table root.

    Input that arrives grouped by partition values (the Spark side sorts within partitions) gives
    one file per partition value per task; files roll over at `max_rows_per_file`.
    """

    uri: str
    schema: pa.Schema  # full table schema, partition columns included
    partition_by: tuple[str, ...]
    # Partition values every row must carry (replaceWhere semantics); empty means no constraint.
    required: Mapping[str, str] = field(default_factory=dict)
    compression: str = "snappy"
    max_rows_per_file: int = 5_000_000
    row_group_rows: int = 131_072
    storage_options: Mapping[str, str] | None = None
    task_tag: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        self._fs, self._root = _filesystem(self.uri, self.storage_options)
        self._data_schema = pa.schema([f for f in self.schema if f.name not in self.partition_by])
        self._not_null = [f.name for f in self.schema if not f.nullable]
        self._adds: list[FileAdd] = []
        self._writer: pq.ParquetWriter | None = None
        self._current: tuple[str | None, ...] | None = None
        self._current_path = ""
        self._current_rows = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._seq = 0

    # -- public -----------------------------------------------------------------------------
    def write_batches(self, batches: Iterable[pa.RecordBatch]) -> list[FileAdd]:
        try:
            for batch in batches:
                if batch.num_rows:
                    self._write_batch(batch)
            self._close_file()
        except BaseException:
            self.discard()
            raise
        return list(self._adds)

    def discard(self) -> None:
        """Delete every file this writer produced (used when the task fails)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # already failing: cleanup is best effort
                pass
            self._writer = None
            self._adds.append(FileAdd(self._current_path, 0, {}, 0, 0))
        delete_files(self.uri, [a.path for a in self._adds], self.storage_options)
        self._adds.clear()

    # -- internals --------------------------------------------------------------------------
    def _conform(self, batch: pa.RecordBatch) -> pa.Table:
        table = pa.Table.from_batches([batch])
        missing = [n for n in self.schema.names if n not in table.column_names]
        if missing:
            raise StorageError(f"{self.uri}: batch lacks columns {missing}")
        table = table.select(self.schema.names)
        for name in self._not_null:
            nulls = table.column(name).null_count
            if nulls:
                raise StorageError(f"{self.uri}: {nulls} null value(s) in non-nullable column {name!r}")
        try:
            return table.cast(self.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            raise StorageError(f"{self.uri}: batch does not fit the table schema: {exc}") from exc

    def _write_batch(self, batch: pa.RecordBatch) -> None:
        table = self._conform(batch)
        if not self.partition_by:
            self._append((), table)
            return
        # One slice per distinct partition tuple; sorted input gives one or two per batch.
        key = self._partition_key(table)
        for value in pc.unique(key).to_pylist():
            part = table.filter(pc.equal(key, value))
            values = tuple(partition_value_string(part.column(c)[0].as_py()) for c in self.partition_by)
            self._check_required(values)
            self._append(values, part)

    def _partition_key(self, table: pa.Table) -> pa.ChunkedArray:
        strings = [pc.fill_null(pc.cast(table.column(c), pa.string()), "\x00") for c in self.partition_by]
        if len(strings) == 1:
            return strings[0]
        return pc.binary_join_element_wise(*strings, "\x1f")

    def _check_required(self, values: tuple[str | None, ...]) -> None:
        for col, val in zip(self.partition_by, values, strict=True):
            want = self.required.get(col)
            if want is not None and val != want:
                raise StorageError(
                    f"{self.uri}: row with {col}={val} in a write that replaces only {col}={want}"
                )

    def _append(self, values: tuple[str | None, ...], table: pa.Table) -> None:
        if values != self._current:
            self._close_file()
            self._current = values
        self._buffer.append(table.drop_columns(list(self.partition_by)) if self.partition_by else table)
        self._buffered += table.num_rows
        if self._buffered >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        data = pa.concat_tables(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        self._buffer, self._buffered = [], 0
        offset = 0
        while offset < data.num_rows:
            if self._writer is None:
                self._open_file()
            room = self.max_rows_per_file - self._current_rows
            chunk = data.slice(offset, room)
            assert self._writer is not None
            self._writer.write_table(chunk, row_group_size=self.row_group_rows)
            self._current_rows += chunk.num_rows
            offset += chunk.num_rows
            if self._current_rows >= self.max_rows_per_file:
                self._finish_file()

    def _open_file(self) -> None:
        assert self._current is not None
        prefix = _partition_dir(self.partition_by, self._current) if self.partition_by else ""
        name = f"part-{self._seq:05d}-{self.task_tag}.{self.compression}.parquet"
        self._seq += 1
        rel = f"{prefix}/{name}" if prefix else name
        full = f"{self._root.rstrip('/')}/{rel}"
        self._fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
        self._writer = pq.ParquetWriter(
            full, self._data_schema, filesystem=self._fs, compression=self.compression
        )
        self._current_path = rel
        self._current_rows = 0

    def _finish_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        full = f"{self._root.rstrip('/')}/{self._current_path}"
        info = self._fs.get_file_info(full)
        assert self._current is not None
        self._adds.append(
            FileAdd(
                path=self._current_path,
                size=int(info.size or 0),
                partition_values=dict(zip(self.partition_by, self._current, strict=True)),
                num_records=self._current_rows,
                modification_time=int(time.time() * 1000),
            )
        )

    def _close_file(self) -> None:
        self._flush()
        self._finish_file()


def delete_files(uri: str, paths: Iterable[str], storage_options: Mapping[str, str] | None = None) -> None:
    fs, root = _filesystem(uri, storage_options)
    for rel in paths:
        if not rel:
            continue
        try:
            fs.delete_file(f"{root.rstrip('/')}/{rel}")
        except (FileNotFoundError, OSError):
            pass


# -- driver side -------------------------------------------------------------------------------


def table_exists(uri: str, storage_options: Mapping[str, str] | None = None) -> bool:
    from deltalake import DeltaTable

    return bool(DeltaTable.is_deltatable(uri, storage_options=dict(storage_options or {})))


def _filters_for(
    mode: WriteMode, where: Mapping[str, str], adds: Sequence[FileAdd], partition_by: Sequence[str]
) -> list[tuple[str, str, Any]] | None:
    if mode == "replace":
        return [(col, "=", val) for col, val in where.items()]
    if mode == "replace_partitions":
        if len(partition_by) != 1:
            raise StorageError("replace_partitions needs exactly one partition column")
        col = partition_by[0]
        values = sorted({v for a in adds if (v := a.partition_values[col]) is not None})
        return [(col, "in", values)] if values else None
    return None


def commit(
    uri: str,
    schema: pa.Schema,
    partition_by: Sequence[str],
    adds: Sequence[FileAdd],
    mode: WriteMode,
    where: Mapping[str, str] | None = None,
    storage_options: Mapping[str, str] | None = None,
    retries: int = 5,
    description: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Commit every task's files as ONE Delta transaction (also when there are none, so every
    write leaves exactly one commit to find by its metadata).

    `replace` removes the rows matching `where` (partition columns only) - replaceWhere;
    `replace_partitions` removes the partitions the new files land in; `append` adds.
    """
    from deltalake import CommitProperties, DeltaTable
    from deltalake import Schema as DeltaSchema
    from deltalake.exceptions import CommitFailedError, DeltaError
    from deltalake.transaction import create_table_with_add_actions

    where = dict(where or {})
    if mode == "replace" and not where:
        raise StorageError("mode 'replace' needs a partition predicate (e.g. dt=<run date>)")
    unknown = [c for c in where if c not in partition_by]
    if unknown:
        raise StorageError(f"replace predicate on non-partition columns {unknown} of {uri}")
    opts = dict(storage_options or {})
    actions = [a.to_action() for a in adds]
    delta_schema = DeltaSchema.from_arrow(schema)
    props = CommitProperties(custom_metadata=dict(metadata or {}), max_commit_retries=retries)
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            if not table_exists(uri, opts):
                create_table_with_add_actions(
                    uri,
                    delta_schema,
                    actions,
                    mode="error",
                    partition_by=list(partition_by) or None,
                    name=uri.rstrip("/").rsplit("/", 1)[-1],
                    description=description,
                    storage_options=opts,
                    commit_properties=props,
                )
            else:
                table = DeltaTable(uri, storage_options=opts)
                filters = _filters_for(mode, where, adds, partition_by)
                delta_mode = "append" if mode == "append" or filters is None else "overwrite"
                table.create_write_transaction(
                    actions,
                    mode=delta_mode,
                    schema=delta_schema,
                    partition_by=list(partition_by) or None,
                    partition_filters=filters,
                    commit_properties=props,
                )
            return
        except CommitFailedError as exc:
            last = exc
            log.warning("commit to %s lost a race (attempt %d/%d): %s", uri, attempt + 1, retries + 1, exc)
        except DeltaError as exc:
            # Another writer created the table between our check and our create: retry as a write.
            if "already exists" in str(exc).lower() and attempt < retries:
                last = exc
                continue
            raise StorageError(f"commit to {uri} failed: {one_line(exc)}") from exc
        except OSError as exc:  # the log entry could not be written (a full disk, a lost mount)
            raise StorageError(f"commit to {uri} failed: {one_line(exc)}") from exc
        time.sleep(min(0.2 * 2**attempt, 3.0))
    raise CommitConflictError(
        f"commit to {uri} failed after {retries + 1} attempts because other writers kept committing "
        f"conflicting changes; rerun the stage (it is idempotent): {last}"
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def one_line(exc: BaseException) -> str:
    """delta-rs's error text on one line: it puts each cause on a line of its own behind an
    arrow ("Generic LocalFileSystem error / ↳ Unable to copy data to file / ↳ No space left on
    device"), and the last cause is the one an operator needs."""
    parts = [_ANSI.sub("", line).strip().lstrip("↳").strip() for line in str(exc).splitlines()]
    return ": ".join(p for p in parts if p)


@dataclass(frozen=True)
class LiveFile:
    """A data file of the current (or requested) table version, for read planning."""

    path: str  # absolute URI
    partition_values: dict[str, str | None]
    num_records: int
    size: int = 0


def pack_files(files: Sequence[LiveFile], target_bytes: int) -> list[list[LiveFile]]:
    """Group files, in order, into read splits of about `target_bytes` (a big file is its own
    split): one task per tiny day-partition file would spend its time starting, not reading."""
    splits: list[list[LiveFile]] = []
    current: list[LiveFile] = []
    size = 0
    for f in files:
        if current and size + f.size > target_bytes:
            splits.append(current)
            current, size = [], 0
        current.append(f)
        size += f.size
    if current:
        splits.append(current)
    return splits


def live_files(
    uri: str,
    version: int | None = None,
    dt_from: str | None = None,
    dt_to: str | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> tuple[pa.Schema, list[str], list[LiveFile]]:
    """Schema, partition columns and live files of a table, pruned to dt_from <= dt <= dt_to."""
    from deltalake import DeltaTable

    opts = dict(storage_options or {})
    if not table_exists(uri, opts):
        raise StorageError(f"no Delta table at {uri}: has the stage that writes it run?")
    table = DeltaTable(uri, version=version, storage_options=opts)
    features = set(table.protocol().reader_features or [])
    unsupported = features & {"deletionVectors", "columnMapping"}
    if unsupported:
        raise StorageError(
            f"{uri} uses reader features {sorted(unsupported)} that the delta-rs bridge does not "
            "read file by file; read it with delta-spark or deltalake.to_pyarrow_table instead"
        )
    schema = pa.schema(table.schema().to_arrow())
    partition_by = list(table.metadata().partition_columns)
    actions = pa.table(table.get_add_actions(flatten=True))
    root = table.table_uri.rstrip("/")
    files: list[LiveFile] = []
    for row in actions.to_pylist():
        pv = {c: _str_or_none(row.get(f"partition.{c}")) for c in partition_by}
        dt = pv.get("dt")
        if dt is not None and ((dt_from and dt < dt_from) or (dt_to and dt > dt_to)):
            continue
        files.append(
            LiveFile(
                f"{root}/{row['path']}", pv, int(row.get("num_records") or 0), int(row.get("size_bytes") or 0)
            )
        )
    files.sort(key=lambda f: f.path)
    return schema, partition_by, files


def _str_or_none(value: Any) -> str | None:
    return None if value is None else partition_value_string(value)


def read_file(
    file: LiveFile,
    schema: pa.Schema,
    storage_options: Mapping[str, str] | None = None,
    batch_rows: int = 65_536,
) -> Iterator[pa.RecordBatch]:
    """Read one live file as batches of the full table schema (partition columns filled in)."""
    fs, path = _filesystem(file.path, storage_options)
    parquet = pq.ParquetFile(path, filesystem=fs)
    for batch in parquet.iter_batches(batch_size=batch_rows):
        n = batch.num_rows
        columns = []
        for f in schema:
            if f.name in file.partition_values:
                raw = pa.array([file.partition_values[f.name]] * n, pa.string())
                columns.append(raw.cast(f.type))
            elif f.name in batch.schema.names:
                columns.append(batch.column(f.name).cast(f.type))
            else:  # column added to the table after this file was written
                columns.append(pa.nulls(n, f.type))
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def table_version(uri: str, storage_options: Mapping[str, str] | None = None) -> int | None:
    from deltalake import DeltaTable

    if not table_exists(uri, storage_options):
        return None
    return int(DeltaTable(uri, storage_options=dict(storage_options or {})).version())


def vacuum(
    uri: str, retention_hours: int = 168, storage_options: Mapping[str, str] | None = None
) -> list[str]:
    """Delete files no table version within the retention references (orphans of failed writes,
    files of replaced partitions); returns the deleted paths."""
    from deltalake import DeltaTable

    table = DeltaTable(uri, storage_options=dict(storage_options or {}))
    return list(
        table.vacuum(
            retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False, full=True
        )
    )
