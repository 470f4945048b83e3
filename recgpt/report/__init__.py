"""The offline-evaluation report: one self-contained HTML page per run date (metrics per variant,
tag and category plots, sample tags) that the evaluation stage writes under `_reports/eval/`."""

from recgpt.report.data import (
    HEADLINE,
    MISSING,
    ReportData,
    ReportDataError,
    format_value,
    row_decimals,
    share_metrics,
)
from recgpt.report.page import render_html, write_report

__all__ = [
    "HEADLINE",
    "MISSING",
    "ReportData",
    "ReportDataError",
    "format_value",
    "render_html",
    "row_decimals",
    "share_metrics",
    "write_report",
]
