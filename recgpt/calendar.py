"""The situation calendar: seasons by hemisphere and festivals by date and region, from config.

Shared by the synthetic generator (demand follows the calendar) and by the env_signals builder
that gives the Global Planner its environment E.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recgpt.errors import ConfigError

_NORTH_SEASONS = {
    12: "winter",
    1: "winter",
    2: "winter",
    3: "spring",
    4: "spring",
    5: "spring",
    6: "summer",
    7: "summer",
    8: "summer",
    9: "autumn",
    10: "autumn",
    11: "autumn",
}
_FLIP = {"winter": "summer", "summer": "winter", "spring": "autumn", "autumn": "spring"}


def season_of(day: _dt.date, hemisphere: str) -> str:
    season = _NORTH_SEASONS[day.month]
    if hemisphere == "south":
        return _FLIP[season]
    if hemisphere != "north":
        raise ConfigError(f"hemisphere must be north or south, not {hemisphere!r}")
    return season


@dataclass(frozen=True)
class Festival:
    name: str
    regions: frozenset[str] | None  # None = all regions
    lead_days: int
    month_day: str | None = None
    dates: tuple[_dt.date, ...] = ()

    def occurrences(self, year: int) -> list[_dt.date]:
        if self.month_day:
            month, day = (int(x) for x in self.month_day.split("-"))
            return [_dt.date(year, month, day)]
        return [d for d in self.dates if d.year == year]

    def active(self, day: _dt.date, region: str) -> bool:
        """True from `lead_days` before an occurrence until the day itself."""
        if self.regions is not None and region not in self.regions:
            return False
        for year in (day.year, day.year + 1):
            for when in self.occurrences(year):
                if 0 <= (when - day).days <= self.lead_days:
                    return True
        return False


@dataclass(frozen=True)
class Region:
    name: str
    hemisphere: str
    country: str
    climate: str


@dataclass(frozen=True)
class Calendar:
    regions: Mapping[str, Region]
    festivals: tuple[Festival, ...]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Calendar:
        regions = {
            name: Region(name, str(r["hemisphere"]), str(r.get("country", "")), str(r.get("climate", "")))
            for name, r in (cfg.get("regions") or {}).items()
        }
        festivals = []
        for f in cfg.get("festivals") or []:
            region_list = f.get("regions", "all")
            regs = None if region_list == "all" else frozenset(str(r) for r in region_list)
            if regs is not None and not regs <= set(regions):
                raise ConfigError(f"festival {f['name']}: unknown regions {sorted(regs - set(regions))}")
            if not f.get("month_day") and not f.get("dates"):
                raise ConfigError(f"festival {f['name']} needs month_day or dates")
            festivals.append(
                Festival(
                    name=str(f["name"]),
                    regions=regs,
                    lead_days=int(f.get("lead_days", 7)),
                    month_day=f.get("month_day"),
                    dates=tuple(_dt.date.fromisoformat(str(d)) for d in f.get("dates") or ()),
                )
            )
        return cls(regions, tuple(festivals))

    def region(self, name: str) -> Region:
        try:
            return self.regions[name]
        except KeyError:
            raise ConfigError(f"region {name!r} is not in the calendar ({sorted(self.regions)})") from None

    def season(self, day: _dt.date, region: str) -> str:
        return season_of(day, self.region(region).hemisphere)

    def festivals_on(self, day: _dt.date, region: str) -> list[str]:
        return [f.name for f in self.festivals if f.active(day, region)]

    def days(self, start: _dt.date, end: _dt.date) -> Sequence[_dt.date]:
        return [start + _dt.timedelta(days=i) for i in range((end - start).days + 1)]
