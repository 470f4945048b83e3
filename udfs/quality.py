"""Spark side of the data-quality gates: derived columns that express cross-table rules, and
great-expectations checkpoints run on the stage's Spark DataFrames with Data Docs built under the
warehouse's `_reports/`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recgpt.quality import CheckResult, CheckSpec, build_suite, flatten
from recgpt.report_assets import localize

log = logging.getLogger(__name__)


def derive_behaviors(df: DataFrame, items: DataFrame, until: str) -> DataFrame:
    """_item_known: an item event refers to a catalog item; _query_ok: a search carries a query;
    _age_days: days from the event to the ingest end date (negative = from the future)."""
    known = items.select(F.col("item_id").alias("_known_id")).distinct()
    is_search = F.col("behavior") == "search"
    return (
        df.join(known, F.col("item_id") == F.col("_known_id"), "left")
        .withColumn("_item_known", is_search | F.col("_known_id").isNotNull())
        .withColumn("_query_ok", ~is_search | (F.length(F.trim(F.coalesce(F.col("query"), F.lit("")))) > 0))
        .withColumn("_age_days", F.datediff(F.lit(until).cast("date"), F.col("dt")))
        .drop("_known_id")
    )


def derive_items(df: DataFrame) -> DataFrame:
    return df.withColumn("_title_chars", F.length("title"))


@dataclass
class QualityRunner:
    """A file-backed great-expectations project under `reports_dir/gx` (suites and the history of
    results) with its Data Docs site at `reports_dir/dq/index.html`."""

    reports_dir: str
    assets_dir: str

    def __post_init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        root = Path(self.reports_dir).resolve()
        self.docs_dir = root / "dq"
        self.context = gx.get_context(mode="file", project_root_dir=str(root))
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.context.variables.save()
        sites = self.context.get_site_names()
        if "recgpt" not in sites:
            self.context.add_data_docs_site(
                site_name="recgpt",
                site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(self.docs_dir),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )
        for other in [s for s in sites if s != "recgpt"]:
            self.context.delete_data_docs_site(other)
        self.source = self.context.data_sources.add_or_update_spark("warehouse")

    @property
    def index(self) -> str:
        return str(self.docs_dir / "index.html")

    def validate(
        self, stage: str, table: str, df: DataFrame, specs: Sequence[CheckSpec], run_name: str
    ) -> list[CheckResult]:
        import great_expectations as gx

        name = f"{stage}.{table}"
        try:
            asset = self.source.get_asset(table)
        except LookupError:
            asset = self.source.add_dataframe_asset(table)
        try:
            batch = asset.get_batch_definition("whole")
        except (KeyError, LookupError):
            batch = asset.add_batch_definition_whole_dataframe("whole")
        suite = self.context.suites.add_or_update(build_suite(name, specs))
        definition = self.context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        checkpoint = self.context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=name,
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["recgpt"])],
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
            )
        )
        result = checkpoint.run(
            batch_parameters={"dataframe": df}, run_id=gx.RunIdentifier(run_name=run_name)
        )
        return [r for v in result.run_results.values() for r in flatten(table, v)]

    def finish(self) -> None:
        """Make the Data Docs readable offline (vendored CSS/JS instead of CDN links)."""
        remaining = localize(self.docs_dir, self.assets_dir)
        if remaining:
            log.warning("Data Docs still reference %d remote assets: %s", len(remaining), remaining[:5])


def results_rows(results: Sequence[CheckResult], checkpoint: str, report: str) -> list[dict[str, Any]]:
    return [
        {
            "checkpoint": checkpoint,
            "table_name": r.table,
            "expectation": r.expectation,
            "column_name": r.column,
            "severity": r.severity,
            "success": r.success,
            "observed": r.observed,
            "unexpected_count": r.unexpected_count,
            "unexpected_percent": r.unexpected_percent,
            "details": r.details,
            "report": report,
        }
        for r in results
    ]


def previous_row_counts(dq_results: DataFrame | None, before_dt: str) -> Mapping[str, int]:
    """Observed row count per table from the latest dq run before `before_dt`."""
    if dq_results is None:
        return {}
    counts = dq_results.where(
        (F.col("expectation") == "expect_table_row_count_to_be_between")
        & (F.col("dt") < F.lit(before_dt).cast("date"))
    )
    latest = counts.groupBy("table_name").agg(F.max_by("observed", "dt").alias("observed")).collect()
    out = {}
    for row in latest:
        try:
            out[row["table_name"]] = int(row["observed"])
        except (TypeError, ValueError):
            continue
    return out


os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
