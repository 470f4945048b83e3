"""Explaining a batch of (user, interest, item) pairs in every configured mode, one engine batch
per step across the whole batch: the style guides and the `single` lines together first (both
read only the item's data), then the `meta` lines written to the guides. Each step's system
message is the same for every pair, so the engine's prefix cache serves it once per batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from recgpt.explain.prompts import (
    Ask,
    ItemFacts,
    Retry,
    StyleGuide,
    data_blocks,
    guide_text,
    meta_request,
    single_request,
    style_request,
    template_text,
)
from recgpt.explain.rules import DETAIL_CHARS, ExplanationRules, Facts, Finding, Violation
from recgpt.explain.settings import ExplainSettings
from recgpt.llm.bans import Banner, WordBans
from recgpt.llm.engine import Engine
from recgpt.llm.request import Request, Result


@dataclass(frozen=True)
class ToExplain:
    """One recommended item for one user: the interest (tag) it was recalled for and the
    situation of the user's region on the run date."""

    key: str
    user_id: str
    tag: str
    item: ItemFacts
    situation: Mapping[str, Any] = field(default_factory=dict)
    persona: str | None = None  # the persona (V2) or route (V1) the tag serves: model output
    recent: str | None = None  # the title of the newest other item of the category the user chose


@dataclass(frozen=True)
class Explanation:
    """One mode's answer for one item: the text that passed the rules, or where and why not."""

    mode: str
    style_guide: str | None = None
    text: str | None = None
    failure_step: str | None = None  # style, meta, single or template
    failure_reason: str | None = None  # an engine error or a rule's code
    detail: str | None = None
    rejected: str | None = None  # the line as written when a rule rejected it (never served)


@dataclass
class Explained:
    key: str
    user_id: str
    explanations: list[Explanation]
    calls: list[tuple[str, Result]]


@dataclass(frozen=True)
class _Pairs:
    """One batch being explained: by pair, its data blocks, facts and word bans of its lines and
    of its style guide (the same for every attempt), the calls made so far and each mode's answer
    so far."""

    batch: Sequence[ToExplain]
    data: Sequence[str]
    facts: Sequence[Facts]
    bans: Sequence[WordBans]
    guide_bans: Sequence[WordBans]
    calls: list[list[tuple[str, Result]]]
    answers: dict[str, list[Explanation | None]]


class Explainer:
    def __init__(self, engine: Engine, settings: ExplainSettings, rules: ExplanationRules) -> None:
        self.engine, self.settings, self.rules = engine, settings, rules
        self._banner = Banner(engine.renderer.tokenizer)

    def line_bans(self, facts: Facts) -> WordBans:
        """The words and phrases a line of `facts` may not use
        (`ExplanationRules.unsupported_words`), kept out at decoding of the line and of its style
        guide (a guide's angle of "mild spring" leads its line there): each form (`word_bans`)
        the tokenizer writes as one token gets a bias of -100, a form it splits is a bad word."""
        if not self.settings.ban_unsupported_words:
            return WordBans()
        return self._banner(self.rules.unsupported_words(facts))

    def pair_bans(self, facts: Facts, persona: str | None) -> tuple[WordBans, WordBans]:
        """A pair's line bans (`line_bans`) and its style guide's: the line's, and the
        demonstration guide's words the pair does not hold (`ExplanationRules.demo_guide_words`):
        the small model otherwise copies "weekend trail runners" into a film's guide at every
        attempt. The unsupported words are found once for both."""
        if not self.settings.ban_unsupported_words:
            return WordBans(), WordBans()
        unsupported = self.rules.unsupported_words(facts)
        demo = self.rules.demo_guide_words(facts, persona)
        return self._banner(unsupported), self._banner([*unsupported, *demo])

    def explain(self, batch: Sequence[ToExplain]) -> list[Explained]:
        s = self.settings
        batch = [replace(p, persona=None) if p.persona == s.general_persona else p for p in batch]
        data = [data_blocks(s, p.tag, p.item, p.situation, p.persona, p.recent) for p in batch]
        facts = [Facts.of(s, p.tag, p.item, p.situation, p.recent) for p in batch]
        bans = [self.pair_bans(f, p.persona) for f, p in zip(facts, batch, strict=True)]
        calls: list[list[tuple[str, Result]]] = [[] for _ in batch]
        answers: dict[str, list[Explanation | None]] = {m: [None] * len(batch) for m in s.modes}
        guides: dict[int, StyleGuide] = {}
        pairs = _Pairs(batch, data, facts, [b[0] for b in bans], [b[1] for b in bans], calls, answers)
        for attempt in range(s.attempts):
            asked = self._guides_and_single_lines(pairs, guides, attempt)
            asked += self._meta_lines(pairs, guides, attempt)
            if not asked:
                break
        if "template" in s.modes:
            answers["template"] = [self._template(p, f) for p, f in zip(batch, facts, strict=True)]
        return [
            Explained(p.key, p.user_id, [answers[m][i] or Explanation(m) for m in s.modes], calls[i])
            for i, p in enumerate(batch)
        ]

    def _guides_and_single_lines(self, pairs: _Pairs, guides: dict[int, StyleGuide], attempt: int) -> int:
        """The first engine batch of an attempt: the style guides and single lines still to
        write (both read only the pair's data). A guide that passes joins `guides`; one that
        does not fails the meta line until an attempt's guide passes. Returns the calls made."""
        s, answers, requests = self.settings, pairs.answers, []
        for i, p in enumerate(pairs.batch):
            if "meta" in s.modes and i not in guides and _ask(answers["meta"][i], attempt):
                ask = Ask(attempt, pairs.guide_bans[i])
                request = style_request(_key(p.key, "style", attempt), s, pairs.data[i], p.user_id, ask)
                requests.append((i, "style", request))
            if "single" in s.modes and _ask(answers["single"][i], attempt):
                ask = Ask(attempt, pairs.bans[i], self._retry(answers["single"][i], "single"))
                request = single_request(_key(p.key, "single", attempt), s, pairs.data[i], p.user_id, ask)
                requests.append((i, "single", request))
        for (i, step, _), result in zip(requests, self._generate(requests), strict=True):
            pairs.calls[i].append((step, result))
            if step == "single":
                answers["single"][i] = self._line("single", result, pairs.facts[i])
            elif result.parsed is None:
                answers["meta"][i] = _engine_failure("meta", "style", result)
            else:
                guide = StyleGuide(result.parsed.tone, result.parsed.audience, result.parsed.angle)  # type: ignore[attr-defined]
                fields = [guide.tone, guide.audience, guide.angle]
                finding = self.rules.check_guide(fields, pairs.facts[i], pairs.batch[i].persona)
                if finding:
                    answers["meta"][i] = _failed("meta", "style", finding)
                else:
                    guides[i] = guide
                    answers["meta"][i] = None
        return len(requests)

    def _meta_lines(self, pairs: _Pairs, guides: dict[int, StyleGuide], attempt: int) -> int:
        """The second engine batch of an attempt: the meta line of every pair with a guide whose
        line is not written yet, written to its guide. Returns the calls made."""
        s, answers, requests = self.settings, pairs.answers, []
        for i, guide in guides.items():
            if answers["meta"][i] is None or _ask(answers["meta"][i], attempt):
                p = pairs.batch[i]
                ask = Ask(attempt, pairs.bans[i], self._retry(answers["meta"][i], "meta"))
                key = _key(p.key, "meta", attempt)
                requests.append((i, "meta", meta_request(key, s, pairs.data[i], guide, p.user_id, ask)))
        for (i, step, _), result in zip(requests, self._generate(requests), strict=True):
            pairs.calls[i].append((step, result))
            line = self._line("meta", result, pairs.facts[i])
            answers["meta"][i] = replace(line, style_guide=guide_text(guides[i], s))
            if _ask(answers["meta"][i], attempt + 1):
                # The guide led to a line that broke a rule ("all interests, this piece ..."):
                # the next attempt writes a new guide, then its line.
                del guides[i]
        return len(requests)

    def _retry(self, answer: Explanation | None, step: str) -> Retry | None:
        """With `retry_feedback`, the earlier answer of `step` a retry is told about: a line
        `step` wrote that broke a rule (not a guide's failure, and not an engine error)."""
        if not self.settings.retry_feedback or answer is None or answer.failure_step != step:
            return None
        if answer.failure_reason not in _RULE_CODES:
            return None
        return Retry(answer.failure_reason, answer.rejected)

    def _template(self, pair: ToExplain, facts: Facts) -> Explanation:
        text = template_text(self.settings, pair.tag, pair.item)
        finding = self.rules.check(text, facts)
        if finding:
            return _failed("template", "template", finding, text)
        return Explanation("template", text=text)

    def _generate(self, requests: Sequence[tuple[int, str, Request]]) -> list[Result]:
        return self.engine.generate([r for _, _, r in requests]) if requests else []

    def _line(self, mode: str, result: Result, facts: Facts) -> Explanation:
        if result.parsed is None:
            return _engine_failure(mode, mode, result)
        text = str(result.parsed.explanation).strip()  # type: ignore[attr-defined]
        finding = self.rules.check(text, facts)
        return _failed(mode, mode, finding, text) if finding else Explanation(mode, text=text)


# Rule codes: a line that broke one is asked again (an engine error is the engine's to retry).
_RULE_CODES = frozenset(str(v) for v in Violation)


def _ask(answer: Explanation | None, attempt: int) -> bool:
    """Whether a step is asked at `attempt`: always at the first, later only when its answer
    broke a rule."""
    if attempt == 0:
        return answer is None
    return answer is not None and answer.text is None and answer.failure_reason in _RULE_CODES


def _key(pair_key: str, step: str, attempt: int) -> str:
    """The call's request key: the step last (the ledger's costs group by it)."""
    return f"{pair_key}:{step}" if attempt == 0 else f"{pair_key}:retry{attempt}:{step}"


def _engine_failure(mode: str, step: str, result: Result) -> Explanation:
    """The engine's error code (prompt_too_long, invalid_output, ...) as the reason, its message
    as the detail."""
    code, _, message = (result.error or "invalid_output").partition(":")
    return Explanation(
        mode, failure_step=step, failure_reason=code.strip(), detail=message.strip()[:DETAIL_CHARS] or None
    )


def _failed(mode: str, step: str, finding: Finding, text: str | None = None) -> Explanation:
    return Explanation(
        mode, failure_step=step, failure_reason=str(finding.violation), detail=finding.detail, rejected=text
    )
