"""The run-wide rule on generic tags: what counts as the same tag and as a catalog category, the
limit a run's size sets, and the rule over a run's tag and failure rows in Spark — generic tags
dropped for every user, the rest re-ranked, users left without a tag failed with their counts.
The stage applies it before writing (tests/test_mine_intents.py)."""

from __future__ import annotations

import json

from recgpt.agents.generic import GenericRule, category_words, names_category, tag_key
from recgpt.agents.settings import AgentSettings
from tests.test_agents import agents_config
from udfs.generic_tags import both_minings, drop_generic, with_counts

MINED = {"pipeline": "v2", "context_mode": "hybrid", "model": "m", "prompt_version": "v"}
TAGS = (
    "user_id string, rank int, tag string, persona string, score int, reason string, "
    "evidence_item_ids array<string>, pipeline string, context_mode string, model string, "
    "prompt_version string"
)
FAILURES = (
    "user_id string, step string, reason string, rejected string, failed_calls string, "
    "pipeline string, context_mode string, model string, prompt_version string"
)


def test_tags_count_by_their_folded_words():
    assert tag_key("Safety Nets") == tag_key("safety net") == "safety net"
    assert tag_key("sci-fi films") == "sci fi film"
    assert tag_key("glass") == "glass"  # "ss" is no plural


def test_a_category_tag_has_every_word_in_one_category_name_or_path():
    known = category_words(["Movies > Action | Sci-Fi", "Comedy", None, "Home > Kitchen > Cookware"])
    assert names_category("action movies", known)
    assert names_category("sci-fi action", known)
    assert names_category("comedies", known)  # "comedies" may be the plural of "comedy"
    assert names_category("kitchen cookware", known)
    assert not names_category("action cookware", known)  # words of two categories
    assert not names_category("fantasy ireland", known)
    assert not names_category("", known)


def test_the_limit_is_the_share_of_the_run_with_a_floor():
    rule = GenericRule(0.02, 2)
    assert rule.limit(64) == 2  # 1.28 users: the floor
    assert rule.limit(400) == 8
    assert rule.limit(1_000_000) == 20_000


def test_the_rule_is_the_validation_settings_and_off_when_its_share_is_null():
    cfg = agents_config()
    check = cfg["validation"]
    rule = GenericRule.of(AgentSettings.from_config(cfg))
    assert rule == GenericRule(float(check["generic_max_share"]), int(check["generic_min_users"]))
    off = {**cfg, "validation": {**check, "generic_max_share": None}}
    assert GenericRule.of(AgentSettings.from_config(off)) is None


def rows(spark, schema: str, data: list[dict]):
    return spark.createDataFrame([tuple(r[c.split()[0]] for c in schema.split(", ")) for r in data], schema)


def tag(user: str, rank: int, text: str) -> dict:
    return {"user_id": user, "rank": rank, "tag": text, "persona": "p", "score": None, "reason": "r"} | {
        "evidence_item_ids": ["i"],
        **MINED,
    }


def test_generic_tags_are_dropped_for_every_user_and_users_left_without_fail(spark):
    data = [
        tag("u1", 1, "safety net"),
        tag("u1", 2, "trail shoes"),
        tag("u1", 3, "action movies"),
        tag("u2", 1, "Safety Nets"),  # the same tag, folded
        tag("u2", 2, "action movies"),
        tag("u3", 1, "safety net"),
        tag("u3", 2, "fantasy ireland"),
        tag("u4", 1, "fantasy ireland"),
        tag("u4", 2, "action movies"),
        tag("u5", 1, "fantasy ireland"),
        tag("u5", 2, "safety net"),
    ]
    failed = [
        {"user_id": "u6", "step": "expert", "reason": "no_valid_tag", "rejected": None}
        | {
            "failed_calls": None,
            **MINED,
        }
    ]
    calls = spark.createDataFrame(
        [("u5", json.dumps({"unknown_word": 2}), json.dumps({"arbiter: invalid_output": 1}))],
        "user_id string, rejected string, failed_calls string",
    )
    known = category_words(["Movies > Action | Sci-Fi"])
    # Six users, limit max(0.02 x 6, 2) = 2: three users got each of the three shared tags.
    result = drop_generic(
        spark,
        rows(spark, TAGS, data),
        rows(spark, FAILURES, failed),
        GenericRule(0.02, 2),
        lambda: known,
        calls,
    )
    assert (result.users, result.limit) == (6, 2)
    # "action movies" names a category: kept. The two others are gone for everyone.
    # (named by the least of their spellings)
    assert result.dropped == {"Safety Nets": 4, "fantasy ireland": 3}
    assert result.rows_dropped == 7 and result.users_failed == 2
    kept = sorted((r.user_id, r.rank, r.tag) for r in result.tags.collect())
    assert kept == [
        ("u1", 1, "trail shoes"),
        ("u1", 2, "action movies"),
        ("u2", 1, "action movies"),
        ("u4", 1, "action movies"),
    ]
    assert result.tags.columns == TAGS_COLUMNS
    failures = {r.user_id: r for r in result.failures.collect()}
    assert set(failures) == {"u3", "u5", "u6"}
    assert (failures["u3"].step, failures["u3"].reason) == ("generic", "only_generic_tags")
    assert json.loads(failures["u3"].rejected) == {"generic_tag": 2}
    assert failures["u3"].failed_calls is None and failures["u3"].model == "m"
    # What the user's mining rejected and the calls that failed stay beside the generic count.
    assert json.loads(failures["u5"].rejected) == {"unknown_word": 2, "generic_tag": 2}
    assert json.loads(failures["u5"].failed_calls) == {"arbiter: invalid_output": 1}
    assert failures["u6"].reason == "no_valid_tag"
    line = result.figures()["generic_tags"]
    assert line.startswith("2 tag(s) given to more than 2 of 6 users dropped or cut to the category")
    assert line.endswith("7 tag rows dropped, 0 cut, 2 users left without a tag (only_generic_tags)")
    assert result.figures()["generic_tag"] == 7


def test_a_generic_tag_opening_with_a_category_is_cut_to_it(spark):
    """The model pads the category it named with a word it gives many users ("running shoes
    ireland"): the category stays, once per user (a cut repeating the user's own tag goes)."""
    data = [
        tag("u1", 1, "running shoes ireland"),
        tag("u1", 2, "running shoes"),
        tag("u2", 1, "yoga mat"),
        tag("u2", 2, "Running Shoes Ireland"),
        tag("u3", 1, "running shoes ireland"),
        tag("u3", 2, "dark irelandish"),
        tag("u4", 1, "dark irelandish"),
        tag("u5", 1, "dark irelandish"),
    ]
    known = category_words(["Sports > Running Shoes", "Yoga Mats"])
    result = drop_generic(
        spark, rows(spark, TAGS, data), rows(spark, FAILURES, []), GenericRule(0.02, 2), lambda: known
    )
    assert sorted((r.user_id, r.rank, r.tag) for r in result.tags.collect()) == [
        ("u1", 1, "running shoes"),
        ("u2", 1, "yoga mat"),
        ("u2", 2, "running shoes"),
        ("u3", 1, "running shoes"),
    ]
    assert result.dropped == {"Running Shoes Ireland": 3, "dark irelandish": 3}
    assert result.cut == {"Running Shoes Ireland": "running shoes"}
    assert (result.rows_cut, result.rows_dropped, result.users_failed) == (3, 4, 2)
    assert result.figures()["generic_tag_cut"] == 3
    assert "Running Shoes Ireland 3 -> running shoes" in result.figures()["generic_tags"]


def test_without_generic_tags_nothing_changes_and_categories_are_not_read(spark):
    data = [tag("u1", 1, "trail shoes"), tag("u2", 1, "trail shoes"), tag("u3", 1, "yoga mat")]
    tags, failures = rows(spark, TAGS, data), rows(spark, FAILURES, [])

    def unread() -> list:
        raise AssertionError("no tag is above the limit: the categories need not be read")

    result = drop_generic(spark, tags, failures, GenericRule(0.02, 2), unread)
    assert result.tags is tags and result.failures is failures and not result.dropped
    assert result.figures()["generic_tags"] == "0 tag(s) given to more than 2 of 3 users"


TAGS_COLUMNS = [c.split()[0] for c in TAGS.split(", ")]


def test_a_user_mined_twice_keeps_the_counts_of_both_minings(spark):
    """The rescue's users: the rule's failure row from the first mining and the second mining's
    own counts are added key by key, and a second generic count adds to the first."""
    first = rows(
        spark,
        FAILURES,
        [
            failure(
                "u1", "generic", "only_generic_tags", {"generic_tag": 3, "repeat": 1}, {"expert: timeout": 1}
            ),
            failure("u2", "generic", "only_generic_tags", {"generic_tag": 2}, None),
            failure("u9", "expert", "no_valid_tag", {"repeat": 5}, None),  # not mined again
        ],
    )
    again = spark.createDataFrame(
        [
            ("u1", json.dumps({"repeat": 2, "unknown_word": 1}), None),
            ("u2", None, json.dumps({"expert: invalid_output": 2})),
            ("u3", json.dumps({"repeat": 1}), None),  # no failure row before: its own counts
        ],
        "user_id string, rejected string, failed_calls string",
    )
    counts = {r.user_id: r for r in both_minings(first, again).collect()}
    assert set(counts) == {"u1", "u2", "u3"}
    assert json.loads(counts["u1"].rejected) == {"generic_tag": 3, "repeat": 3, "unknown_word": 1}
    assert json.loads(counts["u1"].failed_calls) == {"expert: timeout": 1}
    assert json.loads(counts["u2"].rejected) == {"generic_tag": 2}
    assert json.loads(counts["u2"].failed_calls) == {"expert: invalid_output": 2}
    assert json.loads(counts["u3"].rejected) == {"repeat": 1} and counts["u3"].failed_calls is None

    # The second mining's failure rows take the summed counts.
    second = rows(spark, FAILURES, [failure("u3", "expert", "no_valid_tag", {"repeat": 1}, None)])
    (row,) = with_counts(second, both_minings(first, again)).collect()
    assert (row.user_id, row.step, row.reason, row.model) == ("u3", "expert", "no_valid_tag", "m")
    assert with_counts(second, both_minings(first, again)).columns == second.columns

    # The rule failing u1 again: its generic count is added to the first mining's, not repeated.
    tags = rows(
        spark, TAGS, [tag("u1", 1, "safety net"), tag("u4", 1, "safety net"), tag("u5", 1, "safety net")]
    )
    ruled = drop_generic(
        spark, tags, rows(spark, FAILURES, []), GenericRule(0.02, 2), lambda: [], counts_frame(spark, counts)
    )
    failures = {r.user_id: r for r in ruled.failures.collect()}
    assert json.loads(failures["u1"].rejected) == {"generic_tag": 4, "repeat": 3, "unknown_word": 1}
    assert json.loads(failures["u4"].rejected) == {"generic_tag": 1}


def failure(user: str, step: str, reason: str, rejected: dict | None, failed_calls: dict | None) -> dict:
    dumped = [json.dumps(c) if c else None for c in (rejected, failed_calls)]
    return {
        "user_id": user,
        "step": step,
        "reason": reason,
        "rejected": dumped[0],
        "failed_calls": dumped[1],
        **MINED,
    }


def counts_frame(spark, counts: dict) -> object:
    return spark.createDataFrame(
        [(u, r.rejected, r.failed_calls) for u, r in counts.items()],
        "user_id string, rejected string, failed_calls string",
    )
