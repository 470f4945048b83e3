"""Rollback of a bad night (jobs.rollback): a good run, a bad run of the same date, a later run of
another date; the rollback puts the date's partitions back as they were before the bad run, in
every table it wrote, leaves the other date and the other variant alone, and records itself."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql.pandas.types import from_arrow_schema

from jobs import rollback
from jobs.stage import StageContext, execute, open_context
from recgpt.config import load_config
from recgpt.errors import RecGPTError
from recgpt.rollback import RollbackError
from recgpt.tables import MINING_FAILURES, USER_INTENT_TAGS
from tests.handmade import V1, V2, tag

DT, LATER = "2025-10-28", "2025-10-29"
LINEAGE = ("dt", "run_id", "created_at")


def context(spark, wh_dir, dt: str, stage: str, run_id: str | None = None, *extra: str) -> StageContext:
    overrides = [f"storage.warehouse={wh_dir}", f"run.dt={dt}", *extra]
    if run_id:
        overrides.append(f"run.run_id={run_id}")
    return open_context(load_config(overrides), stage, spark)


def mined(spark, wh_dir, dt: str, run_id: str, tags: list[str], variant=V2, failed=()) -> None:
    """A stand-in mining run: replaces the variant's tags and failures for dt and records both
    writes in `runs`, as mine_intents does."""

    def stage(ctx: StageContext) -> None:
        wh = ctx.warehouse
        where = {"dt": ctx.dt, "pipeline": variant["pipeline"], "context_mode": variant["context_mode"]}
        rows = [tag(f"u{i}", 1, t, variant) for i, t in enumerate(tags)]
        for spec, data in (
            (USER_INTENT_TAGS, rows),
            (
                MINING_FAILURES,
                [{"user_id": u, "step": "expert", "reason": "no_valid_tag"} | variant for u in failed],
            ),
        ):
            schema = pa.schema([f for f in spec.schema if f.name not in LINEAGE])
            frame = spark.createDataFrame(
                [{c: r.get(c) for c in schema.names} for r in data], schema=from_arrow_schema(schema)
            )
            written = wh.write(frame, spec, mode="replace", lineage=ctx.lineage, where=where)
            ctx.report.wrote(spec.name, written.rows, written.version)

    execute(context(spark, wh_dir, dt, "mine_intents", run_id), stage)


def content(wh_dir, name: str) -> pd.DataFrame:
    frame = DeltaTable(f"{wh_dir}/{name}").to_pandas()
    keys = [c for c in ("dt", "pipeline", "context_mode", "user_id", "rank") if c in frame.columns]
    return frame.drop(columns=["created_at"]).sort_values(keys).reset_index(drop=True)


def undo(spark, wh_dir, dt: str, *extra: str):
    return execute(context(spark, wh_dir, dt, "rollback", None, *extra), rollback.run)


def on(frame: pd.DataFrame, day: str) -> pd.DataFrame:
    return frame[frame.dt.astype(str) == day].reset_index(drop=True)


def test_a_bad_night_is_rolled_back_to_the_tables_before_it(spark, warehouse_dir, capsys):
    wh = warehouse_dir
    mined(spark, wh, DT, "good", ["trail running shoes", "yoga mat"], failed=["u9"])
    mined(spark, wh, DT, "v1", ["camping tent"], variant=V1)  # another variant of the date
    before = {name: content(wh, name) for name in ("user_intent_tags", "mining_failures")}

    mined(spark, wh, DT, "bad", ["mike is a creative", "mike is a creative", "seasoned creative"])
    mined(spark, wh, LATER, "later", ["rain jacket"], failed=["u7"])  # the next night, after the bad one
    later = {name: on(content(wh, name), LATER) for name in before}

    report = undo(spark, wh, DT, "rollback.run_id=bad")
    for name, table in before.items():
        now = content(wh, name)
        # The bad run's date: back to exactly what it held before, V1's partition included.
        pd.testing.assert_frame_equal(on(now, DT), on(table, DT))
        # The later night's rows are untouched.
        pd.testing.assert_frame_equal(on(now, LATER), later[name])
    assert "run bad" in report.details["rolled_back"]
    assert set(report.details["restored"]) == {"user_intent_tags", "mining_failures"}
    assert "── rollback · dt=2025-10-28 · SUCCESS" in capsys.readouterr().out

    # The rollback is in `runs`, beside the records of the run it undid.
    runs = DeltaTable(f"{wh}/runs").to_pandas()
    record = runs[runs.stage == "rollback"]
    assert len(record) == 1 and record.status.iloc[0] == "success"
    assert json.loads(record.details.iloc[0])["rolled_back"].startswith("run bad:")
    assert {"good", "bad", "later"} <= set(runs.run_id)

    # Undone once: a second rollback of the same run is refused.
    with pytest.raises(RollbackError, match="already rolled back"):
        undo(spark, wh, DT, "rollback.run_id=bad")


def test_a_run_with_a_later_run_of_the_same_date_is_refused_and_nothing_changes(spark, warehouse_dir):
    wh = warehouse_dir
    mined(spark, wh, DT, "first", ["trail running shoes"])
    mined(spark, wh, DT, "second", ["yoga mat"])
    before = {name: DeltaTable(f"{wh}/{name}").version() for name in ("user_intent_tags", "mining_failures")}
    with pytest.raises(RollbackError, match=r"version \d+, committed after the run"):
        undo(spark, wh, DT, "rollback.run_id=first")
    # Checked before any table was changed.
    assert {name: DeltaTable(f"{wh}/{name}").version() for name in before} == before
    # The date's newest run is the default; once it is undone, the earlier run can be too, and a
    # table's first write is undone to an empty partition.
    undo(spark, wh, DT)
    assert list(content(wh, "user_intent_tags").tag) == ["trail running shoes"]
    undo(spark, wh, DT, "rollback.run_id=first", "rollback.stage=mine_intents")
    assert content(wh, "user_intent_tags").empty


def test_nothing_to_roll_back_is_a_clear_error(spark, warehouse_dir):
    mined(spark, warehouse_dir, DT, "only", ["yoga mat"])
    with pytest.raises(RecGPTError, match="no successful records"):
        undo(spark, warehouse_dir, DT, "rollback.run_id=missing")
    with pytest.raises(RecGPTError, match="no successful run of stage covisit"):
        undo(spark, warehouse_dir, DT, "rollback.stage=covisit")
