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
    ItemFacts,
    StyleGuide,
    data_blocks,
    guide_text,
    meta_request,
    single_request,
    style_request,
    template_text,
)
from recgpt.explain.rules import DETAIL_CHARS, ExplanationRules, Facts, Finding
from recgpt.explain.settings import ExplainSettings
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


class Explainer:
    def __init__(self, engine: Engine, settings: ExplainSettings, rules: ExplanationRules) -> None:
        self.engine, self.settings, self.rules = engine, settings, rules

    def explain(self, batch: Sequence[ToExplain]) -> list[Explained]:
        s = self.settings
        data = [data_blocks(s, p.tag, p.item, p.situation) for p in batch]
        facts = [Facts.of(s, p.tag, p.item, p.situation) for p in batch]
        calls: list[list[tuple[str, Result]]] = [[] for _ in batch]
        answers: dict[str, list[Explanation | None]] = {m: [None] * len(batch) for m in s.modes}
        guides = self._guides_and_single_lines(batch, data, facts, calls, answers)
        self._meta_lines(batch, data, facts, guides, calls, answers)
        if "template" in s.modes:
            answers["template"] = [self._template(p, f) for p, f in zip(batch, facts, strict=True)]
        return [
            Explained(p.key, p.user_id, [answers[m][i] or Explanation(m) for m in s.modes], calls[i])
            for i, p in enumerate(batch)
        ]

    def _guides_and_single_lines(
        self,
        batch: Sequence[ToExplain],
        data: Sequence[str],
        facts: Sequence[Facts],
        calls: list[list[tuple[str, Result]]],
        answers: dict[str, list[Explanation | None]],
    ) -> dict[int, StyleGuide]:
        """The first engine batch: every style guide and every single line (both read only the
        pair's data). Returns the guides that passed, by pair; the others fail the meta line."""
        s, requests = self.settings, []
        for i, p in enumerate(batch):
            if "meta" in s.modes:
                requests.append((i, "style", style_request(f"{p.key}:style", s, data[i], p.user_id)))
            if "single" in s.modes:
                requests.append((i, "single", single_request(f"{p.key}:single", s, data[i], p.user_id)))
        guides: dict[int, StyleGuide] = {}
        for (i, step, _), result in zip(requests, self._generate(requests), strict=True):
            calls[i].append((step, result))
            if step == "single":
                answers["single"][i] = self._line("single", result, facts[i])
            elif result.parsed is None:
                answers["meta"][i] = _engine_failure("meta", "style", result)
            else:
                guide = StyleGuide(result.parsed.tone, result.parsed.audience, result.parsed.angle)  # type: ignore[attr-defined]
                finding = self.rules.check_guide([guide.tone, guide.audience, guide.angle])
                if finding:
                    answers["meta"][i] = _failed("meta", "style", finding)
                else:
                    guides[i] = guide
        return guides

    def _meta_lines(
        self,
        batch: Sequence[ToExplain],
        data: Sequence[str],
        facts: Sequence[Facts],
        guides: dict[int, StyleGuide],
        calls: list[list[tuple[str, Result]]],
        answers: dict[str, list[Explanation | None]],
    ) -> None:
        """The second engine batch: the meta line of every pair whose guide passed, written to it."""
        s = self.settings
        requests = [
            (i, "meta", meta_request(f"{batch[i].key}:meta", s, data[i], guide, batch[i].user_id))
            for i, guide in guides.items()
        ]
        for (i, step, _), result in zip(requests, self._generate(requests), strict=True):
            calls[i].append((step, result))
            line = self._line("meta", result, facts[i])
            answers["meta"][i] = replace(line, style_guide=guide_text(guides[i], s))

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
