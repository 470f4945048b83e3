"""Rollback of a bad night: every table a run of the date wrote goes back, in the partitions that
run changed, to its content before the run (recgpt/rollback.py, from Delta's history). Later
commits for other dates stay; `runs` keeps the bad run's records and gains the rollback's.

    python -m jobs.rollback run.dt=2025-10-28                          # the date's newest run
    python -m jobs.rollback run.dt=2025-10-28 rollback.stage=mine_intents
    python -m jobs.rollback run.dt=2025-10-28 rollback.run_id=<run id>
    make rollback DT=2025-10-28 [STAGE=mine_intents] [RUN_ID=...]

Which writes a run made comes from its `runs` records (each stage lists the table versions it
committed). Nothing is changed when any table cannot be restored exactly: every table is
checked first, then restored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pyspark.sql import functions as F

from jobs.stage import StageContext, main_for
from recgpt.errors import RecGPTError
from recgpt.rollback import apply, plan
from recgpt.tables import ALL_TABLES, RUNS

STAGE = "rollback"


def chosen_run(ctx: StageContext, run_id: str | None, stage: str | None) -> tuple[str, list[Any]]:
    """The run to undo (the given id, or the date's newest successful run of any stage but a
    rollback, of `stage` when given) and its successful `runs` records for the date."""
    runs = ctx.warehouse.read(RUNS, dt=ctx.dt).where(
        (F.col("status") == "success") & (F.col("stage") != STAGE)
    )
    if stage:
        runs = runs.where(F.col("stage") == stage)
    if run_id is None:
        newest = runs.orderBy(F.col("started_at").desc()).select("run_id").first()
        if newest is None:
            which = f" of stage {stage}" if stage else ""
            raise RecGPTError(f"no successful run{which} for dt={ctx.dt} in runs: nothing to roll back")
        run_id = str(newest["run_id"])
    records = runs.where(F.col("run_id") == run_id).collect()
    if not records:
        raise RecGPTError(
            f"run {run_id} has no successful records for dt={ctx.dt}" + (f" ({stage})" if stage else "")
        )
    return run_id, records


def written_versions(records: list[Any]) -> dict[str, list[int]]:
    """table -> the versions the run's stages committed (from each record's details.tables;
    `llm_calls[<stage>]` is the llm_calls ledger). The runs table itself is never rolled back."""
    versions: dict[str, list[int]] = {}
    for record in records:
        tables: Mapping[str, Any] = json.loads(record["details"] or "{}").get("tables") or {}
        for key, info in tables.items():
            name = key.split("[", 1)[0]
            if name == RUNS.name:
                continue
            if name not in ALL_TABLES:
                raise RecGPTError(f"run {record['run_id']} ({record['stage']}) wrote unknown table {key}")
            versions.setdefault(name, []).append(int(info["version"]))
    return versions


def run(ctx: StageContext) -> None:
    cfg = ctx.cfg.rollback
    wh = ctx.warehouse
    run_id, records = chosen_run(ctx, cfg.get("run_id") or None, cfg.get("stage") or None)
    versions = written_versions(records)
    if not versions:
        raise RecGPTError(f"run {run_id} recorded no table writes for dt={ctx.dt}: nothing to roll back")
    metadata = {"recgpt.rollback_of": run_id, "recgpt.run_id": ctx.lineage.run_id, "recgpt.dt": ctx.dt.iso}
    # Every table is checked before any is changed.
    plans = [plan(wh.uri(ALL_TABLES[name]), versions[name], wh.options) for name in sorted(versions)]
    restored = [apply(p, metadata) for p in plans]
    r = ctx.report
    r.rows_in = len(records)
    r.rows_out = sum(x.rows for x in restored)
    r.rows_quarantined = 0
    r.details["rolled_back"] = f"run {run_id}: stages {', '.join(sorted(x['stage'] for x in records))}"
    for x in restored:
        r.wrote(x.table, x.rows, x.version)
        r.details.setdefault("restored", {})[x.table] = (
            f"undid v{', v'.join(map(str, x.undone))}: {x.partitions} partition(s) back to "
            f"{x.files} file(s), {x.rows:,} rows"
        )


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
