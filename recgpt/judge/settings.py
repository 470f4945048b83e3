"""The judge settings (`judge` in conf/), checked once on load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recgpt.errors import ConfigError
from recgpt.judge.verdicts import Threshold


@dataclass(frozen=True)
class JudgeSettings:
    prompt_version: str
    excellence_share: float  # share of strongly passed dimensions that makes an S
    logprobs: int  # alternatives read at the answer's position
    history_top: int  # a tag's relevance: mean of its best cosines with this many history items
    tag_relevance: Threshold
    tag_specificity: Threshold
    tag_consistency: Threshold
    title_copy_words: int  # a tag sharing this many words in order with a history title...
    title_copy_share: float  # ...that are at least this share of the title's words copies it
    explanation_relevance: Threshold
    explanation_attractiveness: Threshold
    min_digits: int  # personal data: digit runs this long (the agents' pii_min_digits)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> JudgeSettings:
        """Settings from the `judge` mapping."""
        try:
            tag, explanation = cfg["tag"], cfg["explanation"]
            settings = cls(
                prompt_version=str(cfg["prompt_version"]),
                excellence_share=float(cfg["excellence_share"]),
                logprobs=int(cfg["logprobs"]),
                history_top=int(tag["history_top"]),
                tag_relevance=Threshold.from_config("tag.relevance", tag["relevance"]),
                tag_specificity=Threshold.from_config("tag.specificity", tag["specificity"]),
                tag_consistency=Threshold.from_config("tag.consistency", tag["consistency"]),
                title_copy_words=int(tag["title_copy_words"]),
                title_copy_share=float(tag["title_copy_share"]),
                explanation_relevance=Threshold.from_config(
                    "explanation.relevance", explanation["relevance"]
                ),
                explanation_attractiveness=Threshold.from_config(
                    "explanation.attractiveness", explanation["attractiveness"]
                ),
                min_digits=int(cfg["pii_min_digits"]),
            )
        except KeyError as exc:
            raise ConfigError(f"judge: missing setting {exc}") from None
        if not 0 < settings.excellence_share <= 1:
            raise ConfigError("judge.excellence_share must be in (0, 1]")
        if settings.logprobs < 2 or settings.history_top < 1 or settings.title_copy_words < 2:
            raise ConfigError("judge.logprobs must be >= 2, tag.history_top >= 1, tag.title_copy_words >= 2")
        return settings
