"""What each agent answers: pydantic models built from the settings (K personas, M tags per
Expert, N final tags, every string's length), whose JSON schema drives structured decoding and
which parse the answer, and the plain records the rest of the pipeline passes around.

Every string and list carries a maximum and no object admits extra keys, so the longest valid
answer is bounded and `sampling.*.max_tokens` is sized to it (a small model writing compact JSON
otherwise pads or rambles until max_tokens and leaves invalid JSON). The Arbiter's `score` is an integer
1..10 (10 = best): a bounded one- or two-token number, where a float's digits would be unbounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, conlist, constr, create_model

from recgpt.agents.settings import AgentSettings

SCORE_MIN, SCORE_MAX = 1, 10

# No extra keys: an open object would let the decoder add fields without bound.
_CLOSED = ConfigDict(extra="forbid")


def _text(max_chars: int) -> Any:
    return constr(min_length=1, max_length=max_chars)


@dataclass(frozen=True)
class AgentSchemas:
    """The output models of one run's settings. Built once per process (`build_schemas` is
    cached on the settings) so the engine's schema cache and prefix caching see one class each."""

    planner: type[BaseModel]
    expert: type[BaseModel]
    arbiter: type[BaseModel]


@lru_cache(maxsize=8)
def build_schemas(settings: AgentSettings) -> AgentSchemas:
    p, t = settings.persona, settings.tag
    persona = create_model(
        "PlannerPersona",
        __config__=_CLOSED,
        name=(_text(p.name_max_chars), ...),
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
        tag=(_text(t.max_chars), ...),
        reason=(_text(t.reason_max_chars), ...),
        evidence=(_text(t.evidence_max_chars), ...),
    )
    expert = create_model(
        "ExpertOutput",
        __config__=_CLOSED,
        tags=(conlist(expert_tag, min_length=1, max_length=settings.m_tags), ...),
    )
    arbiter_tag = create_model(
        "ArbiterTag",
        __config__=_CLOSED,
        tag=(_text(t.max_chars), ...),
        persona=(_text(p.name_max_chars), ...),
        score=(int, Field(ge=SCORE_MIN, le=SCORE_MAX)),
        reason=(_text(settings.arbiter_reason_max_chars), ...),
    )
    arbiter = create_model(
        "ArbiterOutput",
        __config__=_CLOSED,
        tags=(conlist(arbiter_tag, min_length=1, max_length=settings.n_tags), ...),
    )
    return AgentSchemas(planner=planner, expert=expert, arbiter=arbiter)


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


def arbiter_tags(output: BaseModel) -> list[Tag]:
    """The tags of a parsed Arbiter output, best first."""
    return [Tag(t["tag"], t["reason"], t["persona"], score=t["score"]) for t in output.model_dump()["tags"]]
