"""The evaluation metrics on hand-made cases whose right values are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from recgpt import metrics as M


def test_round_robin_takes_each_tags_best_items_first_and_skips_repeats():
    lists = [["a1", "a2", "a3"], ["b1", "a1", "b3"], ["c1"]]
    assert M.round_robin(lists, 10) == ["a1", "b1", "c1", "a2", "a3", "b3"]
    assert M.round_robin(lists, 4) == ["a1", "b1", "c1", "a2"]
    assert M.round_robin([], 5) == []


def test_tag_category_is_the_majority_with_score_then_order_tie_breaks():
    assert M.tag_category(["boots", "tents", "boots"]) == "boots"
    # One each: the larger summed score wins.
    assert M.tag_category(["boots", "tents"], [0.2, 0.9]) == "tents"
    # Equal counts and scores: the category met first (the better-ranked item) wins.
    assert M.tag_category(["tents", "boots"], [0.5, 0.5]) == "tents"
    assert M.tag_category([None, "boots", None]) == "boots"
    assert M.tag_category([]) is None


def test_hit_at_k_looks_only_at_the_k_best_tags():
    cats = ["boots", "tents", "toys"]
    assert M.hit_at_k("tents", cats, k=30) == 1.0
    assert M.hit_at_k("toys", cats, k=2) == 0.0
    assert M.hit_at_k("socks", cats) == 0.0
    assert M.hit_at_k(None, cats) == 0.0


def test_recall_and_exclusive_recall():
    heldout = {"i1", "i2", "i3", "i4"}
    tags = ["i1", "x", "i2", "i3"]
    covisit = ["i2", "y", "i4"]
    assert M.recall_at_k(heldout, tags, k=3) == pytest.approx(2 / 4)  # i1, i2 (i3 is 4th)
    assert M.recall_at_k(heldout, covisit, k=3) == pytest.approx(2 / 4)  # i2, i4
    # Retrieved by the tags' top 3 and not by co-visitation's top 3: i1 only.
    assert M.exclusive_recall(heldout, tags, covisit, k=3) == pytest.approx(1 / 4)
    # With co-visitation cut to its best item, i1 still, and not i2 (co-visitation's first).
    assert M.exclusive_recall(heldout, tags, covisit, k=1) == pytest.approx(1 / 4)
    assert M.recall_at_k(set(), tags) is None
    assert M.exclusive_recall(set(), tags, covisit) is None


def test_diversity_is_mean_pairwise_cosine_distance():
    same = np.array([[1.0, 0.0], [2.0, 0.0]])
    assert M.diversity(same) == pytest.approx(0.0)
    orthogonal = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # pairs: (0,1) 1 - 0 = 1; (0,2) 1 - (-1) = 2; (1,2) 1 - 0 = 1 -> mean 4/3
    assert M.diversity(orthogonal) == pytest.approx(4 / 3)
    assert M.diversity(np.array([[1.0, 0.0]])) is None


def test_novelty_and_persona_recovery():
    assert M.novelty(["boots", "toys", "toys", None], {"boots"}) == pytest.approx(1 / 2)
    assert M.novelty([None], {"boots"}) is None
    planted = [{"boots", "tents"}, {"toys", "diapers"}, {"yoga"}]
    assert M.persona_recovery(planted, ["tents", "socks"]) == pytest.approx(1 / 3)
    assert M.persona_recovery(planted, ["tents", "diapers", "yoga"]) == pytest.approx(1.0)
    assert M.persona_recovery([], ["tents"]) is None


def test_user_metrics_combines_tags_recall_and_heldout():
    tags = [
        (["b1", "b2", "t1"], ["boots", "boots", "tents"], [0.9, 0.8, 0.7]),  # -> boots
        (["t2", "t3"], ["tents", "tents"], [0.6, 0.5]),  # -> tents
    ]
    m = M.user_metrics(
        tags,
        heldout={"t3", "z9"},
        next_category="tents",
        history_categories={"boots"},
        planted=[{"tents"}, {"yoga"}],
        covisit=["z9"],
        tag_vectors=np.array([[1.0, 0.0], [0.0, 1.0]]),
        k=30,
        category_items=5,
    )
    assert m["tag_categories"] == ["boots", "tents"]
    assert m["recalled"] == ["b1", "t2", "b2", "t3", "t1"]
    assert m["hr"] == 1.0
    assert m["recall_tags"] == pytest.approx(0.5)  # t3
    assert m["recall_covisit"] == pytest.approx(0.5)  # z9
    assert m["exclusive_recall"] == pytest.approx(0.5)  # t3 is not in co-visitation
    assert m["diversity"] == pytest.approx(1.0)
    assert m["novelty"] == pytest.approx(0.5)  # tents is new
    assert m["persona_recovery"] == pytest.approx(0.5)


def test_user_without_tags_is_a_miss_not_a_gap():
    m = M.user_metrics(
        [],
        heldout={"i1"},
        next_category="boots",
        history_categories={"boots"},
        planted=[{"boots"}],
        covisit=["i1"],
    )
    assert m["hr"] == 0.0
    assert m["recall_tags"] == 0.0
    assert m["exclusive_recall"] == 0.0
    assert m["persona_recovery"] == 0.0
    assert m["recall_covisit"] == 1.0
    assert m["diversity"] is None and m["novelty"] is None
    # Without any held-out interaction, HR and the recalls are undefined, not zero.
    quiet = M.user_metrics(
        [], heldout=set(), next_category=None, history_categories=set(), planted=[], covisit=[]
    )
    assert quiet["hr"] is None and quiet["recall_tags"] is None and quiet["persona_recovery"] is None


def test_a_variants_metrics_from_its_means_failures_tokens_and_coverage():
    means = {name: None for name, _ in M.mean_metrics(30)} | {f"{n}__n": 0 for n, _ in M.mean_metrics(30)}
    means |= {"hr30": 0.5, "hr30__n": 2, "recall_at_30_tags": 0.25, "recall_at_30_tags__n": 2}
    means |= {"users": 4, "tagged": 3}
    values = M.variant_metrics(means, 30, failed=1, tokens=360, tag_items=5, covisit_items=2, catalog_size=10)
    by_name = {name: (value, n) for name, value, n in values}
    assert by_name["hr30"] == (0.5, 2) and by_name["recall_at_30_tags"] == (0.25, 2)
    assert by_name["diversity"] == (None, 0)
    assert by_name["catalog_coverage_tags"] == (0.5, 4)  # 5 of 10 catalog items, over all 4 users
    assert by_name["catalog_coverage_covisit"] == (0.2, 4)
    # Mined users: 3 tagged + 1 failed.
    assert by_name["failure_rate"] == (0.25, 4)
    assert by_name["tokens_per_user"] == (90.0, 4)
    assert by_name["tagged_users"] == (3, 4)
    assert by_name["heldout_users"] == (2, 4)  # the users whose tag recall is defined
    # One row per documented metric, in the order of the definitions.
    # Every documented metric but the explanation figures (those come from udfs.explain).
    assert [name for name, _, _ in values] == [m for m in M.metric_docs(30) if not m.startswith("explain_")]


def test_a_variant_without_mined_users_or_ledger_has_no_rates():
    means = {name: None for name, _ in M.mean_metrics(5)} | {f"{n}__n": 0 for n, _ in M.mean_metrics(5)}
    means |= {"users": 2, "tagged": 0}
    by_name = {
        name: (value, n)
        for name, value, n in M.variant_metrics(
            means, 5, failed=0, tokens=None, tag_items=0, covisit_items=0, catalog_size=0
        )
    }
    assert by_name["failure_rate"] == (None, 0)
    assert by_name["tokens_per_user"] == (None, 0)
    assert by_name["catalog_coverage_tags"] == (0.0, 2)  # an empty catalog is not a division by zero
    # A ledger with zero tokens is a figure, not a gap.
    with_ledger = M.variant_metrics(
        means | {"tagged": 2}, 5, failed=0, tokens=0, tag_items=0, covisit_items=0, catalog_size=1
    )
    assert ("tokens_per_user", 0.0, 2) in with_ledger


def test_baselines_get_as_many_categories_as_the_variant_named():
    history = {"tents": 3, "boots": 3, "yoga": 1}
    popular = ["yoga", "tents", "boots"]
    # Ties in the history go alphabetically: boots, tents, yoga.
    assert M.top_categories(history, 2) == ["boots", "tents"]
    hits = M.baseline_hits("tents", history, popular, matched=1)
    assert hits == {
        "hr_history": 0.0,  # boots
        "hr_history_top1": 0.0,
        "hr_history_top3": 1.0,
        "hr_popular": 0.0,  # yoga
        "hr_popular_top1": 0.0,
        "hr_popular_top3": 1.0,
    }
    assert M.baseline_hits("tents", history, popular, matched=2)["hr_history"] == 1.0
    assert M.baseline_hits("tents", history, popular, matched=0)["hr_popular"] == 0.0  # a failed user
    assert set(M.baseline_hits(None, history, popular, 2).values()) == {None}


def test_bootstrap_intervals_hold_the_mean_and_pair_the_users():
    rng = np.random.default_rng(1)
    x = rng.binomial(1, 0.3, 400).astype(float)
    low, high = M.bootstrap_mean(x, 500, seed=0)
    assert low < x.mean() < high
    # About two standard errors each side.
    se = x.std() / np.sqrt(len(x))
    assert 3.0 * se < high - low < 5.0 * se
    assert M.bootstrap_mean(np.array([1.0, np.nan]), 100, 0) is None
    # Paired: b is a plus noise shared by the users, so the difference is tight.
    a = rng.normal(0.5, 0.2, 300)
    b = a - 0.02 + rng.normal(0, 0.005, 300)
    diff, dlow, dhigh, users = M.bootstrap_difference(a, b, 500, seed=0)
    assert users == 300 and dlow < diff < dhigh and 0.015 < dlow and dhigh < 0.025
    # Unpaired intervals of the two means would overlap widely.
    alow, ahigh = M.bootstrap_mean(a, 500, 0)
    blow, bhigh = M.bootstrap_mean(b, 500, 0)
    assert alow < bhigh and blow < ahigh
    # Users missing either value are left out.
    a[:100] = np.nan
    assert M.bootstrap_difference(a, b, 200, 0)[3] == 200
