"""Stage 1, ingest: read the configured source, check every row, write good rows to behaviors,
items, users and env_signals and bad rows to quarantine, and prove no row was lost.

    python -m jobs.ingest run.dt=2025-10-28 [data=canonical data.path=...] [ingest.until=...]
"""

from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.stage import StageContext, main_for
from recgpt.errors import RowCountMismatchError, SourceError
from recgpt.tables import BEHAVIORS, ENV_SIGNALS, ITEMS, QUARANTINE, USERS, TableSpec
from udfs import validation as v
from udfs.sources import read_source
from udfs.warehouse import Lineage, spec_of

STAGE = "ingest"


def run(ctx: StageContext) -> None:
    cfg = ctx.cfg
    raw = read_source(ctx.spark, cfg)
    until = str(cfg.ingest.until)

    checked: dict[str, DataFrame] = {}
    checked["items"] = v.check_items(raw.tables["items"], max_title_chars=int(cfg.ingest.max_title_chars))
    if "users" in raw.tables:
        checked["users"] = v.check_users(raw.tables["users"])
    if "env_signals" in raw.tables:
        checked["env_signals"] = v.check_env_signals(raw.tables["env_signals"])
    good_items = v.good(checked["items"]).select("item_id")
    checked["behaviors"] = v.check_behaviors(
        raw.tables["behaviors"],
        good_items,
        until=until,
        min_ts=str(cfg.ingest.min_ts),
        epoch_unit=raw.epoch_unit,
    )
    for df in checked.values():
        df.persist(StorageLevel.MEMORY_AND_DISK)

    counts = {name: _counts(df) for name, df in checked.items()}
    empty = [name for name in ("behaviors", "items") if counts[name][0] == 0]
    if empty:
        raise SourceError(f"source {cfg.data.source!r} gave no rows for {empty}: nothing to ingest")
    limit = float(cfg.ingest.max_quarantine_fraction)
    over = [name for name, (n_in, n_bad) in counts.items() if n_in and n_bad / n_in > limit]
    if over:
        raise SourceError(
            "; ".join(f"{counts[n][1]:,} of {counts[n][0]:,} {n} rows failed their checks" for n in over)
            + f" (> {limit:.0%} each): is the source in the format it claims? First reasons:\n"
            + "\n".join(_preview(v.bad(checked[n], n)) for n in over)
        )

    lineage = ctx.lineage
    targets: dict[str, tuple[TableSpec, str]] = {
        "items": (ITEMS, "replace"),
        "users": (USERS, "replace"),
        "env_signals": (ENV_SIGNALS, "replace_partitions"),
        "behaviors": (BEHAVIORS, "replace_partitions"),
    }
    written: dict[str, int] = {}
    for name, df in checked.items():
        spec, mode = targets[name]
        result = ctx.warehouse.write(v.good(df), spec, mode=mode, lineage=lineage)  # type: ignore[arg-type]
        written[name] = result.rows
        ctx.report.wrote(spec.name, result.rows, result.version)

    quarantine = None
    for name, df in checked.items():
        part = v.bad(df, name)
        quarantine = part if quarantine is None else quarantine.unionByName(part)
    assert quarantine is not None
    q = ctx.warehouse.write(
        quarantine.withColumn("stage", F.lit(STAGE)),
        QUARANTINE,
        mode="replace",
        lineage=lineage,
        where={"dt": lineage.dt, "stage": STAGE},
    )
    ctx.report.wrote(QUARANTINE.name, q.rows, q.version)

    for name, df in raw.extra.items():
        result = ctx.warehouse.write(df, spec_of(name), mode="replace", lineage=lineage)
        ctx.report.wrote(name, result.rows, result.version)

    _reconcile(counts, written, q.rows, lineage)
    ctx.report.rows_in = sum(n for n, _ in counts.values())
    ctx.report.rows_out = sum(written.values())
    ctx.report.rows_quarantined = q.rows
    ctx.report.details["until"] = until
    for df in checked.values():
        df.unpersist()


def _counts(df: DataFrame) -> tuple[int, int]:
    row = df.agg(
        F.count(F.lit(1)).alias("n"), F.sum((F.size(v.REASONS) > 0).cast("long")).alias("bad")
    ).first()
    assert row is not None
    return int(row["n"]), int(row["bad"] or 0)


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


def _preview(df: DataFrame, n: int = 5) -> str:
    rows = df.select("source", "reason", "raw").limit(n).collect()
    return "\n".join(f"  {r['source']}: {r['reason']} <- {r['raw'][:200]}" for r in rows)


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
