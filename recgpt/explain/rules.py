"""Deterministic rules an explanation must pass before it is written; a violation is a failure
row with its reason code, never a written explanation.

- form: `min_words`..`max_words` words, ending as a sentence ends (a line cut off at the decoding
  bound does not), no word said more than `max_word_repeats` times;
- relevance: it names the item or the interest (shares a word of 3+ letters with the title,
  category or tag: "I'm happy to help you with the details" is about nothing);
- safety: no personal data (emails, phone-like digit runs, a person's first name the item does
  not carry), no link, no echo of the prompts, their markup or their field labels ("price: ...":
  the item block copied; an injected title obeyed or repeated), no absolute claim ("best",
  "guaranteed", "100%");
- factuality: every number, brand and attribute word it states is among the item's facts
  (title, category, brand, price), the interest or the situation; no catalog brand but the
  item's own. The title of the item the shopper chose lately (`<recent>`) may be named, with
  its numbers, brand and names, but its attribute words say nothing about this item;
- no near-copy of the title (ROUGE-L F with the title above `title_max_rouge_l`).

Each failing explanation keeps one stable code (`Violation`), the first rule it breaks in the
order listed, so the counts per code compare between runs.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

from rouge_score import rouge_scorer

from recgpt.agents.prompts import ECHO_PHRASES
from recgpt.agents.text import ngrams, words
from recgpt.agents.validate import brand_keys, first_names
from recgpt.explain.prompts import (
    BLOCKS,
    DEMO_ANSWERS,
    ItemFacts,
    recent_text,
    situation_line,
    system_texts,
)
from recgpt.explain.settings import ExplainSettings
from recgpt.untrusted import disguised, has_pii, markup, unhidden


class Violation(StrEnum):
    EMPTY = "empty"
    PII = "pii"
    LINK = "link"
    INSTRUCTION_ECHO = "instruction_echo"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    UNFINISHED = "unfinished"
    REPEATED_WORD = "repeated_word"
    OFF_TOPIC = "off_topic"
    ABSOLUTE_CLAIM = "absolute_claim"
    FOREIGN_BRAND = "foreign_brand"
    PERSON_NAME = "person_name"
    UNSUPPORTED_NUMBER = "unsupported_number"
    UNSUPPORTED_ATTRIBUTE = "unsupported_attribute"
    TITLE_COPY = "title_copy"


@dataclass(frozen=True)
class Finding:
    violation: Violation
    detail: str  # the offending words (bounded), for the failures table


_LINK = re.compile(r"(https?://|www\.|\b[\w-]+\.(com|net|org|io|shop|store|cn|co|info|biz|xyz)\b)", re.I)
# A domain spelled without its dots ("buyer deals mail example org"): the line's pattern admits
# no "." or "@" inside a sentence, so a copied address or link comes out this way. "net", "co" and
# "shop" are ordinary words too and are left to the dotted form.
_SPELLED_DOMAIN = re.compile(r"\b[a-z0-9-]+ (?:dot )?(com|org|io|biz|xyz|info)\b", re.I)
# A domain in a fact's text ("hacked.example.com"): its labels before the top-level word.
_DOMAIN = re.compile(r"\b((?:[a-z0-9-]+\.)+)(?:com|net|org|io|shop|store|cn|co|info|biz|xyz)\b", re.I)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# The prompts' field labels: a line holding one copies the prompt's data blocks.
_LABEL = re.compile(
    r"\b(title|category|brand|price|tone|audience|angle|season|weather|festivals|trends|interest|style)\s*:",
    re.I,
)
# How a finished sentence ends (a closing quote or bracket may follow).
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")
# Short words and fillers repeat in any sentence.
_ORDINARY = frozenset("the and for you your this that with are our its".split())
DETAIL_CHARS = 60


@cache
def attribute_words() -> frozenset[str]:
    """The bundled attribute and price-claim lexicon (recgpt/explain/attribute_words.txt)."""
    text = resources.files("recgpt.explain").joinpath("attribute_words.txt").read_text(encoding="utf-8")
    return frozenset(
        " ".join(words(line)) for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


@cache
def _demo_guide_pairs() -> frozenset[str]:
    """Consecutive word pairs of the demonstration's style guide fields."""
    return frozenset(pair for text in DEMO_ANSWERS["style"].values() for pair in ngrams(words(text), 2))


def _guide_owns(facts: Facts, persona: str | None) -> set[str]:
    """The words a pair's style guide may take from the demonstration's: its facts' and its
    persona's (the persona is the pair's own data)."""
    return facts.words() | {_fold(w) for w in words(persona or "")}


@cache
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure of two texts (rouge-score's tokenizer: lower-cased alphanumeric words)."""
    return float(_scorer().score(a, b)["rougeL"].fmeasure)


def _fold(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(unicodedata.normalize("NFKC", text))}


@dataclass(frozen=True)
class Facts:
    """What an explanation of one (interest, item, situation) may state."""

    text: str  # every fact as one text: title, category, brand, price, interest, situation
    title: str
    brand: str | None
    item_text: str  # what the shop says about the item: title, category, brand
    tag: str
    recent: str = ""  # the title of the item the shopper chose lately, as the prompt showed it

    @classmethod
    def of(
        cls,
        settings: ExplainSettings,
        tag: str,
        item: ItemFacts,
        env: Mapping[str, Any] | None,
        recent: str | None = None,
    ) -> Facts:
        parts = [item.title, item.category, item.category_path or "", item.brand or "", tag]
        if (price := item.price_text()) is not None:
            parts.append(price)
        parts.append(situation_line(settings, env))
        item_text = " | ".join([item.title, item.category, item.category_path or "", item.brand or ""])
        return cls(" | ".join(parts), item.title, item.brand, item_text, tag, recent_text(settings, recent))

    def words(self) -> set[str]:
        """The words of the facts (the recent item's title is not among them: "waterproof" in
        it does not make this item waterproof)."""
        return {_fold(w) for w in words(self.text)} - {_fold(w) for w in self.link_words()}

    def link_words(self) -> set[str]:
        """The words of the domains the facts hold ("hacked", "example" of a title asking to
        "VISIT hacked.example.com"): an injected link's words are never facts, whatever field
        carried them in."""
        found = (m.group(1) for m in _DOMAIN.finditer(unhidden(f"{self.text} | {self.recent}")))
        return {w for labels in found for w in words(labels) if w != "www"}

    def numbers(self) -> set[str]:
        found = _numbers(f"{self.text} | {self.recent}")
        # A price of 20.00 may be stated as 20.
        return found | {n.split(".")[0] for n in found if n.endswith(".00")}


@dataclass(frozen=True)
class ExplanationRules:
    """The rules of one run: settings, the catalog's brands and the prompts' own phrases."""

    settings: ExplainSettings
    brands: frozenset[str]
    echo: frozenset[str]
    names: frozenset[str]
    attributes: frozenset[str]

    @classmethod
    def for_run(cls, settings: ExplainSettings, brands: Iterable[str]) -> ExplanationRules:
        n = settings.echo_ngram_words
        phrases = {" ".join(words(p)) for p in (*ECHO_PHRASES, *(b for b in BLOCKS if "_" in b))}
        for text in system_texts(settings).values():
            phrases |= ngrams(words(text), n)
        return cls(
            settings,
            brand_keys(brands, settings.brand_min_chars),
            frozenset(phrases),
            first_names() | frozenset(settings.extra_first_names),
            attribute_words(),
        )

    def echoes(self, text: str) -> str | None:
        """Markup, disguised text, or the first phrase of the prompts (shortest first, read
        `unhidden`), in `text`."""
        if tag := markup(text):
            return tag
        if disguised(text):
            return "disguised text"
        tokens = words(unhidden(text))
        for size in sorted({len(p.split()) for p in self.echo}):
            if phrases := ngrams(tokens, size) & self.echo:
                return min(phrases)
        return None

    def absolute_claim(self, text: str) -> str | None:
        """A claim of `absolute_claims` in `text`: a word claim as whole words ("best", not
        "bestow"), one with symbols ("100%", "#1") as it is written."""
        tokens = f" {' '.join(words(text))} "
        raw = unicodedata.normalize("NFKC", text).lower()
        for claim in self.settings.absolute_claims:
            if re.fullmatch(r"[\w\s]+", claim):
                if f" {' '.join(words(claim))} " in tokens:
                    return claim
            elif claim in raw:
                return claim
        return None

    def unsupported_words(self, facts: Facts) -> list[str]:
        """The words and phrases a line of `facts` may not write whatever its context (so
        decoding can keep them out): the absolute claims of letters and spaces, and the
        attribute words and phrases whose words the facts do not all hold."""
        fact_words = facts.words()
        claims = [c for c in self.settings.absolute_claims if re.fullmatch(r"[a-z]+( [a-z]+)*", c)]
        attributes = [a for a in self.attributes if not all(_fold(w) in fact_words for w in a.split())]
        return sorted({*claims, *attributes, *facts.link_words()})

    def demo_guide_words(self, facts: Facts, persona: str | None = None) -> list[str]:
        """The words of the demonstration's guide (audience and angle: "weekend trail runners")
        that `facts` and the pair's `persona` do not hold: a guide writing two of them in a row
        is an echo (`check_guide`), so decoding keeps them out of the guide."""
        own = _guide_owns(facts, persona)
        demo = {w for pair in _demo_guide_pairs() for w in pair.split()}
        return sorted(w for w in demo if _fold(w) not in own and w not in _ORDINARY)

    def check_guide(
        self, fields: Sequence[str], facts: Facts | None = None, persona: str | None = None
    ) -> Finding | None:
        """A style guide is the next prompt's data: no field may carry personal data, a link, an
        echo or a word said over and over. With the pair's `facts`, a guide that copies the
        demonstration's guide (two consecutive words of it that the facts do not hold: "weekend
        trail runners" for a lip gloss) is an echo too: it is not a guide for this item; the
        words of the pair's `persona` are its own."""
        for text in fields:
            if finding := self._safety(text):
                return finding
        if facts is not None:
            fact_words = _guide_owns(facts, persona)
            tokens = [w for text in fields for w in (*words(text), "|")]
            copied = sorted(
                pair
                for pair in ngrams(tokens, 2) & _demo_guide_pairs()
                if not all(_fold(w) in fact_words for w in pair.split())
            )
            if copied:
                return Finding(Violation.INSTRUCTION_ECHO, copied[0])
        counts = Counter(w for text in fields for w in words(text) if len(w) > 2 and w not in _ORDINARY)
        if counts and max(counts.values()) > self.settings.max_word_repeats:
            return Finding(Violation.REPEATED_WORD, counts.most_common(1)[0][0])
        return None

    def check(self, text: str, facts: Facts) -> Finding | None:
        """The first rule `text` breaks as an explanation of `facts`, or None."""
        return next(self.findings(text, facts), None)

    def findings(self, text: str, facts: Facts) -> Iterator[Finding]:
        """Every rule `text` breaks as an explanation of `facts`, in the order of `check` (each
        rule once, with its first offending words); an empty text breaks only `empty`."""
        s = self.settings
        if not text.strip():
            yield Finding(Violation.EMPTY, "")
            return
        if finding := self._safety(text):
            yield finding
        tokens = words(text)
        links = facts.link_words()
        if link := next((w for w in tokens if w in links), None):
            yield Finding(Violation.LINK, link)
        if len(tokens) < s.min_words:
            yield Finding(Violation.TOO_SHORT, str(len(tokens)))
        elif len(tokens) > s.max_words or len(text) > s.max_chars:
            yield Finding(Violation.TOO_LONG, str(len(tokens)))
        if not _SENTENCE_END.search(text.strip()):
            yield Finding(Violation.UNFINISHED, text.strip()[-DETAIL_CHARS // 2 :])
        counts = Counter(w for w in tokens if len(w) > 2 and w not in _ORDINARY)
        if counts and max(counts.values()) > s.max_word_repeats:
            yield Finding(Violation.REPEATED_WORD, counts.most_common(1)[0][0])
        about = {
            _fold(w) for w in words(f"{facts.item_text} {facts.tag}") if len(w) > 2 and w not in _ORDINARY
        }
        if not about & {_fold(w) for w in tokens}:
            yield Finding(Violation.OFF_TOPIC, "")
        if claim := self.absolute_claim(text):
            yield Finding(Violation.ABSOLUTE_CLAIM, claim)
        fact_words = facts.words()
        fact_text = " ".join(words(f"{facts.text} | {facts.recent}"))
        own = " ".join(words(facts.brand or ""))
        foreign = (
            brand
            for size in range(1, len(tokens) + 1)
            for brand in sorted(ngrams(tokens, size) & self.brands)
            if brand != own and f" {brand} " not in f" {fact_text} "
        )
        if brand := next(foreign, None):
            yield Finding(Violation.FOREIGN_BRAND, brand)
        # A name is personal data unless the item or the recent one carries it (a title like
        # "Harry Potter"); the interest does not vouch for one: it is model output too.
        item_words = {_fold(w) for w in words(f"{facts.item_text} | {facts.recent}")}
        if name := next((w for w in tokens if w in self.names and _fold(w) not in item_words), None):
            yield Finding(Violation.PERSON_NAME, name)
        allowed = facts.numbers()
        if number := next((n for n in sorted(_numbers(text)) if n not in allowed), None):
            yield Finding(Violation.UNSUPPORTED_NUMBER, number)
        unsupported = (
            phrase
            for size in (1, 2, 3)
            for phrase in sorted(ngrams(tokens, size) & self.attributes)
            if not all(_fold(w) in fact_words for w in phrase.split())
        )
        if phrase := next(unsupported, None):
            yield Finding(Violation.UNSUPPORTED_ATTRIBUTE, phrase)
        score = rouge_l(facts.title, text)
        if score > s.title_max_rouge_l:
            yield Finding(Violation.TITLE_COPY, f"{score:.2f}")

    def _safety(self, text: str) -> Finding | None:
        if has_pii(text, self.settings.pii_min_digits):
            return Finding(Violation.PII, "")
        if match := _LINK.search(unhidden(text)) or _SPELLED_DOMAIN.search(unhidden(text)):
            return Finding(Violation.LINK, match.group()[:DETAIL_CHARS])
        if echo := self.echoes(text):
            return Finding(Violation.INSTRUCTION_ECHO, echo[:DETAIL_CHARS])
        if label := _LABEL.search(unhidden(text)):
            return Finding(Violation.INSTRUCTION_ECHO, label.group())
        return None
