"""Tag recall on a hand-made catalog embedded by the real embedding model: each tag's nearest
items by cosine, recent purchases excluded per user, only the configured variant recalled, a rerun
without duplicates, and the stage's data-quality checkpoint."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from jobs import dq, embed_items, recall
from jobs.stage import execute, open_context
from recgpt.config import load_config
from recgpt.tables import BEHAVIORS, ITEMS, TAG_RECALL, USER_INTENT_TAGS
from tests.handmade import DT, V1, V2, behaviour, put, tag, ts

pytestmark = pytest.mark.slow

ITEMS_ROWS = [
    ("b1", "waterproof leather hiking boots", "hiking-boots"),
    ("b2", "insulated winter hiking boots", "hiking-boots"),
    ("t1", "ultralight backpacking tent", "tents"),
    ("t2", "family-size camping tent", "tents"),
    ("y1", "non-slip yoga mat", "yoga"),
    ("d1", "adjustable dumbbell set", "dumbbells"),
    ("s1", "merino wool hiking socks", "socks"),
]


def test_recall_returns_nearest_items_without_recent_purchases(spark, tmp_path):
    base = [f"storage.warehouse={tmp_path / 'wh'}", f"run.dt={DT}", "recall.items_per_tag=3"]
    cfg = load_config(base)
    ctx = open_context(cfg, "recall", spark)
    wh = ctx.warehouse
    put(wh, ITEMS, [{"item_id": i, "title": t, "category": c, "dt": "2025-10-01"} for i, t, c in ITEMS_ROWS])
    put(
        wh,
        BEHAVIORS,
        [
            behaviour("u1", "b1", "purchase", ts("2025-10-20")),  # 8 days before dt: excluded
            behaviour("u2", "b1", "purchase", ts("2025-09-01")),  # 57 days before: allowed
            behaviour("u2", "b2", "view", ts("2025-10-20")),  # a view is not a purchase
        ],
    )
    put(
        wh,
        USER_INTENT_TAGS,
        [
            tag("u1", 1, "hiking boots", V2),
            tag("u1", 2, "camping tent", V2),
            tag("u2", 1, "hiking boots", V2),
            tag("u1", 1, "yoga mat", V1),
        ],
    )
    execute(open_context(cfg, "embed_items", spark), embed_items.run)
    report = execute(ctx, recall.run)
    rows = wh.read(TAG_RECALL, dt=DT).orderBy("user_id", "tag_rank", "rank").toPandas()
    assert report.rows_in == 3 and report.rows_out == len(rows) == 9
    # Only the configured variant (v2, hybrid) was recalled.
    assert set(zip(rows.pipeline, rows.context_mode, strict=True)) == {("v2", "hybrid")}

    def items(user: str, tag_rank: int) -> list[str]:
        return rows[(rows.user_id == user) & (rows.tag_rank == tag_rank)].item_id.tolist()

    assert items("u1", 1)[0] == "b2" and "b1" not in items("u1", 1)
    assert items("u2", 1)[:2] in (["b1", "b2"], ["b2", "b1"])
    assert set(items("u1", 2)[:2]) == {"t1", "t2"}
    for _, group in rows.groupby(["user_id", "tag_rank"]):
        assert group["rank"].tolist() == [1, 2, 3]
        assert group.score.is_monotonic_decreasing
    assert (rows.tag[rows.tag_rank == 1] == "hiking boots").all()

    # A rerun replaces its partition: the same rows, not twice as many.
    execute(open_context(cfg, "recall", spark), recall.run)
    again = wh.read(TAG_RECALL, dt=DT)
    assert again.count() == 9
    # The V1 partition is written by a V1 recall, next to V2's.
    v1 = load_config([*base, "pipeline=v1_baseline"])
    execute(open_context(v1, "recall", spark), recall.run)
    assert wh.read(TAG_RECALL, dt=DT).where(F.col("pipeline") == "v1_baseline").count() == 3
    assert wh.read(TAG_RECALL, dt=DT).count() == 12

    gate = execute(open_context(load_config([*base, "dq.stages=[recall]"]), "dq", spark), dq.run)
    assert "0 failed" in gate.details["dq"], gate.details
