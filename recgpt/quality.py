"""Data-quality suites: great-expectations suites built from the `quality` config, the results
flattened into `dq_results` rows, and the severity policy that decides whether a run stops.

No Spark here: the Spark side (derived columns, running checkpoints) is in `udfs/quality.py`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recgpt.errors import ConfigError, RecGPTError

SEVERITIES = ("critical", "warning")
# Keys of a configured check that are ours, not arguments of the expectation.
_OWN_KEYS = {"expect", "severity"}

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


class QualityGateError(RecGPTError):
    """A critical expectation failed: the run stops and names it."""


@dataclass(frozen=True)
class CheckSpec:
    table: str
    expect: str
    severity: str
    kwargs: Mapping[str, Any]

    @property
    def column(self) -> str | None:
        col = self.kwargs.get("column")
        if col is None and "column_list" in self.kwargs:
            return ",".join(self.kwargs["column_list"])
        return col


def check_specs(table: str, configured: Iterable[Mapping[str, Any]]) -> list[CheckSpec]:
    specs = []
    for item in configured:
        item = dict(item)
        expect = item.get("expect")
        severity = item.get("severity", "warning")
        if not expect:
            raise ConfigError(f"quality.suites.{table}: an entry lacks `expect`: {item}")
        if severity not in SEVERITIES:
            raise ConfigError(f"quality.suites.{table}.{expect}: severity must be one of {SEVERITIES}")
        specs.append(
            CheckSpec(
                table, str(expect), str(severity), {k: v for k, v in item.items() if k not in _OWN_KEYS}
            )
        )
    return specs


def _camel(expect: str) -> str:
    return "".join(part.capitalize() for part in expect.split("_"))


def build_suite(name: str, specs: Sequence[CheckSpec]) -> Any:
    """A great-expectations ExpectationSuite; each expectation carries its severity in `meta`."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=name)
    for spec in specs:
        cls = getattr(gxe, _camel(spec.expect), None)
        if cls is None:
            raise ConfigError(f"quality.suites.{spec.table}: unknown expectation {spec.expect!r}")
        try:
            suite.add_expectation(cls(**spec.kwargs, meta={"severity": spec.severity}))
        except Exception as exc:  # pydantic validation of the arguments
            raise ConfigError(f"quality.suites.{spec.table}.{spec.expect}: {exc}") from exc
    return suite


def row_count_check(table: str, previous: int | None, tolerance: float, severity: str) -> CheckSpec:
    """Row-count drift against the previous run of the table (none yet: at least one row)."""
    if previous is None:
        bounds: dict[str, Any] = {"min_value": 1}
    else:
        bounds = {
            "min_value": int(previous * (1 - tolerance)),
            "max_value": int(previous * (1 + tolerance)) + 1,
        }
    return CheckSpec(table, "expect_table_row_count_to_be_between", severity, bounds)


def table_checks(
    table: str,
    configured: Iterable[Mapping[str, Any]],
    row_count: CheckSpec | None,
    previous: int | None,
    drift: Mapping[str, Any],
) -> list[CheckSpec]:
    """The expectations a checkpoint runs on one table: its configured suite, then one row-count
    expectation: the stage's own when it has one (`row_count`), else drift against the row count
    of the table's previous run (`drift`: tolerance and severity from the config)."""
    specs = check_specs(table, configured)
    specs.append(row_count or row_count_check(table, previous, float(drift["tolerance"]), drift["severity"]))
    return specs


@dataclass(frozen=True)
class CheckResult:
    table: str
    expectation: str
    column: str | None
    severity: str
    success: bool
    observed: str | None
    unexpected_count: int | None
    unexpected_percent: float | None
    details: str

    def describe(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        seen = f" (observed {self.observed})" if self.observed not in (None, "None") else ""
        bad = f", {self.unexpected_count:,} unexpected" if self.unexpected_count else ""
        return f"{where}: {self.expectation}{seen}{bad}"


def flatten(table: str, validation_result: Any) -> list[CheckResult]:
    """One CheckResult per expectation of a great-expectations validation result."""
    out = []
    for r in validation_result.results:
        config = r.expectation_config
        kwargs = {k: v for k, v in dict(config.kwargs).items() if k not in ("batch_id",)}
        result = dict(r.result or {})
        column = kwargs.get("column") or (
            ",".join(kwargs["column_list"]) if "column_list" in kwargs else None
        )
        observed = result.get("observed_value")
        out.append(
            CheckResult(
                table=table,
                expectation=str(config.type),
                column=column,
                severity=str((config.meta or {}).get("severity", "warning")),
                success=bool(r.success),
                observed=None if observed is None else str(observed),
                unexpected_count=result.get("unexpected_count"),
                unexpected_percent=result.get("unexpected_percent"),
                details=json.dumps(
                    {
                        "kwargs": kwargs,
                        "sample": result.get("partial_unexpected_list"),
                        "exception": (r.exception_info or {}).get("exception_message"),
                    },
                    default=_json_value,
                ),
            )
        )
    return out


def _json_value(value: Any) -> Any:
    """What json cannot encode: a missing value of a pandas-validated column as null (as Spark
    reports it), anything else as its text."""
    import pandas as pd

    return None if value is pd.NA or value is pd.NaT else str(value)


def gate(
    results: Sequence[CheckResult], fail_on: Sequence[str], report: str
) -> tuple[list[CheckResult], list[CheckResult]]:
    """(blocking failures, warnings). Raises QualityGateError naming every blocking failure."""
    failed = [r for r in results if not r.success]
    blocking = [r for r in failed if r.severity in fail_on]
    warnings = [r for r in failed if r.severity not in fail_on]
    if blocking:
        lines = "\n".join(f"  - [{r.severity}] {r.describe()}" for r in blocking)
        raise QualityGateError(
            f"{len(blocking)} critical data-quality expectation(s) failed:\n{lines}\nreport: {report}"
        )
    return blocking, warnings


def outcome(results: Sequence[CheckResult]) -> str:
    """The gate's summary line: expectations run, how many failed, and how many of those were
    critical and how many warnings."""
    failed = [r for r in results if not r.success]
    critical = sum(r.severity == "critical" for r in failed)
    return (
        f"{len(results)} expectations, {len(failed)} failed "
        f"({critical} critical, {len(failed) - critical} warning)"
    )


def warning_lines(results: Sequence[CheckResult], fail_on: Sequence[str]) -> list[str]:
    """The failed expectations that let the run go on (severity not in `fail_on`), described."""
    return [r.describe() for r in results if not r.success and r.severity not in fail_on]
