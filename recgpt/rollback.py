"""Undo a bad night from Delta's history: the partitions a run's commits changed go back to their
content before the run, in one new commit per table, by re-adding the data files that were live
then (no data is rewritten; the undone files stay in the history too, so a rollback can itself be
inspected). Nothing outside those partitions changes: other dates, other variants of the date.

A rollback is refused, naming the version, when a commit after the run changed one of its
partitions (a later run of the same date: roll that one back first), when a file it needs was
vacuumed, or when the partitions cannot be selected without touching others.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from recgpt import delta
from recgpt.errors import RecGPTError

Partition = tuple[tuple[str, str | None], ...]
# Commit metadata of a rollback: the versions it undid.
UNDONE = "recgpt.undone_versions"


class RollbackError(RecGPTError):
    """The rollback cannot restore the table exactly; nothing was changed."""


@dataclass(frozen=True)
class Restored:
    table: str
    undone: tuple[int, ...]  # the run's versions whose changes were undone
    version: int  # the rollback's commit
    partitions: int  # partitions restored
    files: int  # data files live again (the partitions' files before the run)
    rows: int


def commit_partitions(uri: str, version: int, options: Mapping[str, str] | None = None) -> set[Partition]:
    """The partitions one commit added or removed data files in (its log entry's actions)."""
    fs, root = delta.filesystem(uri, options)
    path = f"{root.rstrip('/')}/_delta_log/{version:020d}.json"
    try:
        with fs.open_input_stream(path) as stream:
            lines = stream.read().decode("utf-8").splitlines()
    except FileNotFoundError:
        raise RollbackError(f"{uri}: the log entry of version {version} is gone (log retention)") from None
    touched: set[Partition] = set()
    for line in lines:
        if not line.strip():
            continue
        action = json.loads(line)
        for kind in ("add", "remove"):
            if kind in action and action[kind].get("dataChange", True):
                values = action[kind].get("partitionValues") or {}
                touched.add(tuple(sorted(values.items())))
    return touched


@dataclass(frozen=True)
class Plan:
    """One table's rollback, checked and ready to commit."""

    uri: str
    table: str
    undone: tuple[int, ...]
    partitions: int
    filters: list[tuple[str, str, Any]]
    partition_by: list[str]
    actions: list[Any]  # deltalake AddActions of the files live before the run
    rows: int
    options: Mapping[str, str]


def plan(uri: str, versions: Sequence[int], options: Mapping[str, str] | None = None) -> Plan:
    """Check that the commits `versions` of the table at `uri` (one run's writes) can be undone
    exactly and prepare the commit that gives every partition they changed the files it had
    before the first of them; raises RollbackError otherwise. Changes nothing."""
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction

    opts = dict(options or {})
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    undone = sorted(set(versions))
    if not undone:
        raise RollbackError(f"{name}: no versions to undo")
    table = DeltaTable(uri, storage_options=opts)
    latest = int(table.version())
    if undone[-1] > latest:
        raise RollbackError(f"{name}: version {undone[-1]} does not exist (latest is {latest})")
    touched: set[Partition] = set()
    for version in undone:
        touched |= commit_partitions(uri, version, opts)
    # A later run that was rolled back since left its partitions as they were: its commits and
    # the rollback's cancel out.
    cancelled: set[int] = set()
    for entry in table.history():
        if UNDONE in entry and int(entry["version"]) > undone[0]:
            earlier = {int(v) for v in str(entry[UNDONE]).split(",")}
            if earlier & set(undone):
                raise RollbackError(f"{name}: the run was already rolled back (version {entry['version']})")
            cancelled |= {int(entry["version"]), *earlier}
    for version in range(undone[0] + 1, latest + 1):
        if (
            version not in undone
            and version not in cancelled
            and commit_partitions(uri, version, opts) & touched
        ):
            raise RollbackError(
                f"{name}: version {version}, committed after the run, changed the same partitions; "
                "roll back the later run first"
            )
    partition_by = list(table.metadata().partition_columns)
    filters = _filters(touched, partition_by)
    caught = {p for p in _live(uri, latest, opts) if _matches(p, filters)}
    if caught - touched:
        raise RollbackError(
            f"{name}: the run's partitions cannot be selected without {len(caught - touched)} "
            "other partition(s); restore them by hand from the table history"
        )
    before = (
        {p: files for p, files in _live(uri, undone[0] - 1, opts).items() if p in touched}
        if undone[0] > 0
        else {}
    )
    fs, root = delta.filesystem(uri, opts)
    now = int(_dt.datetime.now(_dt.UTC).timestamp() * 1000)
    actions = []
    rows = 0
    for partition, files in before.items():
        for f in files:
            if fs.get_file_info(f"{root.rstrip('/')}/{f['path']}").type == pafs.FileType.NotFound:
                raise RollbackError(
                    f"{name}: {f['path']}, live before the run, was vacuumed: the history can no "
                    "longer restore it"
                )
            records = int(f["num_records"] or 0)
            rows += records
            actions.append(
                AddAction(
                    path=f["path"],
                    size=int(f["size_bytes"]),
                    partition_values=dict(partition),
                    modification_time=now,
                    data_change=True,
                    stats=json.dumps({"numRecords": records}),
                )
            )
    return Plan(uri, name, tuple(undone), len(touched), filters, partition_by, actions, rows, opts)


def apply(p: Plan, metadata: Mapping[str, Any] | None = None) -> Restored:
    """Commit a plan: one transaction that removes the files of the run's partitions and makes
    their earlier files live again."""
    from deltalake import CommitProperties, DeltaTable
    from deltalake import Schema as DeltaSchema

    table = DeltaTable(p.uri, storage_options=dict(p.options))
    schema = DeltaSchema.from_arrow(table.schema().to_arrow())
    custom = {k: str(v) for k, v in (metadata or {}).items()} | {UNDONE: ",".join(map(str, p.undone))}
    props = CommitProperties(custom_metadata=custom)
    if p.filters:
        table.create_write_transaction(
            p.actions,
            mode="overwrite",
            schema=schema,
            partition_by=p.partition_by or None,
            partition_filters=p.filters,
            commit_properties=props,
        )
    else:  # an unpartitioned table: everything it holds is the run's
        table.create_write_transaction(p.actions, mode="overwrite", schema=schema, commit_properties=props)
    version = int(DeltaTable(p.uri, storage_options=dict(p.options)).version())
    return Restored(p.table, p.undone, version, p.partitions, len(p.actions), p.rows)


def _live(uri: str, version: int, options: Mapping[str, str]) -> dict[Partition, list[dict[str, Any]]]:
    """The data files live at `version`, by partition (path relative to the table root)."""
    import pyarrow as pa
    from deltalake import DeltaTable

    table = DeltaTable(uri, version=version, storage_options=dict(options))
    partition_by = list(table.metadata().partition_columns)
    out: dict[Partition, list[dict[str, Any]]] = {}
    for row in pa.table(table.get_add_actions(flatten=True)).to_pylist():
        values = {c: _str_or_none(row.get(f"partition.{c}")) for c in partition_by}
        out.setdefault(tuple(sorted(values.items())), []).append(row)
    return out


def _str_or_none(value: Any) -> str | None:
    return None if value is None else delta.partition_value_string(value)


def _filters(touched: set[Partition], partition_by: Sequence[str]) -> list[tuple[str, str, Any]]:
    """A conjunction selecting the touched partitions: per partition column, its values in them."""
    filters: list[tuple[str, str, Any]] = []
    for column in partition_by:
        values = sorted({dict(p).get(column) for p in touched}, key=lambda v: (v is None, v or ""))
        if None in values:
            raise RollbackError(f"partition column {column} is null in a changed partition")
        filters.append((column, "=", values[0]) if len(values) == 1 else (column, "in", values))
    return filters


def _matches(partition: Partition, filters: Sequence[tuple[str, str, Any]]) -> bool:
    values = dict(partition)
    return all(
        values.get(column) == value if op == "=" else values.get(column) in value
        for column, op, value in filters
    )
