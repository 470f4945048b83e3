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
from recgpt.quality import QualityGateError, check_specs, row_count_check
from recgpt.tables import ITEMS

TINY = ["data.users=30", "data.items=200", "data.history_days=40", "data.holdout_days=5"]


def ctx_for(spark, tmp_path, stage, *extra):
    cfg = load_config([f"storage.warehouse={tmp_path / 'wh'}", "run.dt=2025-10-28", *TINY, *extra])
    return open_context(cfg, stage, spark)


def results(tmp_path):
    return DeltaTable(str(tmp_path / "wh" / "dq_results")).to_pandas()


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
    failed = results(ingested).query("not success")
    assert list(failed.expectation) == ["expect_column_values_to_be_unique"]
    runs = DeltaTable(str(ingested / "wh" / "runs")).to_pandas()
    assert runs.sort_values("created_at").status.iloc[-1] == "failed"


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

    history = next_day.warehouse.read("dq_results")
    assert previous_row_counts(history, "2025-10-29")["items"] == 200
    assert previous_row_counts(history, "2025-10-28") == {}


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
