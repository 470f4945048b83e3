"""The environment E of a prompt: the situation of a region on a day (season by hemisphere,
festivals in their lead window, and weather and trends where a feed provides them), as rows of
the `env_signals` table and as the one-line situation text the agents read.

Pure functions: the Spark job that fills `env_signals` for sources without their own signals
calls `situation_rows`, and the prompt builders call `situation_text` on a row.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from recgpt.agents.text import inline_text
from recgpt.calendar import Calendar

# The situation fields in the order a prompt shows them.
SITUATION_FIELDS: tuple[str, ...] = ("season", "weather", "festivals", "trends")

RegionDay = tuple[str, _dt.date]


def situation_rows(
    calendar: Calendar,
    days: Iterable[_dt.date],
    regions: Sequence[str] | None = None,
    weather: Mapping[RegionDay, str] | None = None,
    trends: Mapping[RegionDay, Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """One row per (region, day), shaped like `env_signals` without its run lineage: the season
    and festivals from the calendar, weather and trends from the optional feeds (a region-day a
    feed does not cover gets weather None and no trends). Every region of the calendar unless
    `regions` names some; an unknown region is a ConfigError."""
    weather, trends = weather or {}, trends or {}
    rows = []
    for day in days:
        for region in regions if regions is not None else sorted(calendar.regions):
            said = (weather.get((region, day)) or "").strip()
            rows.append(
                {
                    "region": region,
                    "season": calendar.season(day, region),
                    "weather": said or None,
                    "festivals": calendar.festivals_on(day, region),
                    "trends": [t.strip() for t in trends.get((region, day), ()) if t and t.strip()],
                    "dt": day,
                }
            )
    return rows


def situation_text(
    row: Mapping[str, Any],
    max_items: int,
    max_chars: int,
    fields: Sequence[str] = SITUATION_FIELDS,
) -> str:
    """`season: autumn; weather: rainy; festivals: halloween, mid-autumn; trends: knitwear` for
    the chosen fields, empty ones left out ("unknown" if all are). Weather, festival and trend
    text comes from feeds, so each entry is cleaned and cut to `max_chars`, and at most
    `max_items` festivals or trends are shown."""
    parts = []
    for name in fields:
        value = row.get(name)
        if isinstance(value, str):
            shown = inline_text(value, max_chars)
        else:
            entries = [inline_text(str(v), max_chars) for v in value or ()]
            shown = ", ".join([e for e in entries if e][:max_items])
        if shown:
            parts.append(f"{name}: {shown}")
    return "; ".join(parts) or "unknown"
