"""The run date: the one day a nightly run is for. Parsed once when a stage starts; every window
a stage reads ("the 30 days before", "the held-out week after") is day arithmetic on it, here."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from typing import Any

from recgpt.errors import ConfigError

# Only the calendar form every partition and override uses: `fromisoformat` would also take
# `20251028` or `2025-W44-2`, and an integer date from the command line would then slip through.
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, order=True)
class RunDate:
    """A calendar day. `str()` is its ISO form (`2025-10-28`), the form of every `dt` column,
    partition value and command-line override."""

    day: _dt.date

    @classmethod
    def parse(cls, value: Any, setting: str = "run.dt") -> RunDate:
        """A RunDate from `YYYY-MM-DD`, a date or a RunDate; anything else is a ConfigError that
        names the `setting` the value came from."""
        if isinstance(value, RunDate):
            return value
        if isinstance(value, _dt.datetime):
            raise ConfigError(f"{setting} is a day, not a time: {value!r}")
        if isinstance(value, _dt.date):
            return cls(value)
        text = str(value)
        try:
            if not _ISO_DAY.fullmatch(text):
                raise ValueError(text)
            return cls(_dt.date.fromisoformat(text))
        except ValueError:
            raise ConfigError(f"{setting} must be YYYY-MM-DD, not {value!r}") from None

    def __str__(self) -> str:
        return self.day.isoformat()

    @property
    def iso(self) -> str:
        return self.day.isoformat()

    def minus(self, days: int) -> RunDate:
        """The day `days` before this one (`minus(1)` is the day before the run date)."""
        return RunDate(self.day - _dt.timedelta(days=int(days)))

    def plus(self, days: int) -> RunDate:
        """The day `days` after this one (the end of a held-out window of `days` days)."""
        return RunDate(self.day + _dt.timedelta(days=int(days)))

    def days_until(self, other: RunDate) -> int:
        return (other.day - self.day).days


def iso(value: Any) -> str:
    """The ISO form of a run date given as a RunDate, a date or a string (validated)."""
    return RunDate.parse(value).iso


def shift(value: Any, days: int) -> str:
    """`value` plus `days` (negative: before) in ISO form; the config resolver `date_add`."""
    return RunDate.parse(value).plus(days).iso
