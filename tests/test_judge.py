"""The judge's parts on hand-made cases: the senior reviewer's grades, the probability reader,
each deterministic sub-judge passing and failing, the embedding sub-judges on hand-made
vectors, and an LLM dimension through the engine (a scripted backend answering with token
probabilities)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from recgpt.agents.settings import AgentSettings
from recgpt.agents.validate import ValidationContext
from recgpt.config import load_config
from recgpt.errors import ConfigError
from recgpt.explain.prompts import ItemFacts
from recgpt.explain.rules import ExplanationRules
from recgpt.explain.settings import ExplainSettings
from recgpt.judge.explanations import ExplanationCase, ExplanationJudge
from recgpt.judge.scoring import yes_probability
from recgpt.judge.settings import JudgeSettings
from recgpt.judge.tags import TagCase, TagJudge
from recgpt.judge.verdicts import (
    EXPLANATION_DIMENSIONS,
    TAG_DIMENSIONS,
    JudgedBy,
    Threshold,
    Verdict,
    grade,
    quality,
    rule_verdict,
    unjudged,
)
from recgpt.llm.engine import Call, Completion, Engine
from recgpt.llm.render import PromptRenderer

BRANDS = ["Northpeak", "Luma", "Orchard&Co"]
ITEM = ItemFacts(
    "i1",
    "Northpeak waterproof insulated hiking boots, black",
    "hiking-boots",
    "Sports & Outdoors > Footwear > Hiking Boots",
    "Northpeak",
    129.0,
)
AUTUMN = {"season": "autumn", "festivals": ["halloween"], "weather": "rainy", "trends": []}


def plain(node: Any) -> dict[str, Any]:
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


@pytest.fixture(scope="module")
def cfg():
    return load_config(["run.stage=test"])


@pytest.fixture(scope="module")
def settings(cfg) -> JudgeSettings:
    return JudgeSettings.from_config(plain(cfg.judge))


# -- a tiny embedding space: each word is an axis, a text the unit mean of its words ---------


class WordSpace:
    def __init__(self) -> None:
        self.axes: dict[str, int] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            v = np.zeros(64)
            for w in text.lower().replace(",", " ").replace(".", " ").split():
                v[self.axes.setdefault(w, len(self.axes) % 64)] += 1
            rows.append(v / (np.linalg.norm(v) or 1.0))
        return np.array(rows)


@pytest.fixture()
def space() -> WordSpace:
    return WordSpace()


def v(dimension: str, passed: bool | None, strong: bool = False) -> Verdict:
    return Verdict(dimension, passed, None if passed is None else float(passed), strong, "", JudgedBy.RULE)


# -- the senior reviewer ------------------------------------------------------------------------


def test_any_failed_dimension_grades_b_whatever_the_others():
    assert grade([v("a", True, True), v("b", True, True), v("c", False)], 0.5) == "B"


def test_strongly_passed_share_separates_s_from_a():
    four_strong = [v(d, True, True) for d in "abcd"]
    three_strong = [*four_strong[:3], v("d", True)]
    assert grade(four_strong, 0.75) == "S"
    assert grade(three_strong, 0.75) == "S"  # 3/4 = the share
    assert grade(three_strong, 0.8) == "A"
    assert grade([v(d, True) for d in "abcd"], 0.75) == "A"


def test_an_unjudged_dimension_costs_the_s_but_never_makes_a_b():
    verdicts = [v("a", True, True), v("b", True, True), unjudged("c", JudgedBy.LLM, "engine down")]
    assert grade(verdicts, 0.6) == "S"  # 2/3 strong
    assert grade(verdicts, 0.7) == "A"
    assert not quality(verdicts) and quality(verdicts[:2])


def test_threshold_refuses_a_strong_bar_below_the_pass_bar():
    with pytest.raises(ConfigError, match="strong"):
        Threshold.from_config("x", {"pass": 0.6, "strong": 0.5})
    t = Threshold(0.5, 0.8)
    assert [t.verdict("d", s, JudgedBy.LLM, "").passed for s in (0.49, 0.5, 0.9)] == [False, True, True]
    assert [t.verdict("d", s, JudgedBy.LLM, "").strong for s in (0.5, 0.79, 0.8)] == [False, False, True]


def test_rule_verdicts_say_why():
    assert rule_verdict("validity", "brand").reason == "brand"
    assert rule_verdict("validity", None).strong and not rule_verdict("x", None, strong=False).strong


# -- reading P(yes) from token probabilities ----------------------------------------------------


def test_yes_probability_pools_the_spellings_of_each_answer():
    tops = [{"Yes": math.log(0.3), " yes": math.log(0.1), "No": math.log(0.2), "The": math.log(0.4)}]
    assert yes_probability(tops) == pytest.approx(0.4 / 0.6)
    assert yes_probability([{"Maybe": -0.1, "The": -2.0}]) is None
    assert yes_probability(None) is None and yes_probability([]) is None


class ProbabilityBackend:
    """Answers every scoring call with the given P(yes), P(no) at the first position; fails the
    calls whose index is in `error_at`."""

    model = "probabilities"

    def __init__(self, p_yes: Sequence[float], error_at: Sequence[int] = ()) -> None:
        self.p_yes, self.error_at, self.calls = list(p_yes), set(error_at), []

    def complete(self, calls: Sequence[Call]) -> list[Completion]:
        out = []
        for call in calls:
            i = len(self.calls)
            self.calls.append(call)
            if i in self.error_at:
                out.append(Completion("", 0, None, 0, None, 1.0, error="connection reset"))
                continue
            p = self.p_yes[i]
            tops = {"Yes": math.log(p), "No": math.log(1 - p)}
            out.append(Completion("Yes" if p >= 0.5 else "No", 10, 0, 1, "length", 1.0, top_logprobs=[tops]))
        return out

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def renderer(cfg) -> PromptRenderer:
    return PromptRenderer(str(cfg.llm.model_path), int(cfg.llm.max_model_len))


# -- tags -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tag_rules(cfg) -> ValidationContext:
    return ValidationContext.for_run(AgentSettings.from_config(plain(cfg.pipeline.agents)), BRANDS)


def tag_case(tag: str, **kw: Any) -> TagCase:
    base = dict(
        key="k",
        user_id="u1",
        tag=tag,
        persona="outdoor-enthusiast: hikes and camps most weekends",
        profile="age 30, region north-cn",
        history=(
            "Luma lightweight camping tent, green",
            "Northpeak insulated hiking boots, black",
            "Marlowe loose-leaf jasmine green tea leaves, forest green",
        ),
    )
    return TagCase(**{**base, **kw})


@pytest.mark.parametrize(
    "tag, reason",
    [
        ("insulated hiking boots", None),
        ("Northpeak hiking boots", "brand"),
        ("hiking boots x200", "model number: x200"),
        ("hiking boots boots", "repeated_word"),
        ("boots", None),  # a one-word tag is a form the rules admit (tag.min_words 1)
        ("luma lightweight camping tent", "brand"),
        ("lightweight camping tent green", "copies a title"),
        ("insulated hiking boots black", "copies a title"),
        ("loose leaf green tea", None),  # 4 of a long title's 9 words: what it sells, not a copy
        ("20kg dumbbell set", None),  # a size is a modifier, not a model number
        ("4-season camping tent", None),
    ],
)
def test_tag_validity_rules(settings, tag_rules, space, tag, reason):
    judge = TagJudge(settings, tag_rules, space, np.eye(64)[:4], None)
    verdict = judge.validity(tag_case(tag))
    assert verdict.judged_by == JudgedBy.RULE
    if reason is None:
        assert verdict.passed is True, verdict.reason
    else:
        assert verdict.passed is False and verdict.reason.startswith(reason)


def test_tag_relevance_and_specificity_by_embedding(settings, tag_rules, space):
    # Two "categories": hiking and kitchen; a generic tag sits between them.
    centroids = space(["hiking boots tent", "frying pan kettle"])
    judge = TagJudge(settings, tag_rules, space, centroids, None)
    hiking = ("hiking boots black", "waterproof hiking boots", "hiking boots", "camping tent")
    on, off, generic = judge.judge(
        [
            tag_case("hiking boots", key="a", history=hiking),
            tag_case("frying pan", key="b", history=hiking),
            tag_case("essentials", key="c", history=()),
        ]
    )
    relevance, consistency, specificity, _ = range(4)
    assert on[relevance].passed is True and off[relevance].passed is False
    assert on[relevance].judged_by == JudgedBy.EMBEDDING
    assert generic[relevance].passed is None  # no history: not judged, never a defect
    assert on[specificity].score > generic[specificity].score
    assert generic[specificity].passed is False
    assert on[consistency].passed is None and on[consistency].reason == "no judge model"
    assert [x.dimension for x in on] == list(TAG_DIMENSIONS)


def test_tag_consistency_reads_p_yes_from_the_judge_model(settings, tag_rules, space, renderer):
    backend = ProbabilityBackend([0.9, 0.2, 0.6], error_at=[2])
    judge = TagJudge(settings, tag_rules, space, np.eye(64)[:2], Engine(backend, renderer))
    cases = [tag_case(t, key=t) for t in ("hiking boots", "baby diapers", "tent")]
    verdicts = judge.consistency(cases)
    assert [x.passed for x in verdicts] == [True, False, None]
    assert verdicts[0].score == pytest.approx(0.9) and verdicts[0].strong
    assert "connection reset" in verdicts[2].reason
    # One scoring token with alternatives per call; the data sit in their blocks.
    call = backend.calls[1]
    assert call.sampling.max_tokens == 1 and call.sampling.logprobs == settings.logprobs
    prompt = renderer.tokenizer.decode(call.rendered.token_ids)
    assert "<interest_tag>baby diapers</interest_tag>" in prompt


# -- explanations -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explanation_judge(cfg, settings) -> ExplanationJudge:
    rules = ExplanationRules.for_run(ExplainSettings.from_config(plain(cfg.explain), "meta"), BRANDS)
    festivals = [str(f["name"]) for f in cfg.calendar.festivals]
    return ExplanationJudge(settings, rules, WordSpace(), festivals, None)


def judged(judge: ExplanationJudge, text: str, situation: dict[str, Any] = AUTUMN) -> dict[str, Verdict]:
    case = ExplanationCase("k", "u1", "insulated hiking boots", ITEM, text, situation)
    [verdicts] = judge.judge([case])
    assert [x.dimension for x in verdicts] == list(EXPLANATION_DIMENSIONS)
    return {x.dimension: x for x in verdicts}


GOOD = (
    "These waterproof Northpeak hiking boots at 129.00 suit your insulated hiking boots interest this autumn."
)


def test_a_good_line_passes_every_rule_dimension(explanation_judge):
    verdicts = judged(explanation_judge, GOOD)
    for dimension in ("factuality", "clarity", "safety", "timeliness", "informativeness"):
        assert verdicts[dimension].passed is True, (dimension, verdicts[dimension].reason)
    assert verdicts["timeliness"].strong  # names the situation's own season
    assert verdicts["informativeness"].strong  # brand, waterproof, price
    assert verdicts["attractiveness"].passed is None


@pytest.mark.parametrize(
    "text, dimension, reason",
    [
        (GOOD.replace("129.00", "99.00"), "factuality", "unsupported_number"),
        (GOOD.replace("waterproof", "leather"), "factuality", "unsupported_attribute"),
        (GOOD.replace("Northpeak", "Luma"), "factuality", "foreign_brand"),
        (GOOD.replace("suit", "are the best for"), "safety", "absolute_claim"),
        (GOOD.rstrip(".") + ", call 555 013 2447.", "safety", "pii"),
        ("Hiking boots for you.", "clarity", "too_short"),
        (GOOD.rstrip("."), "clarity", "unfinished"),
        (GOOD.replace("autumn", "summer"), "timeliness", "names summer"),
        (GOOD.replace("this autumn", "for christmas"), "timeliness", "names christmas"),
        (
            "We think this pick suits your interest in insulated hiking boots very well.",
            "informativeness",
            "says nothing",
        ),
        ("A cosy blanket and a mug of cocoa make a fine evening at home.", "relevance", "off_topic"),
    ],
)
def test_each_rule_dimension_fails_its_defect(explanation_judge, text, dimension, reason):
    verdict = judged(explanation_judge, text)[dimension]
    assert verdict.passed is False and verdict.reason.startswith(reason), verdict.reason


def test_timeliness_reads_festivals_as_phrases_and_the_items_words_as_facts(explanation_judge):
    black = "These black Northpeak hiking boots fit your insulated hiking boots interest nicely."
    assert judged(explanation_judge, black)["timeliness"].passed is True  # a colour, not black friday
    neutral = judged(explanation_judge, black)["timeliness"]
    assert not neutral.strong and neutral.reason == "names no season or festival"
    spring = {**AUTUMN, "season": "winter", "festivals": ["spring-festival"]}
    line = "Ahead of the spring festival, these Northpeak hiking boots suit your hiking boots interest."
    assert judged(explanation_judge, line, spring)["timeliness"].passed is True


def test_relevance_is_the_cosine_with_interest_and_item(explanation_judge):
    near = judged(explanation_judge, GOOD)["relevance"]
    assert near.judged_by == JudgedBy.EMBEDDING and near.score is not None
    shuffled = "This Luma frying pan heats evenly for your weekend cooking and hiking plans."
    far = judged(explanation_judge, shuffled)["relevance"]
    assert far.score is not None and far.score < near.score


# -- evaluate's figures of the judgments ------------------------------------------------------


def judgment(user: str, rank: int, grade_: str, **extra: Any) -> dict[str, Any]:
    verdict = {"dimension": "relevance", "verdict": "pass", "score": 0.5, "strong": True, "reason": "r"}
    return {
        "user_id": user,
        "tag_rank": rank,
        "tag": f"tag {rank}",
        "persona": "p",
        "grade": grade_,
        "quality": grade_ != "B",
        "failed": [] if grade_ != "B" else ["relevance"],
        "verdicts": [{**verdict, "judged_by": "embedding"}],
        "pipeline": "v2",
        "context_mode": "hybrid",
        "judge_model": "judge-m",
        "prompt_version": "j1.0",
        **extra,
    }


def test_judge_metrics_give_grade_shares_and_a_row_for_every_attempted_mode(warehouse):
    """The rows do not depend on what the model wrote: a mode whose every line failed the rules
    still has its rows (null values), so reruns on another model write the same rows."""
    from recgpt.tables import EXPLANATION_FAILURES, EXPLANATION_JUDGMENTS, ITEM_EXPLANATIONS, TAG_JUDGMENTS
    from tests.handmade import DT, put
    from udfs.judge import judge_metrics

    put(warehouse, TAG_JUDGMENTS, [judgment("u1", 1, "S"), judgment("u1", 2, "B"), judgment("u2", 1, "A")])
    line = {"item_id": "i1", "explanation_mode": "meta", "explanation": "A fine line."}
    put(warehouse, EXPLANATION_JUDGMENTS, [judgment("u1", 1, "B", **line)])
    variant = {"pipeline": "v2", "context_mode": "hybrid", "model": "m", "prompt_version": "e1.0"}
    written = {"user_id": "u1", "tag_rank": 1, "tag": "t", "item_id": "i1", "words": 3, **variant}
    put(
        warehouse, ITEM_EXPLANATIONS, [{**written, "explanation_mode": "meta", "explanation": "A fine line."}]
    )
    failed = {"step": "single", "reason": "too_long", **written}
    put(warehouse, EXPLANATION_FAILURES, [{**failed, "explanation_mode": "single"}])
    rows = judge_metrics(warehouse, DT).set_index("metric")
    assert rows.loc["judge_tags_S"].value == pytest.approx(1 / 3) and rows.loc["judge_tags_B"].users == 3
    assert rows.loc["judge_tags_quality"].value == pytest.approx(2 / 3)
    assert rows.loc["judge_meta_B"].value == 1.0 and rows.loc["judge_meta_B"].users == 1
    assert pd.isna(rows.loc["judge_single_S"].value) and rows.loc["judge_single_S"].users == 0
    assert set(rows.model) == {"judge-m"} and len(rows) == 12
