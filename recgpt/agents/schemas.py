"""What each agent answers: pydantic models built from the settings (K personas, M tags per
Expert, N final tags, every string's length), whose JSON schema drives structured decoding and
which parse the answer, and the plain records the rest of the pipeline passes around.

Every string and list carries a maximum and no object admits extra keys, so the longest valid
answer is bounded and `sampling.*.max_tokens` is sized to it (a small model writing compact JSON
otherwise pads or rambles until max_tokens and leaves invalid JSON). The Arbiter's `score` is an integer
1..10 (10 = best): a bounded one- or two-token number, where a float's digits would be unbounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, conlist, constr, create_model

from recgpt.agents.settings import AgentSettings

SCORE_MIN, SCORE_MAX = 1, 10
# A tag is lower-case words of letters (no digits: model numbers and sizes are not interests, and a
# digit run is where personal data hides), each at most this long, `tag.min_words` to
# `tag.max_words` of them: the form is enforced while decoding (a small model otherwise answers
# with runs of underscores) rather than only rejected afterwards. The pattern also
# bounds the length (the grammar backend takes a pattern or a maxLength, not both).
TAG_WORD_CHARS = 12

# No extra keys: an open object would let the decoder add fields without bound.
_CLOSED = ConfigDict(extra="forbid")


def _text(max_chars: int) -> Any:
    return constr(min_length=1, max_length=max_chars)


def tag_pattern(min_words: int, max_words: int) -> str:
    word = f"[a-z]{{1,{TAG_WORD_CHARS}}}"
    return f"^{word}( {word}){{{min_words - 1},{max_words - 1}}}$"


def grounded_tag_pattern(
    min_words: int, max_words: int, cores: Sequence[str], core_first: bool = False
) -> str:
    """A tag that names one of `cores` (catalog phrases of 1..max_words words) among its own
    words, min_words..max_words words in all: the core is the shop's, the other words the
    model's, before it ("dark comedy") or after it ("comedy classics": a small model that
    starts with the category is not forced to repeat it); with `core_first`, after it only.
    Cores of one word count share an alternation; every branch bounds its words, so the
    longest tag is bounded as without."""
    word = f"[a-z]{{1,{TAG_WORD_CHARS}}}"
    by_words: dict[int, list[str]] = {}
    for core in dict.fromkeys(cores):
        by_words.setdefault(len(core.split()), []).append(core)
    branches = []
    for n, group in sorted(by_words.items()):
        # Longest first, so no core is shadowed by its own prefix in a backtracking engine.
        core = "(" + "|".join(sorted(group, key=lambda e: (-len(e), e))) + ")"
        free, least = max_words - n, max(min_words - n, 0)
        for before in range((0 if core_first else free) + 1):
            low, high = max(least - before, 0), free - before
            head = f"({word} ){{{before}}}" if before else ""
            tail = f"( {word}){{{low},{high}}}" if high else ""
            branches.append(head + core + tail)
    if not branches:
        raise ValueError(f"no core fits tags of {min_words}-{max_words} words")
    return "^(" + "|".join(branches) + ")$"


def _tag(settings: AgentSettings) -> Any:
    t = settings.tag
    if t.cores:
        return constr(pattern=grounded_tag_pattern(t.min_words, t.max_words, t.cores, t.core_first))
    return constr(pattern=tag_pattern(t.min_words, t.max_words))


# A persona is named by the need it shops for, in lower-case words ("trail running gear"): the
# decoder cannot write a capitalised person's name ("Jake"), and the key the model writes is
# "need", so what follows it continues a need rather than a character sketch ("Jake is a
# 19-year-old male"). The record keeps calling it `name`.
PERSONA_NAME_WORDS = 3
PERSONA_NAME_KEY = "need"


def persona_name_max_chars() -> int:
    """The longest name the persona pattern admits."""
    return PERSONA_NAME_WORDS * TAG_WORD_CHARS + PERSONA_NAME_WORDS - 1


def persona_name_pattern() -> str:
    return tag_pattern(1, PERSONA_NAME_WORDS)


def _persona_name() -> Any:
    return constr(pattern=persona_name_pattern())


@dataclass(frozen=True)
class AgentSchemas:
    """The output models of one run's settings. Built once per process (`build_schemas` is
    cached on the settings) so the engine's schema cache and prefix caching see one class each."""

    planner: type[BaseModel]
    expert: type[BaseModel]
    arbiter: type[BaseModel]
    # One mining call of an Expert: at most `expert_call_tags` tags (the Expert's whole list is
    # gathered over `expert_rounds` calls); `expert` itself when a call may write all M.
    expert_call: type[BaseModel]


def max_candidates(settings: AgentSettings) -> int:
    """The most candidate tags an Arbiter can be shown: every Expert's full list."""
    return settings.k_personas * settings.m_tags


@lru_cache(maxsize=8)
def build_schemas(settings: AgentSettings) -> AgentSchemas:
    p, t = settings.persona, settings.tag
    persona = create_model(
        "PlannerPersona",
        __config__=_CLOSED,
        name=(_persona_name(), Field(alias=PERSONA_NAME_KEY)),
        description=(_text(p.description_max_chars), ...),
        evidence=(conlist(_text(p.evidence_max_chars), min_length=1, max_length=p.evidence_items), ...),
        signals=(conlist(_text(p.signal_max_chars), max_length=p.signal_items), ...),
    )
    planner = create_model(
        "PlannerOutput",
        __config__=_CLOSED,
        personas=(conlist(persona, min_length=1, max_length=settings.k_personas), ...),
    )
    expert_tag = create_model(
        "ExpertTag",
        __config__=_CLOSED,
        tag=(_tag(settings), ...),
        reason=(_text(t.reason_max_chars), ...),
        evidence=(_text(t.evidence_max_chars), ...),
    )
    expert = create_model(
        "ExpertOutput",
        __config__=_CLOSED,
        tags=(conlist(expert_tag, min_length=1, max_length=settings.m_tags), ...),
    )
    expert_call = expert
    if settings.call_tags < settings.m_tags:
        expert_call = create_model(
            "ExpertOutput",
            __config__=_CLOSED,
            tags=(conlist(expert_tag, min_length=1, max_length=settings.call_tags), ...),
        )
    # The Arbiter selects: it names a numbered candidate line instead of copying the tag, so it
    # cannot invent a tag and writes a few tokens per pick instead of the whole tag.
    arbiter_tag = create_model(
        "ArbiterPick",
        __config__=_CLOSED,
        pick=(int, Field(ge=1, le=max_candidates(settings))),
        score=(int, Field(ge=SCORE_MIN, le=SCORE_MAX)),
        reason=(_text(settings.arbiter_reason_max_chars), ...),
    )
    arbiter = create_model(
        "ArbiterOutput",
        __config__=_CLOSED,
        tags=(conlist(arbiter_tag, min_length=1, max_length=settings.n_tags), ...),
    )
    return AgentSchemas(planner=planner, expert=expert, arbiter=arbiter, expert_call=expert_call)


def user_cores(settings: AgentSettings, history_categories: Sequence[str]) -> tuple[str, ...]:
    """The cores a user's tags may name: with `tag.history_cores`, the run's cores among the
    categories its history's categories line names (all of them when it names none); else all."""
    cores = settings.tag.cores
    if not (settings.tag.history_cores and cores):
        return cores
    known = frozenset(cores)
    return tuple(c for c in history_categories if c in known) or cores


def within_cores(settings: AgentSettings, cores: Sequence[str]) -> AgentSchemas | None:
    """The run's schemas with tags naming one of `cores` (the run's own for all of them; None
    for none of the run's)."""
    allowed = frozenset(cores)
    if allowed == frozenset(settings.tag.cores):
        return build_schemas(settings)
    left = tuple(c for c in settings.tag.cores if c in allowed)
    return _narrowed(settings, left) if left else None


@lru_cache(maxsize=1024)
def _narrowed(settings: AgentSettings, cores: tuple[str, ...]) -> AgentSchemas:
    # Not through build_schemas' small cache, which holds the runs' own schemas.
    return build_schemas.__wrapped__(replace(settings, tag=replace(settings.tag, cores=cores)))


@dataclass(frozen=True)
class Persona:
    """One persona of a user, as the Global Planner described it."""

    name: str
    description: str
    evidence: tuple[str, ...] = ()
    signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tag:
    """One interest tag with its provenance. `persona` is the persona (or V1 route) it serves;
    `score` is set by the Arbiter only. A list of tags is ranked by position."""

    tag: str
    reason: str
    persona: str | None = None
    evidence: str = ""
    score: int | None = None


def personas_of(output: BaseModel) -> list[Persona]:
    """The personas of a parsed planner output, in the order given."""
    return [
        Persona(p["name"], p["description"], tuple(p["evidence"]), tuple(p["signals"]))
        for p in output.model_dump()["personas"]
    ]


def expert_tags(output: BaseModel, persona: str) -> list[Tag]:
    """The tags of a parsed Expert (or V1 route) output, attributed to the persona it served."""
    return [Tag(t["tag"], t["reason"], persona, t["evidence"]) for t in output.model_dump()["tags"]]


@dataclass(frozen=True)
class Pick:
    """One Arbiter choice: the 1-based number of a candidate line, its score and reason."""

    pick: int
    score: int
    reason: str


def arbiter_picks(output: BaseModel) -> list[Pick]:
    """The picks of a parsed Arbiter output, best first."""
    return [Pick(t["pick"], t["score"], t["reason"]) for t in output.model_dump()["tags"]]
