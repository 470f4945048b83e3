"""Spark Python Data Source `recgpt_delta`: Delta tables through delta-rs, for Spark without the
Delta jars. Tasks write Parquet parts and return them; the driver commits ONE Delta transaction.

Reads plan from the live files of the requested table version (pruned by dt range), so removed
files are never read; small files are packed into splits of about `split_bytes` (a big file is its
own split) so a table of many tiny day partitions does not cost one task per file. Options are
strings; `sparkio.warehouse.Warehouse` is the typed front door.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
from pyspark.sql.datasource import (
    DataSource,
    DataSourceArrowWriter,
    DataSourceReader,
    InputPartition,
    WriterCommitMessage,
)
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

from recgpt import delta
from sparkio.worker import settle_once

FORMAT = "recgpt_delta"


def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def decode_schema(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


@dataclass
class PartsWritten(WriterCommitMessage):
    adds: list[delta.FileAdd]


class _FilesPartition(InputPartition):
    def __init__(self, files: list[delta.LiveFile]) -> None:
        super().__init__(files[0].path if files else "<no files>")
        self.files = files


class DeltaRsDataSource(DataSource):
    """Options: path (table URI), arrow_schema (base64 IPC, writes), partition_by (comma list),
    mode (append | replace | replace_partitions), where (JSON of partition column -> value),
    version / dt_from / dt_to / split_bytes (reads), storage_options (JSON), commit_retries,
    max_rows_per_file, compression, description, metadata (JSON)."""

    @classmethod
    def name(cls) -> str:
        return FORMAT

    def _storage_options(self) -> dict[str, str]:
        return json.loads(self.options.get("storage_options", "{}"))

    def _version(self) -> int | None:
        v = self.options.get("version")
        return int(v) if v not in (None, "") else None

    def schema(self) -> StructType:
        arrow_schema, _, _ = delta.live_files(
            self.options["path"], self._version(), storage_options=self._storage_options()
        )
        return from_arrow_schema(arrow_schema)

    def reader(self, schema: StructType) -> DataSourceReader:
        arrow_schema, _, files = delta.live_files(
            self.options["path"],
            self._version(),
            dt_from=self.options.get("dt_from") or None,
            dt_to=self.options.get("dt_to") or None,
            storage_options=self._storage_options(),
        )
        target = int(self.options.get("split_bytes", str(128 * 1024 * 1024)))
        return DeltaRsReader(arrow_schema, delta.pack_files(files, target), self._storage_options())

    def writer(self, schema: StructType, overwrite: bool) -> DeltaRsWriter:
        opts = self.options
        arrow_schema = decode_schema(opts["arrow_schema"])
        partition_by = tuple(p for p in opts.get("partition_by", "").split(",") if p)
        mode = opts.get("mode", "replace" if overwrite else "append")
        return DeltaRsWriter(
            uri=opts["path"],
            schema=arrow_schema,
            partition_by=partition_by,
            mode=mode,
            where=json.loads(opts.get("where", "{}")),
            storage_options=self._storage_options(),
            retries=int(opts.get("commit_retries", "5")),
            max_rows_per_file=int(opts.get("max_rows_per_file", "5000000")),
            compression=opts.get("compression", "snappy"),
            description=opts.get("description") or None,
            metadata=json.loads(opts.get("metadata", "{}")),
        )


class DeltaRsReader(DataSourceReader):
    def __init__(
        self, schema: pa.Schema, splits: Sequence[list[delta.LiveFile]], storage_options: dict[str, str]
    ):
        self.arrow_schema = schema
        self.splits = list(splits)
        self.storage_options = storage_options

    def partitions(self) -> Sequence[InputPartition]:
        # An empty table (or dt range) still needs one partition: with none, Spark would call
        # read() without one.
        return [_FilesPartition(files) for files in self.splits] or [_FilesPartition([])]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, _FilesPartition)
        settle_once()
        for file in partition.files:
            yield from delta.read_file(file, self.arrow_schema, self.storage_options)


class DeltaRsWriter(DataSourceArrowWriter):
    def __init__(
        self,
        uri: str,
        schema: pa.Schema,
        partition_by: tuple[str, ...],
        mode: str,
        where: dict[str, str],
        storage_options: dict[str, str],
        retries: int,
        max_rows_per_file: int,
        compression: str,
        description: str | None,
        metadata: dict[str, object],
    ) -> None:
        self.uri = uri
        self.arrow_schema = schema
        self.partition_by = partition_by
        self.mode = mode
        self.where = where
        self.storage_options = storage_options
        self.retries = retries
        self.max_rows_per_file = max_rows_per_file
        self.compression = compression
        self.description = description
        self.metadata = metadata

    def write(self, iterator: Iterator[pa.RecordBatch]) -> PartsWritten:
        settle_once()
        writer = delta.PartWriter(
            uri=self.uri,
            schema=self.arrow_schema,
            partition_by=self.partition_by,
            required=self.where if self.mode == "replace" else {},
            compression=self.compression,
            max_rows_per_file=self.max_rows_per_file,
            storage_options=self.storage_options,
        )
        return PartsWritten(writer.write_batches(iterator))

    def commit(self, messages: list[WriterCommitMessage | None]) -> None:
        adds = [a for m in messages if isinstance(m, PartsWritten) for a in m.adds]
        try:
            delta.commit(
                self.uri,
                self.arrow_schema,
                self.partition_by,
                adds,
                self.mode,  # type: ignore[arg-type]
                where=self.where,
                storage_options=self.storage_options,
                retries=self.retries,
                description=self.description,
                metadata={**self.metadata, "numOutputRows": sum(a.num_records for a in adds)},
            )
        except BaseException:
            delta.delete_files(self.uri, [a.path for a in adds], self.storage_options)
            raise

    def abort(self, messages: list[WriterCommitMessage | None]) -> None:
        adds = [a for m in messages if isinstance(m, PartsWritten) for a in m.adds]
        delta.delete_files(self.uri, [a.path for a in adds], self.storage_options)
