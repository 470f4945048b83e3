"""Ingest: every malformed row lands in quarantine with its reason, counts add up, reruns of the
same date leave one copy, and a source that is mostly garbage stops the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tests.conftest import ROOT

ITEMS_CSV = """item_id,title,category,category_path,brand,price
i1,Northpeak waterproof hiking boots,hiking-boots,Sports > Boots,Northpeak,120.5
i2,Luma non-slip yoga mat,yoga,Sports > Yoga,Luma,30
i2,Luma non-slip yoga mat (dup),yoga,Sports > Yoga,Luma,30
i3,,cookware,,,-5
,Nameless thing,cookware,,,10
i4,Tidewell air fryer,small-appliances,Home > Appliances,Tidewell,not-a-price
"""

BEHAVIORS_CSV = """user_id,item_id,behavior,query,ts,rating
u1,i1,view,,2025-10-20 10:00:00,
u1,i1,purchase,,2025-10-21 11:00:00,
u1,i1,review,,2025-10-22 12:00:00,5
u2,,search,waterproof boots,2025-10-23 09:00:00,
u2,i2,fav,,2025-10-24T08:30:00,
u2,i2,clik,,2025-10-24 08:31:00,
,i2,view,,2025-10-24 08:32:00,
u3,i999,view,,2025-10-24 08:33:00,
u3,i2,view,,not-a-time,
u3,i2,view,,2999-01-01 00:00:00,
u3,i2,view,,1969-07-20 20:17:00,
u3,,search,,2025-10-25 10:00:00,
u3,,view,,2025-10-25 10:01:00,
u4,i2,review,,2025-10-25 10:02:00,NaN
u4,i3,view,,2025-10-25 10:03:00,
u4,i2,view
"""

USERS_CSV = """user_id,age,gender,region
u1,35,F,north-cn
u2,abc,M,south-cn
u3,200,F,east-cn
u1,36,F,north-cn
"""

EXPECTED_BAD_BEHAVIORS = {
    "unknown behavior",
    "missing user_id",
    "unknown item_id",
    "unparseable ts",
    "ts after ingest end date 2025-10-28",
    "ts before 1995-01-01",
    "search without query",
    "missing item_id",
    "rating is NaN",
    "missing ts",
}


def make_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for name, text in (("items", ITEMS_CSV), ("behaviors", BEHAVIORS_CSV), ("users", USERS_CSV)):
        (src / name).mkdir(parents=True)
        (src / name / "part-0.csv").write_text(text)
    return src


def run_ingest(tmp_path: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.ingest",
            "run.dt=2025-10-28",
            "data=canonical",
            f"data.path={tmp_path / 'src'}",
            "data.format=csv",
            f"storage.warehouse={tmp_path / 'wh'}",
            "spark.master='local[2]'",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def table(tmp_path: Path, name: str):
    return DeltaTable(str(tmp_path / "wh" / name)).to_pandas()


@pytest.mark.slow
def test_malformed_rows_are_quarantined_with_reasons_and_a_rerun_leaves_one_copy(tmp_path, project_env):
    make_source(tmp_path)
    # The crafted files are mostly bad rows on purpose: lift the garbage-source guard.
    proc = run_ingest(tmp_path, project_env, "ingest.max_quarantine_fraction=0.9")
    assert proc.returncode == 0, proc.stderr[-3000:]

    behaviors = table(tmp_path, "behaviors")
    items = table(tmp_path, "items")
    users = table(tmp_path, "users")
    quarantine = table(tmp_path, "quarantine")

    assert sorted(items.item_id) == ["i1", "i2"]
    assert sorted(users.user_id) == ["u1"]
    # Good behaviours: the view/purchase/review of u1, the search and the fav of u2.
    assert len(behaviors) == 5
    assert set(behaviors.behavior) == {"view", "purchase", "review", "search", "fav"}
    assert behaviors.loc[behaviors.behavior == "review", "rating"].tolist() == [5.0]

    bad_b = quarantine[quarantine.table_name == "behaviors"]
    reasons = {r for text in bad_b.reason for r in text.split("; ")}
    assert EXPECTED_BAD_BEHAVIORS <= reasons, EXPECTED_BAD_BEHAVIORS - reasons
    # Rows in == rows written + rows quarantined, for every table.
    assert len(behaviors) + len(bad_b) == BEHAVIORS_CSV.count("\n") - 1
    assert len(items) + (quarantine.table_name == "items").sum() == ITEMS_CSV.count("\n") - 1
    assert len(users) + (quarantine.table_name == "users").sum() == USERS_CSV.count("\n") - 1
    item_reasons = set(quarantine[quarantine.table_name == "items"].reason)
    assert {
        "duplicate item_id",
        "missing title; negative price",
        "missing item_id",
        "price is not a number",
    } <= item_reasons
    # Every quarantined row names its file and keeps the raw record.
    assert all(s.endswith("part-0.csv") for s in quarantine.source)
    # A line that parsed keeps its fields as JSON; a truncated one keeps its own text.
    assert "u4,i2,view" in set(quarantine.raw)
    assert all(json.loads(r) for r in quarantine.raw if r != "u4,i2,view")

    runs = table(tmp_path, "runs")
    assert runs.status.tolist() == ["success"]
    assert runs.rows_in[0] == runs.rows_out[0] + runs.rows_quarantined[0]

    # A rerun of the date replaces its rows: one copy, all of the second run.
    counts = {t: len(table(tmp_path, t)) for t in ("behaviors", "items", "users", "quarantine")}
    second = run_ingest(tmp_path, project_env, "ingest.max_quarantine_fraction=0.9")
    assert second.returncode == 0, second.stderr[-3000:]
    assert {t: len(table(tmp_path, t)) for t in counts} == counts
    assert len(set(table(tmp_path, "behaviors").run_id)) == 1
    assert len(table(tmp_path, "runs")) == 2


@pytest.mark.slow
def test_a_source_of_the_wrong_format_stops_with_a_clear_error(tmp_path, project_env):
    src = make_source(tmp_path)
    (src / "items" / "part-0.csv").write_text(ITEMS_CSV.split("i2,Luma non-slip yoga mat (dup)")[0])
    (src / "users" / "part-0.csv").write_text(USERS_CSV.split("u2,")[0])
    # Behaviours that are not CSV at all: every line fails its checks.
    (src / "behaviors" / "part-0.csv").write_text(
        "user_id,item_id,behavior,query,ts,rating\n" + "\x00\x01garbage\n" * 20
    )
    proc = run_ingest(tmp_path, project_env)
    assert proc.returncode == 1
    assert "ingest failed: 20 of 20 behaviors rows failed their checks (> 50% each)" in proc.stderr
    assert "Traceback" not in proc.stderr
    runs = table(tmp_path, "runs")
    assert runs.status.tolist() == ["failed"]
