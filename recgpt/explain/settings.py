"""The explanation settings (`explain` and `pipeline.explanation` in conf/), checked once on load
so a bad value fails the run at start with the key's name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from recgpt.errors import ConfigError
from recgpt.llm.request import Sampling

MODES: tuple[str, ...] = ("meta", "single", "template")
# The LLM steps of each mode, in the order they run for one item.
STEPS: dict[str, tuple[str, ...]] = {"meta": ("style", "meta"), "single": ("single",), "template": ()}


@dataclass(frozen=True)
class StyleLimits:
    tone_max_chars: int
    audience_max_chars: int
    angle_max_chars: int


@dataclass(frozen=True)
class ExplainSettings:
    prompt_version: str
    modes: tuple[str, ...]  # the pipeline's own mode first, then the baselines
    min_words: int
    max_words: int
    max_chars: int
    max_word_repeats: int  # a word (3+ letters, not a filler) said more often is a repetition
    title_max_chars: int  # of the item title shown in the prompt
    style: StyleLimits
    title_max_rouge_l: float  # above this ROUGE-L F with the title, the line copies it
    absolute_claims: tuple[str, ...]
    template: str  # the `template` baseline: `{tag}` and `{category}` filled in
    pii_min_digits: int
    brand_min_chars: int
    echo_ngram_words: int
    extra_first_names: tuple[str, ...]
    situation_max_items: int
    situation_max_chars: int
    style_sampling: Sampling
    explanation_sampling: Sampling
    # A step whose answer broke a rule is asked again, up to `attempts` times in all, sampled
    # with `retry_sampling` (seeded by the attempt, so a rerun writes the same lines).
    attempts: int = 1
    retry_sampling: Sampling | None = None
    # Keep the tokens of the words a line may not use (absolute claims, attribute words the
    # facts do not hold) out of it at decoding; the rules still check every line.
    ban_unsupported_words: bool = False
    # Show a retried line its earlier answer and the rule it broke (`prompts.RETRY_HINTS`);
    # otherwise a retry is only resampled.
    retry_feedback: bool = False
    # The persona a V2 user falls back to when planning failed (`pipeline.fallback_persona`):
    # it says nothing about the user, so a pair serving it shows no persona.
    general_persona: str | None = None

    def sampling(self, step: str, attempt: int) -> Sampling:
        """The sampling of `step`'s `attempt` (0: the first, greedy as configured)."""
        first = self.style_sampling if step == "style" else self.explanation_sampling
        if attempt == 0 or self.retry_sampling is None:
            return first
        return replace(self.retry_sampling, max_tokens=first.max_tokens, seed=attempt)

    @property
    def mode(self) -> str:
        """The pipeline's own explanation mode (meta for V2, single for the V1 baseline)."""
        return self.modes[0]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], mode: str) -> ExplainSettings:
        """Settings from the `explain` mapping and the pipeline's `explanation` mode."""
        try:
            modes = tuple(dict.fromkeys([mode, *(str(m) for m in cfg.get("baselines") or ())]))
            unknown = [m for m in modes if m not in MODES]
            if unknown:
                raise ConfigError(f"explanation modes {unknown} unknown; known: {list(MODES)}")
            style, sampling, situation = cfg["style"], cfg["sampling"], cfg["situation"]
            settings = cls(
                prompt_version=str(cfg["prompt_version"]),
                modes=modes,
                min_words=int(cfg["min_words"]),
                max_words=int(cfg["max_words"]),
                max_chars=int(cfg["max_chars"]),
                max_word_repeats=int(cfg["max_word_repeats"]),
                title_max_chars=int(cfg["title_max_chars"]),
                style=StyleLimits(
                    int(style["tone_max_chars"]),
                    int(style["audience_max_chars"]),
                    int(style["angle_max_chars"]),
                ),
                title_max_rouge_l=float(cfg["title_max_rouge_l"]),
                absolute_claims=tuple(str(c).lower() for c in cfg["absolute_claims"]),
                template=str(cfg["template"]),
                pii_min_digits=int(cfg["pii_min_digits"]),
                brand_min_chars=int(cfg["brand_min_chars"]),
                echo_ngram_words=int(cfg["echo_ngram_words"]),
                extra_first_names=tuple(str(n).lower() for n in cfg.get("extra_first_names") or ()),
                situation_max_items=int(situation["max_items"]),
                situation_max_chars=int(situation["max_chars"]),
                style_sampling=Sampling.from_config(sampling["style"]),
                explanation_sampling=Sampling.from_config(sampling["explanation"]),
                attempts=int(cfg.get("attempts", 1)),
                retry_sampling=Sampling.from_config(sampling["retry"]) if sampling.get("retry") else None,
                ban_unsupported_words=bool(cfg.get("ban_unsupported_words", False)),
                retry_feedback=bool(cfg.get("retry_feedback", False)),
                general_persona=str(cfg["general_persona"]) if cfg.get("general_persona") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad explain config: {exc!r}") from exc
        if not 1 <= settings.min_words <= settings.max_words:
            raise ConfigError("explain.min_words must be >= 1 and <= explain.max_words")
        if settings.attempts < 1:
            raise ConfigError("explain.attempts must be >= 1 (1: no retry)")
        if settings.attempts > 1 and settings.retry_sampling is None:
            raise ConfigError("explain.attempts > 1 needs explain.sampling.retry")
        if not 0 < settings.title_max_rouge_l <= 1:
            raise ConfigError("explain.title_max_rouge_l must lie in (0, 1]")
        try:
            settings.template.format(tag="t", category="c")
        except (KeyError, IndexError) as exc:
            raise ConfigError(f"explain.template may only name {{tag}} and {{category}}: {exc!r}") from exc
        return settings
