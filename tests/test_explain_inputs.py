"""What the explain stage and the judge read about a pair beside the item: the item the user chose
lately in the same category, worked out by hand on a few behaviours."""

from __future__ import annotations

from recgpt.rundate import RunDate
from recgpt.tables import BEHAVIORS, ITEMS
from tests.handmade import DT, behaviour, put, ts
from udfs.explain import recent_titles

CATALOG = [
    ("b1", "Ridge Hiking Boot", "hiking boots"),
    ("b2", "Fell Hiking Boot", "hiking boots"),
    ("b3", "Scree Hiking Boot", "hiking boots"),
    ("b4", "Tor Hiking Boot", "hiking boots"),
    ("s1", "Alpine Wool Sock", "socks"),
    ("t1", "Dome Tent", "tents"),
]


def test_the_recent_item_is_the_newest_other_one_of_the_category_before_the_date(spark, warehouse):
    wh = warehouse
    put(wh, ITEMS, [{"item_id": i, "title": t, "category": c, "dt": "2025-09-01"} for i, t, c in CATALOG])
    put(
        wh,
        BEHAVIORS,
        [
            behaviour("u1", "b2", "view", ts("2025-10-20")),
            behaviour("u1", "b3", "purchase", ts("2025-10-25")),  # the newest boot before dt
            behaviour("u1", "b4", "view", ts("2025-10-28", 9)),  # on dt: not before it
            behaviour("u1", "b1", "view", ts("2025-10-27")),  # the recommended boot itself
            behaviour("u1", "s1", "view", ts("2025-10-27", 18)),  # newer, but socks
            behaviour("u2", "b2", "view", ts("2025-10-10")),  # a tie: the lower item id wins
            behaviour("u2", "b3", "view", ts("2025-10-10")),
            behaviour("u3", "b2", "view", ts("2025-07-01")),  # more than 90 days before dt
            behaviour("u4", None, "search", ts("2025-10-20")),
        ],
    )
    pairs = spark.createDataFrame(
        [
            ("u1", "b1", "hiking boots"),
            ("u1", "t1", "tents"),  # no tent chosen
            ("u2", "b1", "hiking boots"),
            ("u3", "b1", "hiking boots"),
            ("u4", "b1", "hiking boots"),
        ],
        "user_id string, item_id string, category string",
    )
    dt = RunDate.parse(DT)
    found = {(r.user_id, r.item_id): r.recent_title for r in recent_titles(wh, dt, pairs, 90).collect()}
    assert found == {("u1", "b1"): "Scree Hiking Boot", ("u2", "b1"): "Fell Hiking Boot"}
    assert recent_titles(wh, dt, pairs, 0).count() == 0
