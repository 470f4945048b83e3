"""Deterministic checks of what the agents wrote, before anything is written or handed on: a tag
must read as "modifier + core word" within the length limits, name no catalog brand and no person,
not restate a persona, not repeat what the user bought recently, hold no personal data (a reason
that does is cut before it, the tag kept), not echo the prompt's instructions or its example, use
only known words where a vocabulary is given (no coinages like "gardensetree"; coined words after a
catalog core are cut, the core kept), not duplicate (exactly or nearly) a better-ranked tag, and be close
enough to something the shop sells. Personas get the same hygiene, and a persona is
a shopping need, never a person's name.

Each rejected item keeps one stable reason code (`Rejection`), the first rule it breaks in the
order the codes are listed, so the counts per code are comparable between runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cache, cached_property
from importlib import resources
from itertools import zip_longest
from typing import Generic, TypeVar

import numpy as np

from recgpt.agents.evidence import unit_rows
from recgpt.agents.prompts import BLOCKS, ECHO_PHRASES, TAG_EXAMPLES, system_texts
from recgpt.agents.schemas import Persona, Tag
from recgpt.agents.settings import AgentSettings
from recgpt.agents.text import inline_text, ngrams, normalise_phrase, words
from recgpt.untrusted import before_pii, disguised, has_pii, markup, unhidden

T = TypeVar("T")

# Embeds texts as unit vectors, one row per text (the item embedder in production).
Embed = Callable[[list[str]], np.ndarray]


class Rejection(StrEnum):
    EMPTY = "empty"
    PII = "pii"
    INSTRUCTION_ECHO = "instruction_echo"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    REPEATED_WORD = "repeated_word"
    BRAND = "brand"
    PERSON_NAME = "person_name"
    UNKNOWN_WORD = "unknown_word"
    PERSONA_LEAK = "persona_leak"
    BOUGHT_RECENTLY = "bought_recently"
    REASON_TOO_LONG = "reason_too_long"
    DUPLICATE = "duplicate"
    NOT_A_PRODUCT = "not_a_product"
    NEAR_DUPLICATE = "near_duplicate"


@dataclass(frozen=True)
class Rejected(Generic[T]):
    item: T  # as the model wrote it
    reason: Rejection


@dataclass(frozen=True)
class Checked(Generic[T]):
    kept: list[T]  # cleaned and normalised, in the order given
    rejected: list[Rejected[T]]
    # Kept tags whose reason held personal data: cut before it (`before_pii`), or
    # REASON_WITHHELD when nothing came before it.
    reasons_cut: int = 0


# A kept tag's reason when all the model wrote was personal data ("#.#.#.#.#..."): the bundled
# model loops on digits in a reason far more often than in a tag, and the tag stands.
REASON_WITHHELD = "(reason withheld: it held personal data)"


# Words that say nothing about what a persona or a tag is about.
FILLER = frozenset(
    "a an the and or of for to in on at by with from who whose is are was has have loves likes "
    "his her their its this that as".split()
)


@cache
def first_names() -> frozenset[str]:
    """The bundled list of person first names (recgpt/agents/first_names.txt)."""
    text = resources.files("recgpt.agents").joinpath("first_names.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def brand_keys(brands: Iterable[str], min_chars: int) -> frozenset[str]:
    """Catalog brands as matchable word strings; a one-word brand shorter than `min_chars`
    ("HP", "LG") is left out, it would match ordinary words and numbers."""
    keys = set()
    for brand in brands:
        key = " ".join(words(brand))
        if key and (" " in key or len(key) >= min_chars):
            keys.add(key)
    return frozenset(keys)


def _plural(word: str) -> bool:
    """Whether `word` may be a plural: an "s" ending that is no "ss" ("boots", not "dress")."""
    return len(word) > 3 and word.endswith("s") and not word.endswith("ss")


def fold_words(tokens: Iterable[str]) -> tuple[str, ...]:
    """Words with a plural "s" dropped, so "hiking boots" and "hiking boot" compare equal."""
    return tuple(w[:-1] if _plural(w) else w for w in tokens)


def singular_forms(word: str) -> tuple[str, ...]:
    """The word and what it may be the plural of ("berries" -> "berry", "boxes" -> "box")."""
    forms = [word]
    if _plural(word):
        forms.append(word[:-1])
        if word.endswith("es"):
            forms.append(word[:-2])
        if word.endswith("ies"):
            forms.append(word[:-3] + "y")
    return tuple(forms)


def _contains(outer: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    return f" {' '.join(inner)} " in f" {' '.join(outer)} "


@dataclass(frozen=True)
class ValidationContext:
    """What the checks compare against. Built once per run (`for_run`: limits, catalog brands,
    the prompts' own phrases) and narrowed per user (`for_user`: recent purchases)."""

    settings: AgentSettings
    brands: frozenset[str]  # from `brand_keys`
    echo: frozenset[str]  # word strings (`words` joined by spaces) whose presence is an echo
    names: frozenset[str] = field(default_factory=first_names)  # person first names
    examples: frozenset[tuple[str, ...]] = frozenset()  # folded words of the prompts' example tags
    # Unit rows of what the shop sells (popular items, category means): a tag must come close to
    # one of them or to the user's own items; None: no such check.
    catalog: np.ndarray | None = field(default=None, compare=False, repr=False)
    bought: tuple[tuple[str, ...], ...] = ()  # folded words of bought core titles
    personas: tuple[Persona, ...] = ()  # the user's personas: a tag may not merely restate one
    # The words a tag may use (`words` tokens, lower case); None: any word.
    vocabulary: frozenset[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def for_run(
        cls,
        settings: AgentSettings,
        brands: Iterable[str],
        catalog: np.ndarray | None = None,
        vocabulary: Iterable[str] | None = None,
    ) -> ValidationContext:
        """`brands`: the catalog's brand names; `catalog`: embeddings of what the shop sells
        (checked against `validation.catalog_min_cosine`); `vocabulary`: the known words (a tag
        with another word is rejected), None for no such check. The echo phrases are the fixed ones,
        block names that are no ordinary word (`candidate_tags`), and every run of
        `echo_ngram_words` consecutive words of the run's system messages."""
        n = settings.validation.echo_ngram_words
        phrases = {" ".join(words(p)) for p in (*ECHO_PHRASES, *(b for b in BLOCKS if "_" in b))}
        for text in system_texts(settings).values():
            phrases |= ngrams(words(text), n)
        return cls(
            settings,
            brand_keys(brands, settings.validation.brand_min_chars),
            frozenset(phrases),
            names=first_names() | frozenset(settings.validation.extra_first_names),
            examples=frozenset(fold_words(words(e)) for e in TAG_EXAMPLES),
            catalog=None
            if catalog is None or not len(catalog)
            else unit_rows(np.asarray(catalog, dtype=np.float32)),
            vocabulary=None if vocabulary is None else frozenset(vocabulary),
        )

    def for_user(self, bought_titles: Iterable[str], personas: Sequence[Persona] = ()) -> ValidationContext:
        """The run's context with the core titles of what this user bought within
        `validation.bought_days` before the run date, and the user's personas."""
        bought = tuple(t for t in (fold_words(words(title)) for title in bought_titles) if t)
        return replace(self, bought=bought, personas=tuple(personas))

    @cached_property
    def _echo_lengths(self) -> frozenset[int]:
        return frozenset(len(p.split()) for p in self.echo)

    @cached_property
    def _cores(self) -> frozenset[str]:
        return frozenset(self.settings.tag.cores)

    def echoes(self, text: str) -> bool:
        """Markup, disguised text, or a phrase of the prompts (read `unhidden`), in `text`."""
        if markup(text) or disguised(text):
            return True
        tokens = words(unhidden(text))
        return any(ngrams(tokens, n) & self.echo for n in self._echo_lengths)

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` that are no known word, nor the plural of one; a word with a
        digit ("4k", "618") is never unknown."""
        if self.vocabulary is None:
            return []
        known = self.vocabulary
        return [
            w
            for w in words(text)
            if not any(c.isdigit() for c in w) and not any(f in known for f in singular_forms(w))
        ]

    def before_coined(self, tag: str) -> str:
        """`tag` cut before its first unknown word (`unknown_words`) when a catalog core
        (`tag.cores`) comes whole before it: the bundled model pads the core it named with
        letters it coins ("small appliances iapplia iappliaa"), and the core stands. Otherwise
        `tag` as given, for the unknown-word rule to judge."""
        unknown = set(self.unknown_words(tag))
        if not unknown or not self._cores:
            return tag
        tokens = words(tag)
        head = tokens[: next(i for i, w in enumerate(tokens) if w in unknown)]
        named = any(ngrams(head, n) & self._cores for n in range(1, len(head) + 1))
        return " ".join(head) if named else tag

    def names_person(self, text: str) -> bool:
        return any(w in self.names for w in words(unhidden(text)))

    def restates_persona(self, tag: str) -> bool:
        """Every word of the tag that says something comes from a persona's name or description
        and none from the items it cited ("seasoned creative" from "a seasoned creative who ...").
        A tag that is one of the shop's categories (`tag.cores`) restates none: a persona's need
        is often that category too ("pet food")."""
        if " ".join(words(tag)) in self._cores:
            return False
        said = {w for w in words(tag) if w not in FILLER}
        if not said:
            return False
        for persona in self.personas:
            described = set(words(persona.name)) | set(words(persona.description))
            cited = {w for e in persona.evidence for w in words(e)}
            if said <= described and not said & cited:
                return True
        return False

    def is_example(self, tag: str) -> bool:
        return fold_words(words(tag)) in self.examples

    def sold_cosine(self, vectors: np.ndarray) -> np.ndarray | None:
        """Per unit row of `vectors`: its best cosine with the catalog reference; None when the
        run has no catalog reference. The user's own items do not count: their titles are
        untrusted text, and a hostile title would vouch for a tag that repeats it."""
        if self.catalog is None:
            return None
        return (self.catalog @ vectors.T).max(axis=0)

    def names_brand(self, tag: str) -> bool:
        tokens = words(tag)
        return any(ngrams(tokens, n) & self.brands for n in range(1, len(tokens) + 1))

    def bought_recently(self, tag: str) -> bool:
        """The tag equals a bought item's core title or one holds the other as a whole-word
        phrase, comparing words with plural "s" ignored. A bought title of one word only matches
        when equal: "gift" bought says nothing against "halloween gift box"."""
        folded = fold_words(words(tag))
        return any(
            folded == title or _contains(title, folded) or (len(title) > 1 and _contains(folded, title))
            for title in self.bought
        )


def _amended(tag: Tag, ctx: ValidationContext) -> Tag:
    """`tag` with the coined words after its core cut (`ValidationContext.before_coined`) and its
    reason up to any personal data in it (REASON_WITHHELD when nothing comes before): the
    reason is the model's gloss, the tag what is served. Personal data in the tag itself stays
    for `tag_problem` to reject."""
    said = inline_text(tag.reason)
    cut = before_pii(said, ctx.settings.validation.pii_min_digits)
    reason = tag.reason if cut == said else cut.rstrip(" ,;:-([{/+#") or REASON_WITHHELD
    normal = normalise_phrase(tag.tag)
    trimmed = ctx.before_coined(normal)
    # As written unless cut: the echo and markup checks read the raw tag ("socks</history>").
    return replace(tag, tag=tag.tag if trimmed == normal else trimmed, reason=reason)


def tag_problem(tag: Tag, ctx: ValidationContext) -> Rejection | None:
    """The first rule `tag` breaks once amended (`_amended`), None when it passes (the embedding
    checks of `check_tags` aside)."""
    return _problem(_amended(tag, ctx), ctx)


def _problem(tag: Tag, ctx: ValidationContext) -> Rejection | None:
    limits, digits = ctx.settings.tag, ctx.settings.validation.pii_min_digits
    normal = normalise_phrase(tag.tag)
    reason = inline_text(tag.reason)
    if not normal or not reason:
        return Rejection.EMPTY
    # The Expert's evidence is never written (final tags cite items by id): personal data there
    # blanks it in `check_tags` rather than rejecting a tag that is fine.
    if any(has_pii(text, digits) for text in (tag.tag, tag.reason)):
        return Rejection.PII
    if ctx.echoes(tag.tag) or ctx.echoes(tag.reason) or ctx.is_example(normal):
        return Rejection.INSTRUCTION_ECHO
    count = len(normal.split())
    if count < limits.min_words:
        return Rejection.TOO_SHORT
    if count > limits.max_words or len(normal) > limits.max_chars:
        return Rejection.TOO_LONG
    # "iphone iphone case" is a small model looping, not a modifier + core word phrase.
    if len(set(normal.split())) < count:
        return Rejection.REPEATED_WORD
    if ctx.names_brand(normal):
        return Rejection.BRAND
    if ctx.names_person(normal):
        return Rejection.PERSON_NAME
    # A small model coins words ("nonsensefest decorations"); a real word beside one still
    # brings the tag close enough to the catalog to pass the catalog check.
    if ctx.unknown_words(normal):
        return Rejection.UNKNOWN_WORD
    if ctx.restates_persona(normal):
        return Rejection.PERSONA_LEAK
    if ctx.bought_recently(normal):
        return Rejection.BOUGHT_RECENTLY
    if len(reason) > limits.reason_max_chars:
        return Rejection.REASON_TOO_LONG
    return None


def check_tags(tags: Sequence[Tag], ctx: ValidationContext, embed: Embed | None = None) -> Checked[Tag]:
    """The tags that pass every rule, best-ranked first, with the tag normalised (coined words
    after its core cut) and the reason (up to any personal data: `reasons_cut`), evidence and
    persona cleaned; and the rejected ones as written. Exact duplicates (after
    normalisation) are rejected in favour of the earlier one. Given `embed`: a tag too far from
    everything the shop sells (best cosine with the context's catalog reference or the user's
    items below `catalog_min_cosine`) is rejected, then near-duplicates (cosine >=
    `near_duplicate_cosine` with a kept tag ranked above) in favour of the earlier one."""
    kept: list[Tag] = []
    rejected: list[Rejected[Tag]] = []
    seen: set[str] = set()
    limits = ctx.settings.tag
    cut: list[bool] = []  # per kept tag: its reason was cut
    for written in tags:
        tag = _amended(written, ctx)
        problem = _problem(tag, ctx)
        normal = normalise_phrase(tag.tag)
        if problem is None and normal in seen:
            problem = Rejection.DUPLICATE
        if problem is not None:
            rejected.append(Rejected(written, problem))
            continue
        seen.add(normal)
        cut.append(tag.reason != written.reason)
        kept.append(
            replace(
                tag,
                tag=normal,
                reason=inline_text(tag.reason),
                evidence=""
                if has_pii(tag.evidence, ctx.settings.validation.pii_min_digits)
                else inline_text(tag.evidence, limits.evidence_max_chars),
                persona=inline_text(tag.persona, ctx.settings.persona.name_max_chars)
                if tag.persona
                else None,
            )
        )
    minimum = ctx.settings.validation.catalog_min_cosine
    sold_check = minimum is not None and ctx.catalog is not None
    if embed is None or not kept or (len(kept) < 2 and not sold_check):
        return Checked(kept, rejected, sum(cut))
    vectors = unit_rows(embed([t.tag for t in kept]))
    sold = ctx.sold_cosine(vectors) if sold_check else None
    threshold = ctx.settings.validation.near_duplicate_cosine
    distinct: list[int] = []
    for i, tag in enumerate(kept):
        if sold is not None and minimum is not None and float(sold[i]) < minimum:
            rejected.append(Rejected(tag, Rejection.NOT_A_PRODUCT))
        elif distinct and float(np.max(vectors[distinct] @ vectors[i])) >= threshold:
            rejected.append(Rejected(tag, Rejection.NEAR_DUPLICATE))
        else:
            distinct.append(i)
    return Checked([kept[i] for i in distinct], rejected, sum(cut[i] for i in distinct))


def _persona_problem(persona: Persona, ctx: ValidationContext) -> Rejection | None:
    limits, digits = ctx.settings.persona, ctx.settings.validation.pii_min_digits
    texts = (persona.name, persona.description, *persona.evidence, *persona.signals)
    if not normalise_phrase(persona.name) or not inline_text(persona.description):
        return Rejection.EMPTY
    if any(has_pii(text, digits) for text in texts):
        return Rejection.PII
    if any(ctx.echoes(text) for text in texts):
        return Rejection.INSTRUCTION_ECHO
    # A persona is a shopping need; a small model names people ("Mike") and the name then
    # leaks into every tag.
    if ctx.names_person(persona.name):
        return Rejection.PERSON_NAME
    if (
        len(inline_text(persona.name)) > limits.name_max_chars
        or len(inline_text(persona.description)) > limits.description_max_chars
        or len(persona.evidence) > limits.evidence_items
        or len(persona.signals) > limits.signal_items
        or any(len(inline_text(e)) > limits.evidence_max_chars for e in persona.evidence)
        or any(len(inline_text(s)) > limits.signal_max_chars for s in persona.signals)
    ):
        return Rejection.TOO_LONG
    return None


def check_personas(personas: Sequence[Persona], ctx: ValidationContext) -> Checked[Persona]:
    """The Global Planner's personas that pass, cleaned, with names unique after normalisation
    (a repeated name is rejected as a duplicate of the first). No persona kept means the user
    has no usable plan."""
    kept: list[Persona] = []
    rejected: list[Rejected[Persona]] = []
    names: set[str] = set()
    for persona in personas:
        problem = _persona_problem(persona, ctx)
        name = normalise_phrase(persona.name)
        if problem is None and name in names:
            problem = Rejection.DUPLICATE
        if problem is not None:
            rejected.append(Rejected(persona, problem))
            continue
        names.add(name)
        kept.append(
            Persona(
                name=inline_text(persona.name),
                description=inline_text(persona.description),
                evidence=tuple(e for e in map(inline_text, persona.evidence) if e),
                signals=tuple(s for s in map(inline_text, persona.signals) if s),
            )
        )
    return Checked(kept, rejected)


def pool(tag_lists: Sequence[Sequence[Tag]]) -> list[Tag]:
    """The Experts' tags as one candidate list for the Arbiter, round-robin over personas (each
    persona's first tag, then each one's second, ...), so de-duplication keeps every persona's
    best tags rather than the first persona's whole list."""
    return [t for rank in zip_longest(*tag_lists) for t in rank if t is not None]
