"""Drill 4, a full disk mid-write: the warehouse on a small tmpfs, a ballast file leaving less
free space than a night's write needs, swept from "nothing free" to "almost enough" so the
disk fills while data files are written and, near the top, while the commit is.

Every failed write must leave the table at its previous version, readable, with its rows
unchanged, and say in one line which table failed and why (no space left on device). Once the
ballast is gone, the same write succeeds. The tmpfs needs root (or CAP_SYS_ADMIN): without it
the drill fails and says so instead of pretending.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from bench.drills import DrillResult
from recgpt.errors import StorageError
from recgpt.rundate import RunDate
from recgpt.tables import BEHAVIORS
from sparkio.warehouse import Lineage, Warehouse

DAY, OTHER_DAY = "2025-10-20", "2025-10-21"
TMPFS_BYTES = 8 * 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")  # tmpfs hands out whole pages


def run(workdir: Path, cases: int | None = None, spark: SparkSession | None = None) -> list[DrillResult]:
    levels = 12 if cases is None else max(cases, 3)
    mount = workdir / "tmpfs"
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount)],
        check=True,
        capture_output=True,
        text=True,
    )
    own_session = spark is None
    spark = spark or _session()
    try:
        return [_sweep(spark, mount, levels)]
    finally:
        if own_session:
            spark.stop()
        subprocess.run(["umount", str(mount)], check=False, capture_output=True)


def _sweep(spark: SparkSession, mount: Path, levels: int) -> DrillResult:
    started = time.perf_counter()
    result = DrillResult("disk.full_mid_write", cases=levels)
    wh = Warehouse(spark, str(mount / "wh"), engine="delta-rs")
    wh.write(
        _behaviors(spark, DAY, 2_000).unionByName(_behaviors(spark, OTHER_DAY, 500)),
        BEHAVIORS,
        mode="replace_partitions",
        lineage=_lineage("before"),
    )
    before, version = _rows(wh), wh.version(BEHAVIORS)
    night = _behaviors(spark, DAY, 60_000, seed=1).cache()
    data_pages, need = _bytes_needed(spark, mount, night)
    phases: dict[str, int] = {}
    for level in range(levels):
        # Free space from 0 to just under what the data files need, the later steps closer to it;
        # the last step leaves room for every data file but not for the commit's log entry.
        if level < levels - 1:
            free = int(data_pages * (1 - (1 - level / (levels - 1)) ** 2) * 0.98) // PAGE * PAGE
        else:
            free = data_pages
        ballast = _fill(mount, leave_free=free)
        try:
            wh.write(night, BEHAVIORS, mode="replace_partitions", lineage=_lineage(f"night-{level}"))
            result.failures.append(f"a write with {free:,} bytes free of {need:,} needed succeeded")
        except StorageError as exc:
            phases[_phase(str(exc))] = phases.get(_phase(str(exc)), 0) + 1
            _check_error(str(exc), result)
        except Exception as exc:
            result.failures.append(f"not a clear StorageError: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            ballast.unlink()
        _check_unchanged(wh, before, version, result)
    result.rows_in = len(before)
    result.rows_written = len(_rows(wh))
    # With the space back, the night's write goes through.
    wh.write(night, BEHAVIORS, mode="replace_partitions", lineage=_lineage("after"))
    after = _rows(wh)
    if sorted(r.split("|")[0] for r in after if r.endswith(f"|{DAY}")) != sorted(
        r.split("|")[0] for r in _as_rows(night)
    ):
        result.failures.append("the write after freeing space did not replace the day with the night's rows")
    result.details = {
        "bytes_needed": need,
        "data_file_bytes": data_pages,
        "tmpfs_bytes": TMPFS_BYTES,
        "failed_in": phases,
    }
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def _check_error(message: str, result: DrillResult) -> None:
    if not message.startswith("writing behaviors (") or "No space left on device" not in message:
        result.failures.append(f"the error does not name the table and the cause: {message[:300]}")
    if "\n" in message:
        result.failures.append("the error is not one line")


def _check_unchanged(wh: Warehouse, before: list[str], version: int | None, result: DrillResult) -> None:
    if wh.version(BEHAVIORS) != version:
        result.failures.append(f"the table moved from version {version} to {wh.version(BEHAVIORS)}")
    now = _rows(wh)
    result.rows_lost += len(set(before) - set(now))
    result.duplicates += len(now) - len(set(now))
    if sorted(now) != sorted(before):
        result.failures.append("the table's rows changed after a failed write")


def _phase(message: str) -> str:
    return "commit" if "commit to" in message else "data files"


def _bytes_needed(spark: SparkSession, mount: Path, night: DataFrame) -> tuple[int, int]:
    """What the night's write occupies on the tmpfs, in whole pages: its data files, and all of
    it with the log entry (written once to a scratch warehouse on the same tmpfs)."""
    scratch = Warehouse(spark, str(mount / "scratch"), engine="delta-rs")
    scratch.write(night, BEHAVIORS, mode="replace_partitions", lineage=_lineage("measure"))
    files = [f for f in (mount / "scratch").rglob("*") if f.is_file()]
    data = sum(_pages(f) for f in files if f.suffix == ".parquet")
    total = sum(_pages(f) for f in files)
    subprocess.run(["rm", "-rf", str(mount / "scratch")], check=True)
    return data, total


def _pages(path: Path) -> int:
    return -(-path.stat().st_size // PAGE) * PAGE


def _fill(mount: Path, leave_free: int) -> Path:
    """A ballast file taking all but `leave_free` bytes of the tmpfs."""
    stat = os.statvfs(mount)
    size = max(stat.f_bavail * stat.f_frsize - leave_free, 0)
    ballast = mount / "ballast"
    with open(ballast, "wb") as fh:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            fh.write(chunk[: min(size, len(chunk))])
            size -= len(chunk)
    return ballast


def _behaviors(spark: SparkSession, day: str, n: int, seed: int = 0) -> DataFrame:
    start = int(_dt.datetime.fromisoformat(day).replace(tzinfo=_dt.UTC).timestamp())
    return spark.range(n).select(
        F.concat(F.lit("u"), (F.col("id") % 997).cast("string")).alias("user_id"),
        F.concat(F.lit(f"i{seed}-"), F.col("id").cast("string")).alias("item_id"),
        F.lit("view").alias("behavior"),
        F.lit(None).cast("string").alias("query"),
        F.timestamp_seconds(F.lit(start) + F.col("id")).alias("ts"),
        F.lit(None).cast("double").alias("rating"),
        F.lit(day).cast("date").alias("dt"),
    )


def _rows(wh: Warehouse) -> list[str]:
    return _as_rows(wh.read(BEHAVIORS))


def _as_rows(df: DataFrame) -> list[str]:
    return [
        f"{r.user_id}/{r.item_id}/{r.ts.isoformat()}|{r.dt}"
        for r in df.select("user_id", "item_id", "ts", "dt").collect()
    ]


def _lineage(run_id: str) -> Lineage:
    return Lineage.now(RunDate.parse("2025-10-28"), run_id)


def _session() -> SparkSession:
    from sparkio.session import build_session

    conf = {
        "spark.sql.shuffle.partitions": 4,
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.memory": "2g",
    }
    return build_session({"master": "local[2]", "conf": conf, "log_level": "ERROR"}, "drill-disk")
