"""Ingest in the test's own Spark session: a typed Parquet source and the synthetic source, with
the stage's run record and its row-count reconciliation."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from jobs import ingest
from jobs.stage import execute, open_context
from recgpt.config import load_config
from recgpt.errors import ConfigError, RowCountMismatchError
from recgpt.rundate import RunDate


def _ctx(spark, tmp_path, *overrides: str):
    cfg = load_config([f"storage.warehouse={tmp_path / 'wh'}", "run.dt=2025-10-28", *overrides])
    return open_context(cfg, "ingest", spark)


def test_typed_parquet_source(spark, tmp_path):
    src = tmp_path / "src"
    (src / "items").mkdir(parents=True)
    (src / "behaviors").mkdir()
    pq.write_table(
        pa.table(
            {
                "item_id": ["a", "b"],
                "title": ["red wool scarf", "oak desk"],
                "category": ["scarves", "desks"],
                "price": [12.0, 99.0],
            }
        ),
        src / "items" / "p.parquet",
    )
    ts = [dt.datetime(2025, 10, d, 12, tzinfo=dt.UTC) for d in (20, 21, 22, 29)]
    pq.write_table(
        pa.table(
            {
                "user_id": ["u1", "u1", "u2", "u2"],
                "item_id": ["a", "b", "zz", "a"],
                "behavior": ["view", "cart", "view", "fav"],
                "ts": ts,
            }
        ),
        src / "behaviors" / "p.parquet",
    )
    ctx = _ctx(spark, tmp_path, "data=canonical", f"data.path={src}", "ingest.max_quarantine_fraction=0.9")
    report = execute(ctx, ingest.run)
    assert (report.rows_in, report.rows_out, report.rows_quarantined) == (6, 4, 2)
    q = DeltaTable(str(tmp_path / "wh" / "quarantine")).to_pandas().sort_values("reason")
    assert q.reason.tolist() == ["ts after ingest end date 2025-10-28", "unknown item_id"]
    b = DeltaTable(str(tmp_path / "wh" / "behaviors")).to_pandas()
    assert sorted(b.dt.astype(str)) == ["2025-10-20", "2025-10-21"]
    # The optional inputs are simply absent: no users or env_signals tables appear.
    assert not (tmp_path / "wh" / "users").exists()


def test_synthetic_source_writes_ground_truth_and_signals(spark, tmp_path):
    ctx = _ctx(
        spark, tmp_path, "data.users=30", "data.items=300", "data.history_days=60", "data.holdout_days=7"
    )
    report = execute(ctx, ingest.run)
    tables = report.details["tables"]
    assert tables["users"]["rows"] == 30
    assert tables["planted_personas"]["rows"] >= 30
    assert tables["env_signals"]["rows"] == 6 * (60 + 7)
    assert report.rows_in == report.rows_out + report.rows_quarantined
    behaviors = DeltaTable(str(tmp_path / "wh" / "behaviors")).to_pandas()
    # History before the run date and a held-out week after it.
    assert behaviors.dt.min().isoformat() >= "2025-08-29"
    assert behaviors.dt.max().isoformat() <= "2025-11-03"
    assert (behaviors.ts >= "2025-10-28").any()
    runs = DeltaTable(str(tmp_path / "wh" / "runs")).to_pandas()
    assert runs.iloc[0].rows_in == report.rows_in and runs.iloc[0].status == "success"


def test_an_anchored_world_is_the_later_dates_world_as_of_the_earlier_run(spark):
    from sparkio.sources import read_source

    e = RunDate.parse("2025-10-28")
    t = e.minus(14)
    world = ["data.users=6", "data.items=100", "data.history_days=60", "data.holdout_days=7"]

    def source(dt: RunDate, *extra: str):
        cfg = load_config([f"run.dt={dt}", *world, *extra])
        inputs = read_source(spark, cfg, dt)
        rows = {
            name: sorted(tuple(str(v) for v in r) for r in inputs.tables[name].collect())
            for name in ("behaviors", "env_signals")
        }
        return rows, cfg

    later, _ = source(e)
    earlier, cfg = source(t, f"data.anchor_dt={e}")
    # The anchored run sees E's world up to its own ingest.until (T + the held-out week), no more.
    cutoff = RunDate.parse(cfg.ingest.until).plus(1).iso
    ts = 4  # (user_id, item_id, behavior, query, ts, rating, source)
    seen = [r for r in later["behaviors"] if r[ts] == "None" or r[ts] < cutoff]
    assert earlier["behaviors"] == seen
    assert 0 < len(seen) < len(later["behaviors"])
    assert earlier["env_signals"] == [r for r in later["env_signals"] if r[0] < cutoff]
    with pytest.raises(ConfigError, match=r"anchor_dt=2025-10-28 is before run\.dt=2025-10-29"):
        source(e.plus(1), f"data.anchor_dt={e}")


def test_reconciliation_catches_a_lost_row():
    from sparkio.warehouse import Lineage

    lineage = Lineage.now(RunDate.parse("2025-10-28"), "r")
    with pytest.raises(
        RowCountMismatchError, match=r"ingest dt=2025-10-28 lost .*behaviors: in=10 written=8 quarantined=1"
    ):
        ingest._reconcile({"behaviors": (10, 1)}, {"behaviors": 8}, 1, lineage)
    ingest._reconcile({"behaviors": (10, 1)}, {"behaviors": 9}, 1, lineage)


def test_the_ingest_end_date_comes_from_config_and_a_bad_one_names_itself():
    cfg = load_config(["run.dt=2025-12-20", "data.holdout_days=14"])
    # The synthetic source's default: the end of its held-out window, across the year end.
    assert ingest._until(cfg) == RunDate.parse("2026-01-03")
    bad = load_config(["run.dt=2025-10-28", "ingest.until=2025-13-01"])
    with pytest.raises(ConfigError, match=r"^ingest\.until must be YYYY-MM-DD, not '2025-13-01'$"):
        ingest._until(bad)


def test_a_file_without_required_columns_names_itself(spark, tmp_path):
    from recgpt.errors import SourceError
    from sparkio.sources import read_canonical

    (tmp_path / "behaviors").mkdir()
    (tmp_path / "items").mkdir()
    pq.write_table(
        pa.table({"user_id": ["u"], "item_id": ["a"], "behavior": ["view"]}),
        tmp_path / "behaviors" / "p.parquet",
    )
    pq.write_table(
        pa.table({"item_id": ["a"], "title": ["t"], "category": ["c"]}), tmp_path / "items" / "p.parquet"
    )
    with pytest.raises(SourceError, match=r"behaviors lacks required column\(s\) \['ts'\]"):
        read_canonical(spark, str(tmp_path), "parquet")


def test_a_missing_source_folder_is_a_clear_error(spark, tmp_path):
    from recgpt.errors import SourceError

    ctx = _ctx(spark, tmp_path, "data=canonical", f"data.path={tmp_path / 'src'}", "data.format=csv")
    with pytest.raises(SourceError, match=f"canonical source folder {tmp_path / 'src'} does not exist"):
        execute(ctx, ingest.run)
    assert DeltaTable(str(tmp_path / "wh" / "runs")).to_pandas().status.tolist() == ["failed"]
