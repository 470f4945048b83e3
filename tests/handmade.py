"""Hand-made warehouse rows for stage tests whose expected results are worked out by hand."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from pyspark.sql.pandas.types import from_arrow_schema

from recgpt.tables import TableSpec

DT = "2025-10-28"
V2 = {"pipeline": "v2", "context_mode": "hybrid", "model": "m", "prompt_version": "v2.0"}
V1 = {"pipeline": "v1_baseline", "context_mode": "text", "model": "m", "prompt_version": "v1.0"}


def ts(day: str, hour: int = 12) -> _dt.datetime:
    return _dt.datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00")


def put(wh: Any, spec: TableSpec, rows: list[dict[str, Any]], dt: str | None = None) -> None:
    """Rows as given (missing nullable columns null, lineage filled), replacing their dt partitions."""
    full = []
    for row in rows:
        day = row.get("dt") or dt or DT
        lineage = {"dt": _dt.date.fromisoformat(day), "run_id": "test", "created_at": ts(DT)}
        full.append({c: lineage[c] if c in lineage else row.get(c) for c in spec.column_names})
    df = wh.spark.createDataFrame(full, schema=from_arrow_schema(spec.schema))
    wh.write(df, spec, mode="replace_partitions")


def behaviour(user: str, item: str | None, kind: str, when: _dt.datetime) -> dict[str, Any]:
    return {"user_id": user, "item_id": item, "behavior": kind, "ts": when, "dt": when.date().isoformat()}


def tag(user: str, rank: int, text: str, variant: dict[str, str]) -> dict[str, Any]:
    return {"user_id": user, "rank": rank, "tag": text, "persona": "p", "score": 5, "reason": "r"} | {
        "evidence_item_ids": [],
        **variant,
    }


def recalled(user: str, tag_rank: int, text: str, items: list[tuple[str, float]], variant: dict[str, str]):
    return [
        {"user_id": user, "tag_rank": tag_rank, "tag": text, "rank": r, "item_id": i, "score": s}
        | {"pipeline": variant["pipeline"], "context_mode": variant["context_mode"]}
        for r, (i, s) in enumerate(items, start=1)
    ]
