"""The experts' training examples read from a hand-made warehouse: one row per planner persona
of a user with behaviour in the reward window, with the window's categories, the newest history
titles, the recent purchases, the context's categories line and the user's situation, as worked
out by hand."""

from __future__ import annotations

from pyspark.sql import functions as F

from recgpt.config import load_config, plain
from recgpt.rundate import RunDate
from recgpt.tables import BEHAVIORS, ITEMS, USER_CONTEXT, USER_PERSONAS, USERS
from tests.handmade import DT, V1, V2, behaviour, put, ts
from udfs.policy_data import training_examples

CATALOG = {
    "h1": ("trail boots", "hiking"),
    "h2": ("trail tent", "hiking"),
    "k1": ("copper kettle", "kitchen"),
    "k2": ("cast iron skillet", "kitchen"),
    "b1": ("baby stroller", "baby"),
}
# The project's settings, with a history of the newest two titles and every user.
CFG = {**plain(load_config([]).policy.data), "history_items": 2, "sample_users": None}


def persona(user: str, rank: int, name: str, variant: dict[str, str]) -> dict[str, object]:
    return {"user_id": user, "persona_rank": rank, "name": name, "description": f"{name} things"} | {
        "evidence": ["e"],
        "signals": [],
        **variant,
    }


def world(wh) -> None:
    put(wh, ITEMS, [{"item_id": i, "title": t, "category": c} for i, (t, c) in CATALOG.items()])
    put(wh, USERS, [{"user_id": "u1", "region": "north-cn"}, {"user_id": "u2", "region": "nowhere"}])
    day = RunDate.parse(DT)
    rows = [
        behaviour("u1", "h2", "purchase", ts(day.minus(2).iso)),  # bought just before: excluded
        behaviour("u1", "k1", "view", ts(day.plus(1).iso)),  # the reward window...
        behaviour("u1", "h1", "purchase", ts(day.plus(3).iso)),
        behaviour("u1", "k2", "click", ts(day.plus(6).iso, 23)),
        behaviour("u1", "b1", "view", ts(day.plus(7).iso)),  # ...ends the day before this
        behaviour("u2", None, "search", ts(day.plus(1).iso)),  # no item: no category
        behaviour("u2", "b1", "cart", ts(day.plus(2).iso)),
        behaviour("u3", "h1", "view", ts(day.minus(1).iso)),  # history only: no reward window
        behaviour("u4", "k1", "view", ts(day.plus(1).iso)),  # no persona
    ]
    put(wh, BEHAVIORS, rows)
    personas = [persona("u1", 1, "camper", V2), persona("u1", 2, "cook", V2), persona("u2", 1, "parent", V2)]
    personas += [persona("u3", 1, "walker", V2), persona("u2", 1, "v1 persona", V1)]
    put(wh, USER_PERSONAS, personas)
    context = {"events": 2, "events_kept": 2, "buckets": 1, "full_tokens": 10, "v1_text": "x"}
    context |= {"v1_tokens": 5, "v1_dropped_buckets": 0, "hybrid_text": "x", "hybrid_dropped_buckets": 0}
    put(
        wh,
        USER_CONTEXT,
        [
            context
            | {"user_id": "u1", "entity_ids": ["b1", "h2", "k2"], "hybrid_tokens": 3}
            | {"v1_text": "categories: hiking 1, kitchen 1\n2025-10: trail tent; cast iron skillet"},
            context | {"user_id": "u2", "entity_ids": [], "hybrid_tokens": 0},
        ],
    )


def test_examples_are_the_planners_personas_with_their_reward_window(spark, warehouse):
    world(warehouse)
    variant = (F.col("pipeline") == "v2") & (F.col("context_mode") == "hybrid")
    calendar = plain(load_config([]).calendar)
    rows = training_examples(spark, warehouse, RunDate.parse(DT), variant, CFG, calendar).collect()
    got = [(r.user_id, r.persona_rank, r.name) for r in rows]
    assert got == [("u1", 1, "camper"), ("u1", 2, "cook"), ("u2", 1, "parent")]
    u1, _, u2 = rows
    assert u1.window_categories == ["hiking", "kitchen"]  # not the baby view of day 7
    assert u2.window_categories == ["baby"]
    assert sorted(u1.history) == ["cast iron skillet", "trail tent"]  # the newest two
    assert u2.history == []
    assert u1.excluded == ["h2"] and u2.excluded == []
    assert u1.bought_titles == ["trail tent"] and u2.bought_titles == []
    # The first line of the context: mining grounds the user's tags in its categories.
    assert u1.categories_line == "categories: hiking 1, kitchen 1" and u2.categories_line == "x"
    assert u1.season in ("autumn", "spring") and u2.season is None  # a region the calendar lacks
    # A seeded sample of users keeps all of a user's personas.
    sample = {**CFG, "sample_users": 1}
    one = training_examples(spark, warehouse, RunDate.parse(DT), variant, sample, calendar)
    users = {r.user_id for r in one.collect()}
    assert len(users) == 1 and one.count() == {"u1": 2, "u2": 1}[users.pop()]
