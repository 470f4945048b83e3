"""A tag set's rewards against a hand-made catalog: each tag recalls its nearest items (the user's
recent purchases skipped) and takes their majority category, which meets the reward window's
categories; the reward model's gate gives the alignment; duplicates and blanks count once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recgpt.judge import reward as R
from recgpt.policy.rewards import Shaping
from recgpt.policy.scorer import TagRewarder, UserTruth
from tests.test_reward import words

SHAPING = Shaping(
    mode="crs",
    tau_align=0.5,
    tau_div=0.3,
    tau_len=0.9,
    weights={"acc": 1.0, "align": 0.3, "div": 0.3, "len": 0.2},
    min_words=2,
    max_words=4,
    length_slack_words=1,
)
CATALOG = {
    "h1": ("trail boots", "hiking"),
    "h2": ("trail tent", "hiking"),
    "h3": ("trail backpack", "hiking"),
    "k1": ("kitchen kettle", "kitchen"),
    "k2": ("kitchen skillet", "kitchen"),
    "k3": ("kitchen knife", "kitchen"),
    "b1": ("baby stroller", "baby"),
}


def gated(level: float) -> R.RewardModel:
    """A reward model whose gate scores every candidate `level`: its probability is σ(level)."""
    dimension = 64
    gate = R.build_head(R.feature_width(dimension), 4)
    with torch.no_grad():
        for p in gate.parameters():
            p.zero_()
        gate[2].bias.fill_(level)
    meta = {"version": "t", "calibration": {"all": [1.0, 0.0]}}
    return R.RewardModel(gate, words, meta, gate)


def rewarder(level: float = 2.0, category_items: int = 3) -> TagRewarder:
    ids = list(CATALOG)
    vectors = words([CATALOG[i][0] for i in ids])
    categories = [CATALOG[i][1] for i in ids]
    return TagRewarder(ids, vectors, categories, words, gated(level), SHAPING, category_items)


TRUTH = UserTruth("u1", frozenset({"hiking", "kitchen"}), "outdoor cook", ("trail boots",))


def test_each_tag_recalls_its_nearest_items_and_their_majority_category():
    r = rewarder()
    cats = r.recalled_categories(r._unit(["trail gear", "kitchen kettle"]), excluded=set())
    assert [c[0] for c in cats] == ["hiking", "kitchen"] and all(len(c) == 3 for c in cats)
    # The user's recent purchases are never recalled: the next nearest take their place.
    cats = r.recalled_categories(r._unit(["kitchen kettle"]), excluded={"k1", "k2", "k3"})
    assert "kitchen" not in cats[0]


def test_accurate_diverse_short_aligned_tags_earn_their_accuracy():
    r = rewarder()
    got = r.rewards(TRUTH, ["trail gear", "kitchen set"])
    assert got.acc == 1.0 and got.len == 1.0
    assert got.align == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert got.div > 0.9
    assert r.reward(TRUTH, ["trail gear", "kitchen set"]) == 1.0
    # Half the window's categories: half the reward.
    assert r.reward(TRUTH, ["trail gear", "trail shoes"]) == 0.5


def test_a_failed_constraint_zeroes_an_accurate_set():
    # The judge would not like them (σ(-2) < τ_align): nothing, however accurate.
    assert rewarder(level=-2.0).reward(TRUTH, ["trail gear", "kitchen set"]) == 0.0
    # Too long: the length constraint fails.
    long_tags = ["trail gear for long weekend walks", "kitchen set for every cook"]
    assert rewarder().reward(TRUTH, long_tags) == 0.0


def test_duplicates_and_blanks_count_once_and_no_tags_earn_nothing():
    r = rewarder()
    assert r.rewards(TRUTH, ["trail gear", "trail gear", " "]) == r.rewards(TRUTH, ["trail gear"])
    assert r.reward(TRUTH, []) == 0.0 and r.reward(TRUTH, [""]) == 0.0
