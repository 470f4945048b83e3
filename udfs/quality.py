"""Spark side of the data-quality gates: great-expectations checkpoints run on the stage's Spark
DataFrames with Data Docs built under the warehouse's `_reports/`, and their results as rows.

What each checkpoint validates (the tables with their derived columns) is in `udfs/checkpoints.py`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recgpt.quality import CheckResult, CheckSpec, build_suite, flatten
from recgpt.report_assets import localize
from recgpt.rundate import RunDate

log = logging.getLogger(__name__)


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


# The columns of a dq_results row a checkpoint fills (lineage is stamped on write).
RESULTS_SCHEMA = (
    "checkpoint string, table_name string, expectation string, column_name string, severity string, "
    "success boolean, observed string, unexpected_count long, unexpected_percent double, "
    "details string, report string"
)


def results_rows(results: Sequence[CheckResult], checkpoint: str, report: str) -> list[dict[str, Any]]:
    """One dq_results row per expectation of a checkpoint, naming the Data Docs `report`."""
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


def results_frame(
    spark: SparkSession, results: Sequence[CheckResult], checkpoint: str, report: str
) -> DataFrame:
    """A checkpoint's results as a DataFrame of dq_results rows (without lineage)."""
    return spark.createDataFrame(results_rows(results, checkpoint, report), schema=RESULTS_SCHEMA)


def previous_row_counts(dq_results: DataFrame | None, before: RunDate) -> Mapping[str, int]:
    """Observed row count per table from the latest dq run before the run date `before`: what
    the row-count drift check compares with."""
    if dq_results is None:
        return {}
    counts = dq_results.where(
        (F.col("expectation") == "expect_table_row_count_to_be_between")
        & (F.col("dt") < F.lit(before.iso).cast("date"))
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
