"""A sub-judge's verdict on one dimension, and the senior reviewer that grades the verdicts.

The reviewer works in two steps, as RecGPT-V2's review panel does: any failed dimension is a
defect and grades B; otherwise the share of *strongly* passed dimensions decides between S (at
least `excellence_share`) and A. A dimension the judge could not judge (its LLM call failed)
neither fails nor counts as strong: it can cost an S, never cause a B.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from recgpt.errors import ConfigError

TAG_DIMENSIONS: tuple[str, ...] = ("relevance", "consistency", "specificity", "validity")
EXPLANATION_DIMENSIONS: tuple[str, ...] = (
    "relevance",
    "factuality",
    "clarity",
    "safety",
    "timeliness",
    "informativeness",
    "attractiveness",
)
GRADES: tuple[str, ...] = ("S", "A", "B")
REASON_CHARS = 120


class JudgedBy(StrEnum):
    RULE = "rule"  # exact: the stage's own rules, or a fact comparison
    EMBEDDING = "embedding"  # a cosine similarity in the item embedding space
    LLM = "llm"  # P(yes) read from the judge model's token probabilities


@dataclass(frozen=True)
class Verdict:
    dimension: str
    passed: bool | None  # None: not judged (the LLM call failed)
    score: float | None  # in [0, 1] for rules and the LLM; a cosine for embeddings
    strong: bool
    reason: str
    judged_by: JudgedBy

    def row(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension,
            "passed": self.passed,
            "score": None if self.score is None else round(float(self.score), 4),
            "strong": self.strong,
            "reason": self.reason[:REASON_CHARS],
            "judged_by": str(self.judged_by),
        }


@dataclass(frozen=True)
class Threshold:
    """A score passes at `passes` and passes strongly at `strong` (>= passes)."""

    passes: float
    strong: float

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any]) -> Threshold:
        t = cls(float(cfg["pass"]), float(cfg["strong"]))
        if t.strong < t.passes:
            raise ConfigError(f"judge threshold {name}: strong ({t.strong}) is below pass ({t.passes})")
        return t

    def verdict(self, dimension: str, score: float, judged_by: JudgedBy, reason: str) -> Verdict:
        passed = score >= self.passes
        return Verdict(dimension, passed, score, passed and score >= self.strong, reason, judged_by)


def rule_verdict(dimension: str, problem: str | None, strong: bool = True, reason: str = "") -> Verdict:
    """A rule's verdict: failed with the problem as the reason, or passed (strongly unless the
    rule says the pass is only adequate)."""
    if problem:
        return Verdict(dimension, False, 0.0, False, problem, JudgedBy.RULE)
    return Verdict(dimension, True, 1.0 if strong else 0.5, strong, reason or "no rule broken", JudgedBy.RULE)


def unjudged(dimension: str, judged_by: JudgedBy, reason: str) -> Verdict:
    return Verdict(dimension, None, None, False, reason, judged_by)


def grade(verdicts: Sequence[Verdict], excellence_share: float) -> str:
    """The senior reviewer: B on any failed dimension (defect detection), else S when at least
    `excellence_share` of the dimensions passed strongly (excellence elevation), else A."""
    if any(v.passed is False for v in verdicts):
        return "B"
    if not verdicts:
        return "A"
    strong = sum(v.strong for v in verdicts) / len(verdicts)
    return "S" if strong >= excellence_share else "A"


def quality(verdicts: Sequence[Verdict]) -> bool:
    """The paper's "quality": every dimension passed."""
    return all(v.passed is True for v in verdicts)
