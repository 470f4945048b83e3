"""The run date: parsed once from config or the command line, printed in ISO form everywhere, and
the day arithmetic every stage's windows are built from (month, leap-day and year ends)."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from recgpt.errors import ConfigError
from recgpt.rundate import RunDate, iso, shift


def day(text: str) -> RunDate:
    return RunDate.parse(text)


def test_iso_form_is_what_str_and_iso_print():
    run = day("2025-01-05")
    assert str(run) == run.iso == "2025-01-05"  # zero-padded month and day
    assert f"run.dt={run}" == "run.dt=2025-01-05"
    assert run.day == dt.date(2025, 1, 5)


def test_parse_takes_an_iso_string_a_date_or_a_run_date():
    run = day("2025-10-28")
    assert RunDate.parse(dt.date(2025, 10, 28)) == run
    assert RunDate.parse(run) is run
    # Equal days are equal values: usable as keys and in sets.
    assert {run: 1}[RunDate(dt.date(2025, 10, 28))] == 1
    # A RunDate is not its ISO string: compare `.iso` with strings.
    assert run != "2025-10-28" and run.iso == "2025-10-28"


@pytest.mark.parametrize(
    "value",
    [
        "2025-13-01",
        "2025-02-29",
        "2025-10-32",
        "28/10/2025",
        "yesterday",
        "",
        " 2025-10-28",
        None,
        # Other ISO spellings fromisoformat would take, and an integer from the command line.
        "20251028",
        "2025-W44-2",
        20251028,
    ],
)
def test_a_value_that_is_not_a_day_is_a_config_error_naming_it(value):
    with pytest.raises(ConfigError, match=re.escape(f"run.dt must be YYYY-MM-DD, not {value!r}")):
        RunDate.parse(value)
    with pytest.raises(ConfigError, match=re.escape(f"ingest.until must be YYYY-MM-DD, not {value!r}")):
        RunDate.parse(value, "ingest.until")


def test_a_time_is_not_a_day():
    moment = dt.datetime(2025, 10, 28, 9, 30)
    with pytest.raises(ConfigError, match=re.escape(repr(moment))):
        RunDate.parse(moment)


@pytest.mark.parametrize(
    ("start", "days", "before", "after"),
    [
        ("2025-10-28", 1, "2025-10-27", "2025-10-29"),
        ("2025-03-01", 1, "2025-02-28", "2025-03-02"),  # a 28-day February
        ("2024-03-01", 1, "2024-02-29", "2024-03-02"),  # a leap year's February
        ("2025-01-01", 1, "2024-12-31", "2025-01-02"),  # the year end
        ("2025-12-31", 1, "2025-12-30", "2026-01-01"),
        ("2025-10-28", 30, "2025-09-28", "2025-11-27"),  # a 30-day window over a month end
        ("2025-03-01", 1095, "2022-03-02", "2028-02-29"),  # "three years" of days over leap days
        ("2025-10-28", 0, "2025-10-28", "2025-10-28"),
    ],
)
def test_minus_and_plus_count_calendar_days(start, days, before, after):
    run = day(start)
    assert run.minus(days) == day(before)
    assert run.plus(days) == day(after)
    # Each is the other's inverse, and a negative count goes the other way.
    assert run.minus(days).plus(days) == run
    assert run.minus(-days) == run.plus(days)


def test_days_until_counts_forward_and_backward():
    christmas, epiphany = day("2024-12-25"), day("2025-01-06")
    assert christmas.days_until(epiphany) == 12
    assert epiphany.days_until(christmas) == -12
    assert day("2024-02-28").days_until(day("2024-03-01")) == 2  # over the leap day
    assert christmas.days_until(christmas) == 0


def test_run_dates_order_like_the_days_they_are():
    days = [day("2025-01-01"), day("2024-12-31"), day("2024-02-29")]
    assert sorted(days) == [day("2024-02-29"), day("2024-12-31"), day("2025-01-01")]
    assert day("2024-12-31") < day("2025-01-01")


def test_shift_and_iso_give_the_iso_form_of_any_day_value():
    # `shift` is the config resolver `date_add`: strings in, strings out.
    assert shift("2025-12-25", 14) == "2026-01-08"
    assert shift(day("2025-03-01"), -1) == "2025-02-28"
    assert shift(dt.date(2024, 2, 28), 1) == "2024-02-29"
    assert iso(dt.date(2025, 1, 5)) == iso("2025-01-05") == iso(day("2025-01-05")) == "2025-01-05"
    with pytest.raises(ConfigError, match=re.escape("not '2025-02-30'")):
        shift("2025-02-30", 1)
