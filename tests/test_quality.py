"""Data-quality gates: suites from config, results in dq_results, warnings that let the run go
on, a planted critical violation that stops it naming the expectation and the report, and
row-count drift against the previous run."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from jobs import dq, ingest
from jobs.stage import execute, open_context
from recgpt.config import load_config
from recgpt.errors import ConfigError
from recgpt.quality import (
    CheckResult,
    CheckSpec,
    QualityGateError,
    check_specs,
    outcome,
    row_count_check,
    table_checks,
    warning_lines,
)
from recgpt.rundate import RunDate
from recgpt.tables import DQ_RESULTS, ITEMS, MINING_FAILURES, USER_CONTEXT, USER_INTENT_TAGS, USER_PERSONAS

TINY = ["data.users=30", "data.items=200", "data.history_days=40", "data.holdout_days=5"]


def ctx_for(spark, tmp_path, stage, *extra):
    cfg = load_config([f"storage.warehouse={tmp_path / 'wh'}", "run.dt=2025-10-28", *TINY, *extra])
    return open_context(cfg, stage, spark)


def results(tmp_path):
    return DeltaTable(str(tmp_path / "wh" / "dq_results")).to_pandas()


def runs_of(spark, tmp_path):
    """The latest successful run of each stage for the test date, as the dq stage reads them."""
    from sparkio.warehouse import Warehouse
    from udfs.checkpoints import latest_runs

    return latest_runs(Warehouse(spark, str(tmp_path / "wh")), RunDate.parse("2025-10-28"))


@pytest.fixture
def ingested(spark, tmp_path):
    execute(ctx_for(spark, tmp_path, "ingest"), ingest.run)
    return tmp_path


def test_clean_ingest_passes_and_results_are_recorded(spark, ingested):
    report = execute(ctx_for(spark, ingested, "dq"), dq.run)
    r = results(ingested)
    assert set(r.table_name) == {
        "behaviors",
        "items",
        "users",
        "env_signals",
        "quarantine",
        "planted_personas",
    }
    assert r.success.all(), r[~r.success][["table_name", "expectation", "details"]]
    docs = ingested / "wh" / "_reports" / "dq"
    assert (docs / "index.html").is_file()
    # Offline: every page loads its CSS/JS from the vendored copies beside it, none from a CDN.
    pages = list(docs.rglob("*.html"))
    assert len(pages) >= 6
    for page in pages:
        text = page.read_text()
        assert not re.search(r'<(script|link)[^>]+(src|href)="https?://', text), page
        assert 'src="https://' not in text, page
    assert (docs / "static" / "vendor" / "bootstrap" / "bootstrap.min.css").stat().st_size > 100_000
    assert (docs / "static" / "vendor" / "fontawesome" / "webfonts" / "fa-solid-900.woff2").is_file()
    assert report.details["report"].endswith("_reports/dq/index.html")
    # Built once at the end, the index still links a page for every table the run validated.
    index = (docs / "index.html").read_text()
    run_name = f"2025-10-28_{runs_of(spark, ingested)['dq'].run_id}"
    for table in set(r.table_name):
        pages = list((docs / "validations" / "ingest" / table / run_name).rglob("*.html"))
        assert len(pages) == 1, (table, pages)
        assert str(pages[0].relative_to(docs)) in index, table
    # Rerunning the gate for the same date replaces its results instead of adding to them.
    execute(ctx_for(spark, ingested, "dq"), dq.run)
    assert len(results(ingested)) == len(r)


def test_planted_critical_violation_stops_the_run_and_names_it(spark, ingested):
    ctx = ctx_for(spark, ingested, "dq")
    items = ctx.warehouse.read(ITEMS, dt="2025-10-28")
    dup = items.limit(1)
    ctx.warehouse.write(items.unionByName(dup), ITEMS, mode="replace", lineage=ctx.lineage)
    # The duplicate must carry the ingest's run id to be part of what that ingest wrote.
    with pytest.raises(QualityGateError) as err:
        execute(ctx_for(spark, ingested, "dq"), dq.run)
    message = str(err.value)
    assert "items.item_id: expect_column_values_to_be_unique" in message
    assert "report: " in message and message.strip().endswith("_reports/dq/index.html")
    first = results(ingested)
    failed = first.query("not success")
    assert list(failed.expectation) == ["expect_column_values_to_be_unique"]
    runs = DeltaTable(str(ingested / "wh" / "runs")).to_pandas()
    assert runs.sort_values("created_at").status.iloc[-1] == "failed"
    # The same gate with every table validated in Spark (no pandas engine for small tables):
    # the same message and the same dq_results rows.
    with pytest.raises(QualityGateError) as in_spark:
        execute(ctx_for(spark, ingested, "dq", "quality.local_max_rows=0"), dq.run)
    assert str(in_spark.value) == message
    lineage = ["run_id", "created_at"]
    key = ["table_name", "expectation", "column_name", "details"]
    spark_rows = results(ingested).drop(columns=lineage).sort_values(key, ignore_index=True)
    assert spark_rows.equals(first.drop(columns=lineage).sort_values(key, ignore_index=True))


def test_warnings_are_reported_and_the_run_goes_on(spark, ingested):
    ctx = ctx_for(
        spark, ingested, "dq", "quality.freshness_days=-1", "quality.quarantine_warn_fraction=0.0001"
    )
    report = execute(ctx, dq.run)
    warnings = report.details["warnings"]
    assert any(w.startswith("behaviors._age_days: expect_column_min_to_be_between") for w in warnings), (
        warnings
    )
    assert any(w.startswith("quarantine: expect_table_row_count_to_be_between") for w in warnings), warnings
    assert "2 failed (0 critical, 2 warning)" in report.details["dq"]


def test_row_count_drift_against_the_previous_run(spark, ingested):
    execute(ctx_for(spark, ingested, "dq"), dq.run)
    # The next day's items snapshot is a tenth of the previous one: drift beyond 50% warns.
    next_day = ctx_for(spark, ingested, "ingest", "run.dt=2025-10-29")
    items = (
        next_day.warehouse.read(ITEMS, dt="2025-10-28")
        .limit(20)
        .withColumn("dt", F.lit(dt.date(2025, 10, 29)))
    )
    next_day.warehouse.write(items.drop("run_id"), ITEMS, mode="replace", lineage=next_day.lineage)
    check = row_count_check("items", 200, 0.5, "warning")
    assert (check.kwargs["min_value"], check.kwargs["max_value"]) == (100, 301)
    from udfs.quality import previous_row_counts

    history = next_day.warehouse.read(DQ_RESULTS)
    assert previous_row_counts(history, RunDate.parse("2025-10-29"))["items"] == 200
    assert previous_row_counts(history, RunDate.parse("2025-10-28")) == {}


def test_a_table_gets_its_suite_then_the_stages_row_count_or_else_drift():
    suite = [{"expect": "expect_column_values_to_not_be_null", "column": "item_id", "severity": "critical"}]
    drift = {"tolerance": 0.5, "severity": "warning"}
    specs = table_checks("items", suite, None, 200, drift)
    assert [(s.expect, s.severity, dict(s.kwargs)) for s in specs] == [
        ("expect_column_values_to_not_be_null", "critical", {"column": "item_id"}),
        # 200 rows last time, +-50%: 100 to 301 (the upper bound rounds up by one).
        ("expect_table_row_count_to_be_between", "warning", {"min_value": 100, "max_value": 301}),
    ]
    # No previous run: at least one row.
    assert dict(table_checks("items", [], None, None, drift)[-1].kwargs) == {"min_value": 1}
    # A stage's own row count replaces the drift check.
    own = CheckSpec("user_context", "expect_table_row_count_to_equal", "critical", {"value": 7})
    assert table_checks("user_context", [], own, 200, drift) == [own]


def test_the_gate_summary_counts_failures_by_severity_and_lists_the_warnings():
    def result(table, severity, success):
        return CheckResult(table, "expect_x", None, severity, success, "3", None, None, "{}")

    results = [
        result("items", "critical", True),
        result("users", "critical", False),
        result("quarantine", "warning", False),
        result("behaviors", "warning", False),
    ]
    assert outcome(results) == "4 expectations, 3 failed (1 critical, 2 warning)"
    assert warning_lines(results, ["critical"]) == [
        "quarantine: expect_x (observed 3)",
        "behaviors: expect_x (observed 3)",
    ]
    # With warnings blocking too, nothing is a mere warning.
    assert warning_lines(results, ["critical", "warning"]) == []
    assert outcome([]) == "0 expectations, 0 failed (0 critical, 0 warning)"


def test_mine_intents_checkpoint_counts_tags_per_user_and_covers_every_user_once(warehouse, tmp_path):
    from tests.handmade import DT, V1, V2, put, tag
    from udfs.checkpoints import mine_intents_tables

    history = {"events": 2, "buckets": 1, "full_tokens": 1, "v1_text": "x", "v1_tokens": 1}
    history |= {"v1_dropped_buckets": 0, "hybrid_text": "x", "entity_ids": [], "hybrid_tokens": 1}
    history |= {"hybrid_dropped_buckets": 0}
    put(
        warehouse,
        USER_CONTEXT,
        [{"user_id": u, "events_kept": 2} | history for u in ("u1", "u2", "u3")]
        + [{"user_id": "u4", "events_kept": 0} | history],  # no reliable history: not mined
    )
    put(
        warehouse,
        USER_INTENT_TAGS,
        [tag("u1", r, t, V2) for r, t in ((1, "trail hiking boots"), (2, " camping  tent"), (3, "tent"))]
        + [tag("u2", r, "yoga mat", V2) for r in (1, 3)]  # rank 2 missing
        + [tag("u1", r, "tent", V1) for r in (1, 2, 3)],
    )
    failure = {"step": "route", "reason": "no_valid_tag"}
    put(
        warehouse,
        MINING_FAILURES,
        [
            {"user_id": "u3"} | failure | V2,
            {"user_id": "u2"} | failure | V1,
            {"user_id": "u1"} | failure | V1,
        ],
    )
    persona = {"persona_rank": 1, "name": "hiker", "description": "d", "evidence": [], "signals": []}
    put(warehouse, USER_PERSONAS, [{"user_id": "u1"} | persona | V2])

    # V2 keeps at most n_tags=2 per user; V1 up to m_tags=1 per route (4 routes).
    checkpoint = mine_intents_tables(warehouse, RunDate.parse(DT), None, n_tags=2, m_tags=1)
    assert set(checkpoint.frames) == {
        "user_personas",
        "user_intent_tags",
        "mining_failures",
        "mining_coverage",
    }
    tags = checkpoint.frames["user_intent_tags"].collect()
    per_user = {(r.pipeline, r.user_id): (r._user_tags, r._ranks_ok, r._count_ok) for r in tags}
    assert per_user == {
        ("v2", "u1"): (3, True, False),  # 3 > n_tags
        ("v2", "u2"): (2, False, True),  # ranks 1, 3
        ("v1_baseline", "u1"): (3, True, True),  # 3 <= 1 x 4 routes
    }
    assert {(r.tag, r._words, r._chars) for r in tags if r.rank == 2 and r.pipeline == "v2"} == {
        (" camping  tent", 2, 14)
    }
    failures = checkpoint.frames["mining_failures"].collect()
    assert {(r.pipeline, r.user_id): r._has_tags for r in failures} == {
        ("v2", "u3"): False,
        ("v1_baseline", "u2"): False,
        ("v1_baseline", "u1"): True,  # tagged and failed: the coverage count catches it
    }
    # Outcomes: v2 u1, u2 (tags), u3 (failure); v1 u1 (tags), u2, u1 (failures) = 6 rows; and
    # 3 users with a history x 2 variants must have exactly one each.
    assert checkpoint.frames["mining_coverage"].count() == 6
    coverage = checkpoint.row_counts["mining_coverage"]
    assert (coverage.expect, coverage.severity, dict(coverage.kwargs)) == (
        "expect_table_row_count_to_equal",
        "critical",
        {"value": 6},
    )
    # A users file limits the scope: 2 listed users x 2 variants.
    listed = tmp_path / "users.txt"
    listed.write_text("u1\nu2\n")
    scoped = mine_intents_tables(warehouse, RunDate.parse(DT), str(listed), n_tags=2, m_tags=1)
    assert dict(scoped.row_counts["mining_coverage"].kwargs) == {"value": 4}


def test_small_tables_are_validated_in_pandas_with_the_results_spark_gives(spark, tmp_path):
    from udfs.quality import QualityRunner

    day = dt.date(2025, 10, 28)
    at = dt.datetime(2025, 10, 28, 12, tzinfo=dt.UTC)
    # Nulls of every type, an out-of-range int next to a null (pandas would make it a float),
    # a duplicate key, a false flag.
    rows = [
        ("u1", 1, 0.5, True, day, at, [1.0], "a", 5),
        ("u1", None, 1.5, None, day, at, None, "b", 7),
        ("u2", 12, -0.1, False, None, None, [1.0], None, 12),
        ("u3", 3, None, True, day, at, [], "a", 1),
    ]
    schema = (
        "user_id string, rank int, score double, ok boolean, dt date, created_at timestamp, "
        "vec array<double>, kind string, n long"
    )
    df = spark.createDataFrame(rows, schema)
    between = "expect_column_values_to_be_between"
    suite = [
        *(
            {"expect": "expect_column_values_to_not_be_null", "column": c, "severity": "critical"}
            for c in ("rank", "score", "ok", "dt", "created_at", "vec")
        ),
        {"expect": "expect_column_values_to_be_unique", "column": "user_id", "severity": "critical"},
        {"expect": "expect_compound_columns_to_be_unique", "column_list": ["user_id", "dt"]},
        {"expect": between, "column": "rank", "min_value": 1, "max_value": 10, "severity": "critical"},
        {"expect": between, "column": "n", "min_value": 1, "max_value": 10},
        {"expect": between, "column": "score", "min_value": 0, "strict_min": True},
        {"expect": "expect_column_values_to_be_in_set", "column": "ok", "value_set": [True]},
        {"expect": "expect_column_values_to_be_in_set", "column": "kind", "value_set": ["a"], "mostly": 0.5},
        {"expect": "expect_column_values_to_be_in_set", "column": "rank", "value_set": [1, 3]},
        {"expect": "expect_column_min_to_be_between", "column": "rank", "min_value": 2, "max_value": 5},
        {"expect": "expect_column_min_to_be_between", "column": "dt", "min_value": "2025-10-29"},
        {"expect": "expect_column_distinct_values_to_contain_set", "column": "kind", "value_set": ["a", "c"]},
        {"expect": "expect_column_values_to_be_null", "column": "kind", "mostly": 0.9},
        {"expect": "expect_table_row_count_to_equal", "value": 4, "severity": "critical"},
    ]
    specs = check_specs("t", suite)
    assets = str(load_config([]).quality.assets_dir)
    in_spark = QualityRunner(str(tmp_path / "spark"), assets, local_max_rows=0)
    in_pandas = QualityRunner(str(tmp_path / "pandas"), assets, local_max_rows=4)
    assert not in_spark.fits_locally(df) and in_pandas.fits_locally(df)
    spark_results = in_spark.validate("s", "t", df, specs, "run")
    pandas_results = in_pandas.validate("s", "t", df, specs, "run")
    assert pandas_results == spark_results
    by_check = {(r.expectation, r.column): r for r in pandas_results}
    assert [r.success for r in pandas_results].count(True) == 2  # kind in {a} mostly; the row count
    assert by_check[(between, "rank")].details.endswith('"sample": [12], "exception": null}')
    assert by_check[("expect_column_values_to_not_be_null", "created_at")].details.endswith(
        '"sample": [null], "exception": null}'
    )
    assert by_check[("expect_column_min_to_be_between", "rank")].observed == "1"
    assert by_check[("expect_column_min_to_be_between", "dt")].observed == "2025-10-28"
    # Larger than the threshold, or a NaN (ordered above every number by Spark only): Spark.
    assert not in_pandas.fits_locally(df.unionByName(df.limit(1)))
    assert not in_pandas.fits_locally(df.withColumn("score", F.lit(float("nan"))))


def test_unknown_expectation_or_severity_is_a_config_error():
    from recgpt.quality import build_suite

    with pytest.raises(ConfigError, match="severity"):
        check_specs(
            "items", [{"expect": "expect_column_values_to_be_unique", "column": "x", "severity": "fatal"}]
        )
    with pytest.raises(ConfigError, match="unknown expectation"):
        build_suite("s", check_specs("items", [{"expect": "expect_the_moon", "severity": "warning"}]))


def test_localize_rewrites_cdn_links_relative_to_each_page(tmp_path):
    from recgpt.report_assets import MissingAssetsError, localize

    vendor = tmp_path / "assets" / "vendor" / "jquery"
    vendor.mkdir(parents=True)
    (vendor / "jquery.min.js").write_text("/* jq */")
    page = tmp_path / "site" / "validations" / "a" / "p.html"
    page.parent.mkdir(parents=True)
    page.write_text(
        '<script src="https://code.jquery.com/jquery-3.7.1.min.js" integrity="sha384-x" '
        'crossorigin="anonymous"></script><img src="https://example.org/logo.png?d=1">'
        '<script src="https://cdn.example.org/unknown.js"></script>'
    )
    remaining = localize(tmp_path / "site", tmp_path / "assets")
    text = page.read_text()
    assert '<script src="../../static/vendor/jquery/jquery.min.js"></script>' in text
    assert "logo.png" not in text
    assert remaining == ["https://cdn.example.org/unknown.js"]
    assert (tmp_path / "site" / "static" / "vendor" / "jquery" / "jquery.min.js").is_file()
    with pytest.raises(MissingAssetsError, match="make setup"):
        localize(tmp_path / "site", tmp_path / "nowhere")
