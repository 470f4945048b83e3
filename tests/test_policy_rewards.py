"""The rewards a tag set earns (accuracy, alignment, diversity, length), the constrained shaping
that zeroes a set breaking any constraint, the summed ablation, and the guard that refuses
training windows reaching into an evaluation window: hand-made cases, no model."""

from __future__ import annotations

import numpy as np
import pytest

from recgpt.config import load_config, plain
from recgpt.errors import ConfigError, RecGPTError
from recgpt.policy import rewards as P

SHAPING = P.Shaping(
    mode="crs",
    tau_align=0.5,
    tau_div=0.3,
    tau_len=0.9,
    weights={"acc": 1.0, "align": 0.3, "div": 0.3, "len": 0.2},
    min_words=2,
    max_words=4,
    length_slack_words=1,
)
EYE = np.eye(3)


def test_accuracy_is_the_share_of_window_categories_the_tags_recall():
    assert P.accuracy(["shoes", "tents", None], {"shoes", "kettles"}) == 0.5
    assert P.accuracy(["shoes", "shoes"], {"shoes"}) == 1.0
    assert P.accuracy(["tents"], {"shoes", "kettles"}) == 0.0
    assert P.accuracy(["shoes"], set()) == 0.0  # nothing in the window: no signal


def test_a_tags_category_is_decided_as_evaluate_decides_it():
    # The most common category among its recalled items; a tie goes to the one met first.
    assert P.tag_categories([["a", "b", "b"], ["c", "a"], [None, None], []]) == ["b", "c", None, None]


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("wool socks", 1.0),
        ("merino wool hiking socks", 1.0),
        ("socks", 0.5),  # one word short: half
        ("merino wool hiking socks sale", 0.5),  # one word long: half
        ("the best merino wool hiking socks", 0.0),  # two words long: nothing
        ("", 0.0),
        ("Gore-Tex boots", 1.0),  # words as the validator counts them: gore, tex, boots
    ],
)
def test_length_is_one_inside_the_range_partial_just_outside_zero_beyond(tag, expected):
    assert P.length(tag, 2, 4, slack=1) == expected


def test_length_without_slack_is_all_or_nothing():
    assert P.length("socks", 2, 4, slack=0) == 0.0 and P.length("wool socks", 2, 4, slack=0) == 1.0


def test_diversity_is_the_mean_pairwise_cosine_distance():
    assert P.diversity(EYE) == pytest.approx(1.0)
    assert P.diversity(np.array([[1.0, 0.0], [2.0, 0.0]])) == pytest.approx(0.0)
    assert P.diversity(np.array([[1.0, 0.0], [1.0, 1.0]])) == pytest.approx(1 - 2**-0.5)
    assert P.diversity(EYE[:1]) == 0.0  # one tag: no diversity


def test_tag_set_rewards_of_one_user():
    r = P.tag_set_rewards(
        ["wool socks", "camping tent", "socks"],
        [["socks", "socks"], ["tents"], ["socks"]],
        {"socks", "kettles"},
        [0.9, 0.7, 0.2],
        EYE,
        SHAPING,
    )
    assert r.acc == 0.5
    assert r.align == pytest.approx(0.6)
    assert r.div == pytest.approx(1.0)
    assert r.len == pytest.approx(2.5 / 3)
    assert P.tag_set_rewards([], [], {"socks"}, [], np.zeros((0, 3)), SHAPING) == P.TagSetRewards(0, 0, 0, 0)
    with pytest.raises(ValueError, match="per tag"):
        P.tag_set_rewards(["a b"], [["x"]], {"x"}, [0.5, 0.5], EYE[:1], SHAPING)


GOOD = P.TagSetRewards(acc=0.6, align=0.7, div=0.5, len=1.0)


@pytest.mark.parametrize(
    ("broken", "value"),
    [("align", 0.49), ("div", 0.29), ("len", 0.89)],
)
def test_crs_one_failed_constraint_zeroes_the_reward(broken, value):
    assert GOOD.crs(SHAPING) == 0.6 and GOOD.total(SHAPING) == 0.6
    bad = P.TagSetRewards(**{**GOOD.as_dict(), broken: value})
    assert bad.gates(SHAPING) == {k: k != broken for k in ("align", "div", "len")}
    assert bad.crs(SHAPING) == 0.0
    # The summed ablation only loses the broken term's weighted drop: it can be traded away.
    summed = P.Shaping(**{**SHAPING.as_dict(), "mode": "sum"})
    drop = SHAPING.weights[broken] * (getattr(GOOD, broken) - value)
    assert bad.total(summed) == pytest.approx(GOOD.total(summed) - drop) and bad.total(summed) > 0.6


def test_crs_never_pays_for_constraints_and_sum_does():
    inaccurate = P.TagSetRewards(acc=0.0, align=1.0, div=1.0, len=1.0)
    assert inaccurate.crs(SHAPING) == 0.0
    assert inaccurate.summed(SHAPING) == pytest.approx(0.8)


def test_shaping_is_read_from_the_project_config_and_checked():
    cfg = plain(load_config([]).policy.reward)
    shaping = P.Shaping.from_config(cfg)
    assert shaping.mode == "crs"
    # The length range is the agents' own tag bounds.
    tag = load_config([]).pipeline.agents.tag
    assert (shaping.min_words, shaping.max_words) == (tag.min_words, tag.max_words)
    with pytest.raises(ConfigError, match="mode"):
        P.Shaping.from_config({**cfg, "mode": "max"})
    with pytest.raises(ConfigError, match="weights"):
        P.Shaping.from_config({**cfg, "weights": {"acc": 1.0}})
    with pytest.raises(ConfigError, match="min_words"):
        P.Shaping.from_config({**cfg, "min_words": 5, "max_words": 4})


def test_a_reward_window_reaching_into_the_evaluation_window_is_refused():
    evaluation = P.Window(P.reward_window("2025-10-28", 7).start, 7)
    fine = [("u1", P.reward_window("2025-10-14", 7)), ("u2", P.reward_window("2025-10-21", 7))]
    P.check_no_leakage(fine, evaluation)  # the last one ends on 10-27, the day before
    touching = [*fine, ("u3", P.reward_window("2025-10-22", 7)), ("u4", P.reward_window("2025-11-10", 7))]
    said = r"2 training example.*'u3'.*2025-10-22\.\.2025-10-28.*by 2025-10-27"
    with pytest.raises(RecGPTError, match=said):
        P.check_no_leakage(touching, evaluation)
    with pytest.raises(ConfigError, match="one day"):
        P.reward_window("2025-10-28", 0)


def test_the_benchmarks_summary_of_a_half_evaluated_dataset_says_so():
    """bench-rl writes rl.json after every variant: the variants still to come are null, and no
    target is judged on part of the figures."""
    from bench.rl import POLICIES, VARIANTS, summary

    policy = {"reward_curve": [0.1, 0.2], "kl_curve": [0.0, 0.01]}
    trained = {"seconds": dict.fromkeys(POLICIES, 1.0), "policies": dict.fromkeys(POLICIES, policy)}
    figures = {"v1": {"hr30": 0.25, "hr30_ci95": [0.1, 0.4]}, "v2_base": {"hr30": 0.125}}
    half = summary(trained, {"dt": "1998-01-01", "users": 8, "figures": figures})
    assert half["complete"] is False
    assert half["hr30"]["v1"] == 0.25 and half["hr30"]["v2_grpo_crs"] is None
    assert half["hr30"]["ci95"]["v1"] == [0.1, 0.4]
    assert "targets" not in half

    every = {key: {"hr30": 0.25, "hr30_history": 0.125} for key in VARIANTS}
    whole = summary(trained, {"dt": "1998-01-01", "users": 8, "figures": every})
    assert whole["complete"] is True
    assert whole["targets"]["grpo_crs_at_least_v1"] is True


def test_evaluating_the_recorded_policies_again_refuses_before_any_work_when_one_is_gone(tmp_path):
    """`bench.rl --evaluate-only`: a dataset rl.json lacks, or a policy whose artifact is no longer
    on disk, stops the run at once, before the first dataset's hour of mining."""
    import argparse

    from bench.rl import evaluate_again

    there = tmp_path / "policy"
    (there / "a1").mkdir(parents=True)
    training = {"dt": "2025-10-14", "artifacts_dir": str(there), "policies": {"v2_rft": {"version": "a1"}}}
    args = argparse.Namespace(
        evaluate_only="x", data=["synthetic", "movielens"], overrides=[], seed=0, users=4
    )
    gone = {"dt": "1997-12-18", "artifacts_dir": str(there), "policies": {"v2_rft": {"version": "b2"}}}
    with pytest.raises(SystemExit, match=r"movielens policies \['v2_rft'\] are not in"):
        evaluate_again(args, {"synthetic": {"training": training}, "movielens": {"training": gone}}, tmp_path)
    with pytest.raises(SystemExit, match=r"rl\.json has no movielens policies"):
        evaluate_again(args, {"synthetic": {"training": training}}, tmp_path)
