"""Spark side of the data-quality gates: great-expectations checkpoints run on the stage's Spark
DataFrames (small ones collected and validated in pandas) with Data Docs built under the
warehouse's `_reports/`, and their results as rows.

What each checkpoint validates (the tables with their derived columns) is in `udfs/checkpoints.py`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, FloatType

from recgpt.quality import CheckResult, CheckSpec, build_suite, flatten
from recgpt.report_assets import localize
from recgpt.rundate import RunDate

log = logging.getLogger(__name__)


@dataclass
class QualityRunner:
    """A file-backed great-expectations project under `reports_dir/gx` (suites and the history of
    results) with its Data Docs site at `reports_dir/dq/index.html`.

    A table of at most `local_max_rows` rows is collected once and validated by great-expectations'
    pandas engine: its Spark engine runs several small Spark jobs per suite, which cost far more
    than the data on a small partition. Larger tables (and every table when it is 0) stay in Spark.
    """

    reports_dir: str
    assets_dir: str
    local_max_rows: int = 0

    def __post_init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        root = Path(self.reports_dir).resolve()
        self.docs_dir = root / "dq"
        self.context = gx.get_context(mode="file", project_root_dir=str(root))
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.context.variables.save()
        site = {
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(self.docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        sites = self.context.variables.data_docs_sites or {}
        if sites.get("recgpt") != site:  # new, or the reports dir moved (a copied warehouse)
            if "recgpt" in sites:
                self.context.delete_data_docs_site("recgpt")
            self.context.add_data_docs_site(site_name="recgpt", site_config=site)
        for other in [s for s in sites if s != "recgpt"]:
            self.context.delete_data_docs_site(other)
        # Kept in the project with their assets: registering an asset rewrites the project file.
        self.source = data_source(self.context, "spark", "warehouse")
        self.local_source = data_source(self.context, "pandas", "warehouse_local")
        # The results (and their suites) validated since the last `finish`, whose pages it renders.
        self.unrendered: list[Any] = []

    @property
    def index(self) -> str:
        return str(self.docs_dir / "index.html")

    def validate(
        self, stage: str, table: str, df: DataFrame, specs: Sequence[CheckSpec], run_name: str
    ) -> list[CheckResult]:
        """Run `table`'s suite on `df` (a checkpoint named `stage.table`); the Data Docs pages of
        the result are rendered by `finish`."""
        # Cached while its suite runs, the frame's joins and windows run once: the first query fills
        # the cache, the collect or the Spark engine's metric queries read it. A frame the caller
        # cached stays as it was.
        cached = df.storageLevel != StorageLevel.NONE
        frame = df if cached else df.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            if self.fits_locally(frame):
                return self._run_checkpoint(stage, table, local_frame(frame), specs, run_name, local=True)
            return self._run_checkpoint(stage, table, frame, specs, run_name, local=False)
        finally:
            if not cached:
                frame.unpersist()

    def fits_locally(self, df: DataFrame) -> bool:
        """Whether pandas gives the same results as Spark on `df` and it is small enough to collect:
        at most `local_max_rows` rows and no NaN in a float column (Spark orders NaN above every
        number, pandas compares it as missing)."""
        if self.local_max_rows <= 0:
            return False
        floats = [f.name for f in df.schema.fields if isinstance(f.dataType, FloatType | DoubleType)]
        nan = [F.max(F.isnan(df[c])) for c in floats]
        rows, *nans = df.agg(F.count(F.lit(1)), *nan).collect()[0]
        return rows <= self.local_max_rows and not any(nans)

    def _run_checkpoint(
        self, stage: str, table: str, data: Any, specs: Sequence[CheckSpec], run_name: str, local: bool
    ) -> list[CheckResult]:
        import great_expectations as gx
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
        )

        name = f"{stage}.{table}"
        # One suite (so one Data Docs entry) per table; a validation definition and checkpoint per
        # engine, since updating a stored definition loads the asset it names.
        runner_name = f"{name}.local" if local else name
        batch = whole_frame_batch(self.local_source if local else self.source, table)
        suite = self.context.suites.add_or_update(build_suite(name, specs))
        definition = self.context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=runner_name, data=batch, suite=suite)
        )
        # No Data Docs action: rebuilding the site after every checkpoint re-lists and re-renders
        # it each time; `finish` renders the run's pages and the index once.
        checkpoint = self.context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=runner_name,
                validation_definitions=[definition],
                actions=[],
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
            )
        )
        result = checkpoint.run(
            batch_parameters={"dataframe": data}, run_id=gx.RunIdentifier(run_name=run_name)
        )
        for key in result.run_results:
            self.unrendered += [key, ExpectationSuiteIdentifier(name=name)]
        return [r for v in result.run_results.values() for r in flatten(table, v)]

    def finish(self) -> None:
        """Render the Data Docs pages of what was validated and the index (which lists every
        validation in the project), then make them readable offline (vendored CSS/JS instead of
        CDN links)."""
        if self.unrendered:
            self.context.build_data_docs(site_names=["recgpt"], resource_identifiers=self.unrendered)
            self.unrendered = []
        remaining = localize(self.docs_dir, self.assets_dir)
        if remaining:
            log.warning("Data Docs still reference %d remote assets: %s", len(remaining), remaining[:5])


def local_frame(df: DataFrame) -> Any:
    """`df` collected as a pandas frame of Arrow-backed columns: integers with nulls stay integers
    and nulls stay nulls (plain pandas turns them into floats and NaN), so the pandas engine
    observes the values Spark does."""
    import pandas as pd

    return df.toArrow().to_pandas(types_mapper=pd.ArrowDtype)


def data_source(context: Any, kind: str, name: str) -> Any:
    """The project's fluent data source `name` of `kind` (spark, pandas), added if new."""
    try:
        return context.data_sources.get(name)
    except KeyError:
        return getattr(context.data_sources, f"add_{kind}")(name)


def whole_frame_batch(source: Any, table: str) -> Any:
    """The batch definition "whole" of the dataframe asset `table` of `source`, added if new."""
    try:
        asset = source.get_asset(table)
    except LookupError:
        asset = source.add_dataframe_asset(table)
    try:
        return asset.get_batch_definition("whole")
    except (KeyError, LookupError):
        return asset.add_batch_definition_whole_dataframe("whole")


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
