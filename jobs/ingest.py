"""Stage 1, ingest: read the configured source, check every row, write good rows to behaviors,
items, users and env_signals and bad rows to quarantine, and prove no row was lost.

    python -m jobs.ingest run.dt=2025-10-28 [data=canonical data.path=...] [ingest.until=...]
"""

from __future__ import annotations

from omegaconf import DictConfig
from pyspark import StorageLevel
from pyspark.sql import functions as F

from jobs.stage import StageContext, main_for
from recgpt.delta import WriteMode
from recgpt.errors import RowCountMismatchError
from recgpt.rundate import RunDate
from recgpt.tables import BEHAVIORS, ENV_SIGNALS, ITEMS, QUARANTINE, USERS, TableSpec
from sparkio.sources import read_source
from sparkio.warehouse import Lineage
from udfs import validation as v

STAGE = "ingest"

# Where the good rows of each checked input go: snapshots replace the run date's partition,
# dated rows the partitions they fall in.
TARGETS: dict[str, tuple[TableSpec, WriteMode]] = {
    "items": (ITEMS, "replace"),
    "users": (USERS, "replace"),
    "env_signals": (ENV_SIGNALS, "replace_partitions"),
    "behaviors": (BEHAVIORS, "replace_partitions"),
}


def run(ctx: StageContext) -> None:
    cfg = ctx.cfg
    raw = read_source(ctx.spark, cfg, ctx.dt)
    until = _until(cfg)
    checked = v.check_inputs(
        raw.tables,
        until,
        min_ts=str(cfg.ingest.min_ts),
        max_title_chars=int(cfg.ingest.max_title_chars),
        epoch_unit=raw.epoch_unit,
    )
    for df in checked.values():
        df.persist(StorageLevel.MEMORY_AND_DISK)
    counts = {name: v.flagged_counts(df) for name, df in checked.items()}
    v.refuse_unusable(str(cfg.data.source), checked, counts, float(cfg.ingest.max_quarantine_fraction))

    wh, lineage = ctx.warehouse, ctx.lineage
    written: dict[str, int] = {}
    for name, df in checked.items():
        spec, mode = TARGETS[name]
        result = wh.write(v.good(df), spec, mode=mode, lineage=lineage)
        written[name] = result.rows
        ctx.report.wrote(spec.name, result.rows, result.version)
    q = wh.write(
        v.quarantine(checked).withColumn("stage", F.lit(STAGE)),
        QUARANTINE,
        mode="replace",
        lineage=lineage,
        where={"dt": ctx.dt, "stage": STAGE},
    )
    ctx.report.wrote(QUARANTINE.name, q.rows, q.version)
    for spec, df in raw.extra.items():
        result = wh.write(df, spec, mode="replace", lineage=lineage)
        ctx.report.wrote(spec.name, result.rows, result.version)

    _reconcile(counts, written, q.rows, lineage)
    ctx.report.rows_in = sum(n for n, _ in counts.values())
    ctx.report.rows_out = sum(written.values())
    ctx.report.rows_quarantined = q.rows
    ctx.report.details["until"] = until.iso
    for df in checked.values():
        df.unpersist()


def _until(cfg: DictConfig) -> RunDate:
    """The last day behaviours may fall on (`ingest.until`, by default derived from run.dt)."""
    return RunDate.parse(cfg.ingest.until, "ingest.until")


def _reconcile(
    counts: dict[str, tuple[int, int]], written: dict[str, int], quarantined: int, lineage: Lineage
) -> None:
    """rows in == rows written + rows quarantined, per table and in total (from the commits)."""
    problems = [
        f"{name}: in={n_in:,} written={written[name]:,} quarantined={n_bad:,}"
        for name, (n_in, n_bad) in counts.items()
        if n_in != written[name] + n_bad
    ]
    expected_bad = sum(b for _, b in counts.values())
    if quarantined != expected_bad:
        problems.append(f"quarantine commit has {quarantined:,} rows, checks flagged {expected_bad:,}")
    if problems:
        raise RowCountMismatchError(f"ingest dt={lineage.dt} lost or duplicated rows: " + "; ".join(problems))


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
