"""The evaluate stage on a hand-made warehouse whose every metric is worked out by hand: two
pipeline variants, a failed user, a user without held-out activity, the co-visitation channel,
planted personas and the cost ledger; then its data-quality checkpoint, a rerun and the report."""

from __future__ import annotations

import pytest

from jobs import dq, evaluate
from jobs.stage import execute, open_context
from recgpt.config import load_config
from recgpt.rundate import RunDate
from recgpt.tables import (
    BEHAVIORS,
    COVISIT_RECALL,
    EVAL_COMPARISONS,
    EVAL_METRICS,
    ITEMS,
    LLM_CALLS,
    MINING_FAILURES,
    PLANTED_PERSONAS,
    TAG_RECALL,
    USER_CONTEXT,
    USER_INTENT_TAGS,
)
from tests.handmade import DT, V1, V2, behaviour, put, recalled, tag, ts

pytestmark = pytest.mark.slow


@pytest.fixture
def world(spark, tmp_path):
    cfg = load_config([f"storage.warehouse={tmp_path / 'wh'}", f"run.dt={DT}", "eval.window_days=7"])
    ctx = open_context(cfg, "evaluate", spark)
    wh = ctx.warehouse
    items = [
        ("b1", "waterproof hiking boots", "hiking-boots"),
        ("b2", "insulated hiking boots", "hiking-boots"),
        ("t1", "ultralight backpacking tent", "tents"),
        ("t2", "family-size camping tent", "tents"),
        ("y1", "non-slip yoga mat", "yoga"),
        ("d1", "adjustable dumbbell set", "dumbbells"),
    ]
    put(wh, ITEMS, [{"item_id": i, "title": t, "category": c, "dt": "2025-10-01"} for i, t, c in items])
    put(
        wh,
        BEHAVIORS,
        [
            behaviour("u1", "b1", "purchase", ts("2025-10-20")),
            behaviour("u1", "b1", "view", ts("2025-10-22")),  # a second hiking-boots behaviour
            behaviour("u1", "t1", "view", ts("2025-09-01")),
            behaviour("u2", "y1", "view", ts("2025-10-01")),
            behaviour("u3", "y1", "view", ts("2025-10-02")),
            # The held-out window [10-28, 11-04): u1's first interaction is b2 (a search has no item).
            behaviour("u1", None, "search", ts("2025-10-28", 0)),
            behaviour("u1", "b2", "view", ts("2025-10-29", 10)),
            behaviour("u1", "t2", "cart", ts("2025-10-30")),
            behaviour("u2", "d1", "purchase", ts("2025-10-29")),
            behaviour("u2", "y1", "click", ts("2025-11-10")),  # after the window
        ],
    )
    put(
        wh,
        USER_CONTEXT,
        [
            {"user_id": u, "events": 2, "events_kept": 2, "buckets": 1, "full_tokens": 10, "v1_text": "x"}
            | {"v1_tokens": 5, "v1_dropped_buckets": 0, "hybrid_text": "x", "entity_ids": []}
            | {"hybrid_tokens": 3, "hybrid_dropped_buckets": 0}
            for u in ("u1", "u2", "u3")
        ],
    )
    put(
        wh,
        USER_INTENT_TAGS,
        [
            tag("u1", 1, "trail hiking boots", V2),
            tag("u1", 2, "camping tent", V2),
            tag("u2", 1, "hiking boots", V2),
            tag("u3", 1, "yoga mat", V2),
            tag("u3", 2, "yoga block", V2),
            tag("u1", 1, "camping tent", V1),
        ],
    )
    put(
        wh,
        MINING_FAILURES,
        [{"user_id": u, "step": "route", "reason": "no_valid_tag"} | V1 for u in ("u2", "u3")],
    )
    put(
        wh,
        TAG_RECALL,
        recalled("u1", 1, "trail hiking boots", [("b2", 0.9), ("t1", 0.5)], V2)
        + recalled("u1", 2, "camping tent", [("t2", 0.8), ("t1", 0.7)], V2)
        + recalled("u2", 1, "hiking boots", [("b1", 0.9), ("b2", 0.8)], V2)
        + recalled("u3", 1, "yoga mat", [("y1", 0.9)], V2)
        + recalled("u3", 2, "yoga block", [("y1", 0.7)], V2)
        + recalled("u1", 1, "camping tent", [("t1", 0.8)], V1),
    )
    put(
        wh,
        COVISIT_RECALL,
        [
            {"user_id": "u1", "rank": 1, "item_id": "t2", "score": 3.0},
            {"user_id": "u2", "rank": 1, "item_id": "d1", "score": 1.0},
        ],
    )
    put(
        wh,
        PLANTED_PERSONAS,
        [
            {"user_id": "u1", "persona": "outdoor", "description": "d", "weight": 0.5}
            | {"categories": ["hiking-boots", "tents"]},
            {"user_id": "u1", "persona": "yogi", "description": "d", "weight": 0.5, "categories": ["yoga"]},
            {
                "user_id": "u2",
                "persona": "gym",
                "description": "d",
                "weight": 1.0,
                "categories": ["dumbbells"],
            },
            {"user_id": "u3", "persona": "yogi", "description": "d", "weight": 1.0, "categories": ["yoga"]},
        ],
        dt="2025-10-01",
    )
    put(
        wh,
        LLM_CALLS,
        [
            {"stage": "mine_intents.v2.hybrid", "request_key": f"k{i}", "user_id": "u1"}
            | {"prompt_tokens": 100, "generated_tokens": 20, "latency_ms": 1.0, "attempts": 1, "model": "m"}
            for i in range(3)
        ],
    )
    return cfg


def metrics_of(ctx) -> dict[tuple[str, str], dict[str, float | None]]:
    out: dict[tuple[str, str], dict[str, float | None]] = {}
    for r in ctx.warehouse.read(EVAL_METRICS, dt=DT).collect():
        out.setdefault((r.pipeline, r.context_mode), {})[r.metric] = r.value
    return out


def test_evaluate_scores_each_variant_as_worked_out_by_hand(spark, world):
    ctx = open_context(world, "evaluate", spark)
    report = execute(ctx, evaluate.run)
    m = metrics_of(ctx)
    assert set(m) == {("v2", "hybrid"), ("v1_baseline", "text")}
    v2, v1 = m[("v2", "hybrid")], m[("v1_baseline", "text")]

    # u1's next interaction (b2, hiking boots) is a tag category; u2's (d1, dumbbells) is not.
    assert v2["hr30"] == pytest.approx(0.5)
    # u1: b2 and t2 both in [b2, t2, t1]; u2: d1 not in [b1, b2].
    assert v2["recall_at_30_tags"] == pytest.approx(0.5)
    assert v2["recall_at_30_covisit"] == pytest.approx(0.75)  # u1: t2 of {b2, t2}; u2: d1
    assert v2["exclusive_recall"] == pytest.approx(0.25)  # u1: b2 only; u2: nothing
    assert v2["persona_recovery"] == pytest.approx(0.5)  # u1 1/2, u2 0, u3 1
    assert v2["novelty"] == pytest.approx(1 / 3)  # only u2's hiking boots are new to its history
    assert 0.0 < v2["diversity"] < 1.0
    assert v2["failure_rate"] == 0.0
    assert v2["tokens_per_user"] == pytest.approx(360 / 3)
    assert v2["catalog_coverage_tags"] == pytest.approx(5 / 6)
    assert v2["catalog_coverage_covisit"] == pytest.approx(2 / 6)
    assert v2["tagged_users"] == 3 and v2["heldout_users"] == 2

    # V1: only u1 has a tag (tents); the failed users count as misses.
    assert v1["hr30"] == 0.0
    assert v1["recall_at_30_tags"] == 0.0
    assert v1["exclusive_recall"] == 0.0
    assert v1["persona_recovery"] == pytest.approx(1 / 6)
    assert v1["failure_rate"] == pytest.approx(2 / 3)
    assert v1["tokens_per_user"] is None  # no ledger rows for V1
    assert v1["recall_at_30_covisit"] == pytest.approx(0.75)  # the same users, the same channel

    # The LLM-free baselines. History before dt: u1 hiking-boots 2, tents 1; u2 and u3 yoga 1.
    # Popular: hiking-boots 2, yoga 2, tents 1. V2 names 2 categories for u1 (hiking-boots, tents)
    # and 1 for u2: both lists hold u1's next (hiking-boots), neither u2's (dumbbells).
    assert (v2["hr30_history"], v2["hr30_popular"]) == (pytest.approx(0.5), pytest.approx(0.5))
    # V1 names 1 category for u1 and none for the failed u2: the baselines get as many.
    assert (v1["hr30_history"], v1["hr30_popular"]) == (pytest.approx(0.5), pytest.approx(0.5))
    for name in ("hr_history_top1", "hr_history_top3", "hr_popular_top1", "hr_popular_top3"):
        assert v2[name] == v1[name] == pytest.approx(0.5), name

    # Intervals over users, and paired differences on the users both sides scored.
    rows = {(r.pipeline, r.metric): r for r in ctx.warehouse.read(EVAL_METRICS, dt=DT).collect()}
    hr = rows[("v2", "hr30")]
    assert 0.0 <= hr.ci95_low <= hr.value <= hr.ci95_high <= 1.0 and hr.ci95_low < hr.ci95_high
    assert rows[("v2", "tokens_per_user")].ci95_low is None
    paired = {
        (r.pipeline, r.other, r.metric): r for r in ctx.warehouse.read(EVAL_COMPARISONS, dt=DT).collect()
    }
    v2_v1 = paired[("v2", "v1_baseline.text", "hr30")]
    assert (v2_v1.difference, v2_v1.users) == (pytest.approx(0.5), 2)  # u1 1 - 0, u2 0 - 0
    assert v2_v1.ci95_low <= 0.5 <= v2_v1.ci95_high
    assert paired[("v1_baseline", "v2.hybrid", "hr30")].difference == pytest.approx(-0.5)
    failures = paired[("v2", "v1_baseline.text", "failure_rate")]
    assert (failures.difference, failures.users) == (pytest.approx(-2 / 3), 3)
    assert paired[("v1_baseline", "history", "hr30")].difference == pytest.approx(-0.5)

    page = report.details["report"]
    html = open(page, encoding="utf-8").read()
    assert "hr30" in html and "v1_baseline" in html
    assert "<h2>Comparisons</h2>" in html and "hr30_history" in html

    gate = execute(
        open_context(load_config([*_overrides(world), "dq.stages=[evaluate]"]), "dq", spark), dq.run
    )
    assert "0 failed" in gate.details["dq"], gate.details

    # A smaller K: u1's tags at K=1 are only "trail hiking boots" -> still a hit; recall drops.
    small = open_context(load_config([*_overrides(world), "eval.k=1"]), "evaluate", spark)
    execute(small, evaluate.run)
    v2k1 = metrics_of(small)[("v2", "hybrid")]
    assert v2k1["hr1"] == pytest.approx(0.5)
    assert v2k1["recall_at_1_tags"] == pytest.approx(0.25)  # u1: b2 of {b2, t2}
    # The rerun replaced the date's rows: one row per (variant, metric).
    assert ctx.warehouse.read(EVAL_METRICS, dt=DT).count() == len(metrics_of(small)) * len(v2k1)


def _overrides(cfg) -> list[str]:
    return [f"storage.warehouse={cfg.storage.warehouse}", f"run.dt={DT}", "eval.window_days=7"]


def test_evaluate_refuses_a_window_without_behaviours(spark, world):
    from recgpt.errors import RecGPTError

    # [10-28, 10-29) holds only a search, which has no item.
    late = load_config([*_overrides(world), "eval.window_days=1"])
    with pytest.raises(RecGPTError, match="no interactions in the held-out window"):
        evaluate.run(open_context(late, "evaluate", spark))


def test_evaluation_targets_sample_users_that_can_be_scored(spark, world, tmp_path):
    from bench.evaluation import sample_users

    ctx = open_context(world, "evaluate", spark)
    path = tmp_path / "users.txt"
    # u3 has a history but nothing in the window: it cannot be scored, so it is never sampled.
    assert sample_users(ctx, 7, 10, 0, path) == 2
    assert sorted(path.read_text().split()) == ["u1", "u2"]
    assert sample_users(ctx, 7, 1, 0, path) == 1 and len(path.read_text().split()) == 1


def test_the_reports_category_bars_count_behaviours_not_users(spark, world):
    from omegaconf import OmegaConf

    from udfs.evaluate import category_counts, evaluation_rows

    ctx = open_context(world, "evaluate", spark)
    eval_cfg = OmegaConf.to_container(world.eval, resolve=True)
    rows = evaluation_rows(
        ctx.warehouse,
        RunDate.parse(DT),
        eval_cfg,
        int(world.compress.lookback_days),
        list(world.compress.keep_behaviors),
    )
    categories = ctx.warehouse.read_snapshot(ITEMS, DT).select("item_id", "category")
    history, held = category_counts(rows.dropDuplicates(["user_id"]), categories)
    # u1: b1 bought and viewed again (2 hiking-boots), t1 (tents); u2 and u3: y1 (yoga) each.
    assert dict(zip(history.category, history["count"], strict=True)) == {
        "hiking-boots": 2,
        "tents": 1,
        "yoga": 2,
    }
    # The window: u1's b2 and t2, u2's d1 (u2's later click is outside it, the search has no item).
    assert dict(zip(held.category, held["count"], strict=True)) == {
        "hiking-boots": 1,
        "tents": 1,
        "dumbbells": 1,
    }


def test_the_evaluations_tag_figures_fold_tags_and_set_categories_apart(spark, tmp_path):
    from bench.evaluation import tag_figures

    cfg = load_config([f"storage.warehouse={tmp_path / 'wh'}", f"run.dt={DT}"])
    ctx = open_context(cfg, "evaluate", spark)
    put(ctx.warehouse, ITEMS, [{"item_id": "b1", "title": "hiking boots", "category": "hiking-boots"}])
    put(
        ctx.warehouse,
        USER_INTENT_TAGS,
        [
            tag("u1", 1, "hiking boots", V2),  # names the category "hiking-boots"
            tag("u1", 2, "Safety Nets", V2),
            tag("u2", 1, "hiking boot", V2),
            tag("u2", 2, "safety net", V2),
            tag("u3", 1, "hiking boots", V2),
            tag("u3", 1, "tent stakes", V1),  # another variant
        ],
    )
    figures = tag_figures(ctx, RunDate.parse(DT), ("v2", "hybrid"))
    assert figures == {
        "tagged_users": 3,
        "tags_per_user_median": 2,
        "tags_per_user_mean": 1.67,
        "distinct_tags": 2,
        "top_tag": "hiking boot",  # three users, in either spelling (the least one shown)
        "top_tag_user_share": 1.0,
        "top_noncategory_tag": "Safety Nets",
        "top_noncategory_tag_user_share": 0.667,
    }
