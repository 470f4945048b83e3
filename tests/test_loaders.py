"""Each public-dataset loader on small crafted files with its format's quirks, the real
ml-100k sample when it is present, and the bad-input cases: every one ends in a quarantined row
with a reason or a clear error naming the file."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from jobs import ingest
from jobs.stage import execute, open_context
from recgpt.config import load_config
from recgpt.errors import SourceError

ML100K = Path(
    os.environ.get("RECGPT_ML100K", Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-100k")
)
FLAGS_COMEDY = "|".join(["0", "0", "0", "0", "0", "1"] + ["0"] * 13)
FLAGS_NONE = "|".join(["0"] * 19)


def run(spark, tmp_path, *overrides):
    cfg = load_config([f"storage.warehouse={tmp_path / 'wh'}", *overrides])
    return execute(open_context(cfg, "ingest", spark), ingest.run)


def read(tmp_path, name) -> pd.DataFrame:
    return DeltaTable(str(tmp_path / "wh" / name)).to_pandas()


def reasons(tmp_path, table) -> list[str]:
    q = read(tmp_path, "quarantine")
    return sorted(q[q.table_name == table].reason)


def test_ml100k_crafted(spark, tmp_path):
    src = tmp_path / "ml"
    src.mkdir()
    (src / "u.data").write_text(
        "1\t10\t4\t881250949\n"
        "2\t11\t5\t881250950\n"
        "1\t11\t3\n"  # truncated line: no timestamp
        "2\t10\tx\t881250951\n"  # rating is not a number
        "2\t10\t4\t-5\n"  # negative epoch
        "3\t12\t4\t881250952\n"  # item 12 has no genre flags but exists
    )
    (src / "u.item").write_bytes(
        (
            f"10|Café au lait (1993)|01-Jan-1993||http://x|{FLAGS_COMEDY}\n"
            f"11|Heat (1995)|01-Jan-1995||http://y|{FLAGS_COMEDY}\n"
            f"12|Untitled|01-Jan-1995||http://z|{FLAGS_NONE}\n"
        ).encode("latin-1")
    )
    (src / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|02138\n3|30|F|writer|T8H1N\n")
    report = run(
        spark,
        tmp_path,
        "data=movielens",
        f"data.path={src}",
        "run.dt=1998-04-23",
        "ingest.max_quarantine_fraction=0.9",
    )
    items = read(tmp_path, "items").set_index("item_id")
    assert items.loc["10", "title"] == "Café au lait (1993)"  # decoded as latin-1
    assert items.loc["10", "category"] == "Comedy"
    assert items.loc["10", "category_path"] == "Movies > Comedy"
    assert reasons(tmp_path, "items") == ["missing category"]
    users = read(tmp_path, "users").set_index("user_id")
    assert users.loc["1", "region"] == "us-west" and users.loc["2", "region"] == "us-east"
    assert users.loc["3", "region"] == "ca" and users.loc["1", "occupation"] == "technician"
    b = read(tmp_path, "behaviors")
    assert sorted(zip(b.user_id, b.item_id, b.rating, strict=True)) == [("1", "10", 4.0), ("2", "11", 5.0)]
    assert set(b.behavior) == {"review"}
    assert str(b.ts.min()) == "1997-12-04 15:55:49+00:00"
    assert reasons(tmp_path, "behaviors") == [
        "malformed line: 3 fields where 4 are expected; missing ts",
        "rating is not a number",
        "ts before 1995-01-01",
        "unknown item_id",
    ]
    assert report.rows_in == report.rows_out + report.rows_quarantined


def test_ml1m_crafted(spark, tmp_path):
    src = tmp_path / "ml1m"
    src.mkdir()
    (src / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::999::4::978300000\n")
    (src / "movies.dat").write_bytes(
        "1193::One Flew (1975)::Drama\n661::Père (1996)::Animation|Children's\n".encode("latin-1")
    )
    (src / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    run(
        spark,
        tmp_path,
        "data=movielens",
        f"data.path={src}",
        "run.dt=2001-01-01",
        "ingest.max_quarantine_fraction=0.9",
    )
    items = read(tmp_path, "items").set_index("item_id")
    assert items.loc["661", "title"] == "Père (1996)"
    assert items.loc["661", "category_path"] == "Movies > Animation | Children's"
    users = read(tmp_path, "users").set_index("user_id")
    assert users.loc["1", "occupation"] == "K-12 student" and users.loc["2", "occupation"] == "self-employed"
    assert len(read(tmp_path, "behaviors")) == 2
    assert reasons(tmp_path, "behaviors") == ["unknown item_id"]


def test_amazon_reviews_2023_gzipped_with_a_broken_line(spark, tmp_path):
    reviews = [
        {
            "rating": 5.0,
            "title": "Great",
            "text": "Love it",
            "asin": "B1",
            "parent_asin": "P1",
            "user_id": "A",
            "timestamp": 1588687728923,
            "helpful_vote": 2,
            "verified_purchase": True,
        },
        {
            "rating": 2.0,
            "title": "Meh",
            "text": "",
            "asin": "B2",
            "parent_asin": "P2",
            "user_id": "B",
            "timestamp": 1600000000000,
            "helpful_vote": 0,
            "verified_purchase": False,
        },
    ]
    with gzip.open(tmp_path / "All_Beauty.jsonl.gz", "wt") as fh:
        for r in reviews:
            fh.write(json.dumps(r) + "\n")
        fh.write('{"rating": 4.0, "user_id": "C", "parent_asin": "P1", "timestamp": 16\n')  # cut off
    meta = [
        {
            "main_category": "All Beauty",
            "title": "Rose face oil",
            "store": "Luma",
            "price": "12.5",
            "categories": ["Beauty", "Skin Care", "Face Oils"],
            "parent_asin": "P1",
        },
        {
            "main_category": "All Beauty",
            "title": "Hair clip",
            "store": None,
            "price": None,
            "categories": [],
            "parent_asin": "P2",
        },
    ]
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    run(
        spark,
        tmp_path,
        "data=amazon",
        f"data.reviews={tmp_path / 'All_Beauty.jsonl.gz'}",
        f"data.meta={tmp_path / 'meta.jsonl'}",
        "run.dt=2021-01-01",
    )
    items = read(tmp_path, "items").set_index("item_id")
    assert items.loc["P1", "category"] == "Face Oils"
    assert items.loc["P1", "category_path"] == "Beauty > Skin Care > Face Oils"
    assert items.loc["P1", "brand"] == "Luma" and items.loc["P1", "price"] == 12.5
    assert items.loc["P2", "category"] == "All Beauty"
    b = read(tmp_path, "behaviors").sort_values("user_id")
    assert list(b.user_id) == ["A", "B"]
    assert str(b.ts.iloc[0]) == "2020-05-05 14:08:48.923000+00:00"  # milliseconds
    q = read(tmp_path, "quarantine")
    assert q.reason.tolist()[0].startswith("malformed record")
    assert q.raw.tolist() == ['{"rating": 4.0, "user_id": "C", "parent_asin": "P1", "timestamp": 16']


def test_taobao_user_behavior(spark, tmp_path):
    (tmp_path / "UserBehavior.csv").write_text(
        "1,100,7,pv,1511544070\n1,100,7,buy,1511544080\n2,101,8,cart,1511544090\n2,101,8,fav,1511544100\n"
        "2,101,8,clk,1511544110\n"
    )
    run(spark, tmp_path, "data=taobao", f"data.path={tmp_path / 'UserBehavior.csv'}", "run.dt=2017-12-04")
    b = read(tmp_path, "behaviors")
    assert sorted(b.behavior) == ["cart", "fav", "purchase", "view"]
    items = read(tmp_path, "items").set_index("item_id")
    assert items.loc["100", "category"] == "7"
    assert reasons(tmp_path, "behaviors") == ["unknown behavior"]


# -- bad input on purpose, through the canonical CSV layout -------------------------------------

GOOD_ITEMS = "item_id,title,category\ni1,wool scarf,scarves\n"
HEADER = "user_id,item_id,behavior,query,ts,rating\n"


def canonical(tmp_path, behaviors: bytes, items: bytes = GOOD_ITEMS.encode()) -> Path:
    src = tmp_path / "src"
    (src / "behaviors").mkdir(parents=True)
    (src / "items").mkdir()
    (src / "behaviors" / "b.csv").write_bytes(behaviors)
    (src / "items" / "i.csv").write_bytes(items)
    return src


def run_canonical(spark, tmp_path, src):
    return run(
        spark,
        tmp_path,
        "data=canonical",
        f"data.path={src}",
        "data.format=csv",
        "run.dt=2025-10-28",
        "ingest.max_quarantine_fraction=0.95",
    )


def test_wrong_encoding_huge_title_duplicates_and_null_ids(spark, tmp_path):
    huge = "x" * 1_000_000
    items = (GOOD_ITEMS + f"i2,{huge},scarves\ni1,wool scarf again,scarves\n,no id,scarves\n").encode()
    behaviors = (
        (HEADER + "u1,i1,view,,2025-10-01 10:00:00,\n").encode()
        + "u2,i1,view,café,2025-10-01 10:00:00,\n".encode("latin-1")
        + (b",i1,view,,2025-10-01 11:00:00,\n")
    )
    src = canonical(tmp_path, behaviors, items)
    report = run_canonical(spark, tmp_path, src)
    assert reasons(tmp_path, "items") == [
        "duplicate item_id",
        "missing item_id",
        "title longer than 2000 characters",
    ]
    assert reasons(tmp_path, "behaviors") == [
        "invalid characters: the file is not in its declared encoding",
        "missing user_id",
    ]
    assert report.rows_in == report.rows_out + report.rows_quarantined == 4 + 3


def test_truncated_and_overlong_lines_keep_their_text(spark, tmp_path):
    behaviors = (
        HEADER + "u1,i1,view,,2025-10-01 10:00:00,\nu1,i1\nu1,i1,view,,2025-10-01 10:00:00,,extra,fields\n"
    )
    src = canonical(tmp_path, behaviors.encode())
    run_canonical(spark, tmp_path, src)
    q = read(tmp_path, "quarantine")
    assert len(q) == 2 and len(read(tmp_path, "behaviors")) == 1
    assert sorted(q.reason) == [
        "malformed line: 2 fields where 6 are expected; missing behavior; missing ts",
        "malformed line: more fields than the 6 expected",
    ]
    assert sorted(q.raw) == ["u1,i1", "u1,i1,view,,2025-10-01 10:00:00,,extra,fields"]


def test_empty_file_is_a_clear_error(spark, tmp_path):
    src = canonical(tmp_path, b"")
    with pytest.raises(SourceError, match=r"b\.csv.*(empty|no header)|no header row|empty"):
        run_canonical(spark, tmp_path, src)


def test_a_parquet_file_declared_as_csv_is_refused(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = canonical(tmp_path, b"")
    (src / "behaviors" / "b.csv").unlink()
    pq.write_table(pa.table({"user_id": ["u"] * 50}), src / "behaviors" / "b.csv")
    with pytest.raises(SourceError) as err:
        run_canonical(spark, tmp_path, src)
    assert "b.csv" in str(err.value) or "behaviors" in str(err.value)


def test_missing_dataset_file_is_a_clear_error(spark, tmp_path):
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "u.data").write_text("1\t1\t1\t881250949\n")
    with pytest.raises(SourceError, match=r"ml-100k items not found: .*u\.item"):
        run(spark, tmp_path, "data=movielens", f"data.path={tmp_path / 'ml'}", "run.dt=1998-04-23")


@pytest.mark.skipif(not ML100K.exists(), reason="the ml-100k sample is not beside the project")
def test_real_ml100k(spark, tmp_path):
    report = run(spark, tmp_path, "data=movielens", f"data.path={ML100K}", "run.dt=1998-04-23")
    tables = report.details["tables"]
    assert tables["behaviors"]["rows"] + len(reasons(tmp_path, "behaviors")) == 100_000
    assert tables["users"]["rows"] == 943 and tables["items"]["rows"] == 1682
    assert tables["behaviors"]["rows"] >= 99_990
