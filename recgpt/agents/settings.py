"""The agents' settings (`pipeline.agents` in conf/): how many personas and tags, how long each
field may be, the validation thresholds and the sampling of each agent, checked once on load.

Everything else in `recgpt.agents` takes an `AgentSettings`, never the raw config, so a bad value
fails the run at start with a message naming the key instead of deep inside an executor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recgpt.errors import ConfigError
from recgpt.llm.request import Sampling


@dataclass(frozen=True)
class TagLimits:
    """Bounds of one interest tag and of what an Expert says about it."""

    min_words: int
    max_words: int
    max_chars: int
    reason_max_chars: int
    evidence_max_chars: int
    # Catalog phrases of which a tag must name one (its core: "dark comedy", "dry pet food"),
    # lower-case words of letters; enforced while decoding. Empty: any words. Filled per run from
    # the catalog's category names (`tag.grounding`, udfs/mining.py), or set as a fixed list.
    cores: tuple[str, ...] = ()
    # With cores: the tag starts with its core ("comedy", "comedy classics"), no words before it.
    core_first: bool = False
    # With cores: each Expert's (and V1 route's) tags name the cores of its user's history, the
    # categories line its context opens with (all cores for a user whose line names none).
    history_cores: bool = False
    # With history_cores: once a user's rounds have spent its history's cores, a follow-up may
    # name any other catalog core (its history's categories come first, others after).
    beyond_history: bool = False


CORE_PATTERN = re.compile(r"[a-z]+( [a-z]+)*")


@dataclass(frozen=True)
class PersonaLimits:
    """Bounds of one persona of the Global Planner."""

    name_max_chars: int
    description_max_chars: int
    evidence_items: int
    evidence_max_chars: int
    signal_items: int
    signal_max_chars: int


@dataclass(frozen=True)
class ValidationSettings:
    near_duplicate_cosine: float
    brand_min_chars: int
    pii_min_digits: int
    echo_ngram_words: int
    bought_days: int
    # A tag whose best cosine with the catalog reference (the most popular items and each
    # category's mean) is below this names nothing the shop sells; None leaves the check out.
    catalog_min_cosine: float | None = None
    # Person first names (lower case) a tag or persona name may not carry, besides the bundled list.
    extra_first_names: tuple[str, ...] = ()
    # The run-wide rule on generic tags (recgpt/agents/generic.py): a tag naming no catalog
    # category given to more than this share of the run's users, and to more than
    # `generic_min_users` users, is dropped for all; None leaves the rule out.
    generic_max_share: float | None = None
    generic_min_users: int = 1
    # A user the rule leaves without a tag is mined once more with the run's generic tags banned
    # (`Miner.rescue`) before it fails with `only_generic_tags`.
    generic_rescue: bool = True


@dataclass(frozen=True)
class FallbackPersona:
    """The one persona a user is mined with when the Global Planner's answer is unusable."""

    name: str
    description: str


@dataclass(frozen=True)
class AgentSampling:
    planner: Sampling
    expert: Sampling  # also the V1 routes, whose output schema is the Expert's
    arbiter: Sampling


@dataclass(frozen=True)
class AgentSettings:
    prompt_version: str
    k_personas: int
    m_tags: int
    n_tags: int
    tag: TagLimits
    arbiter_reason_max_chars: int
    persona: PersonaLimits
    validation: ValidationSettings
    evidence_top_k: int
    evidence_min_cosine: float
    situation_max_items: int
    situation_max_chars: int
    sampling: AgentSampling
    routes: tuple[str, ...] = ()
    # Experts read the history too (costlier), or only the persona the planner distilled from it.
    expert_history: bool = False
    # When the Arbiter keeps fewer than N, the unpicked valid candidates (pool order) follow its
    # picks, unscored, up to N.
    arbiter_backfill: bool = True
    # Calls per Expert (and V1 route) at most: an answer with fewer than m_tags distinct tags is
    # asked again with the words it already wrote banned (recgpt/agents/mining.py, `_asked`).
    expert_rounds: int = 1
    # Tags one such call may write (None: m_tags). Fewer per call, more rounds: the same tokens
    # for a list the small model cannot fill with repeats.
    expert_call_tags: int | None = None
    fallback_persona: FallbackPersona = FallbackPersona(
        "all interests", "every interest the history shows, taken together"
    )

    @property
    def call_tags(self) -> int:
        """The most tags one Expert (or route) call may write."""
        return self.m_tags if self.expert_call_tags is None else self.expert_call_tags

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> AgentSettings:
        """Settings from the `pipeline.agents` mapping (an OmegaConf container made plain)."""
        try:
            tag, persona, check = cfg["tag"], cfg["persona"], cfg["validation"]
            sampling = cfg["sampling"]
            settings = cls(
                prompt_version=str(cfg["prompt_version"]),
                k_personas=int(cfg["k_personas"]),
                m_tags=int(cfg["m_tags"]),
                n_tags=int(cfg["n_tags"]),
                tag=TagLimits(
                    min_words=int(tag["min_words"]),
                    max_words=int(tag["max_words"]),
                    max_chars=int(tag["max_chars"]),
                    reason_max_chars=int(tag["reason_max_chars"]),
                    evidence_max_chars=int(tag["evidence_max_chars"]),
                    cores=tuple(str(e) for e in tag.get("cores") or ()),
                    core_first=bool(tag.get("core_first", False)),
                    history_cores=bool(tag.get("history_cores", False)),
                    beyond_history=bool(tag.get("beyond_history", False)),
                ),
                arbiter_reason_max_chars=int(cfg["arbiter_reason_max_chars"]),
                persona=PersonaLimits(
                    name_max_chars=int(persona["name_max_chars"]),
                    description_max_chars=int(persona["description_max_chars"]),
                    evidence_items=int(persona["evidence_items"]),
                    evidence_max_chars=int(persona["evidence_max_chars"]),
                    signal_items=int(persona["signal_items"]),
                    signal_max_chars=int(persona["signal_max_chars"]),
                ),
                validation=ValidationSettings(
                    near_duplicate_cosine=float(check["near_duplicate_cosine"]),
                    brand_min_chars=int(check["brand_min_chars"]),
                    pii_min_digits=int(check["pii_min_digits"]),
                    echo_ngram_words=int(check["echo_ngram_words"]),
                    bought_days=int(check["bought_days"]),
                    catalog_min_cosine=None
                    if check.get("catalog_min_cosine") is None
                    else float(check["catalog_min_cosine"]),
                    extra_first_names=tuple(
                        str(n).strip().lower() for n in check.get("extra_first_names") or ()
                    ),
                    generic_max_share=None
                    if check.get("generic_max_share") is None
                    else float(check["generic_max_share"]),
                    generic_min_users=int(check.get("generic_min_users", 1)),
                    generic_rescue=bool(check.get("generic_rescue", True)),
                ),
                evidence_top_k=int(cfg["evidence"]["top_k"]),
                evidence_min_cosine=float(cfg["evidence"]["min_cosine"]),
                situation_max_items=int(cfg["situation"]["max_items"]),
                situation_max_chars=int(cfg["situation"]["max_chars"]),
                sampling=AgentSampling(
                    planner=Sampling.from_config(sampling["planner"]),
                    expert=Sampling.from_config(sampling["expert"]),
                    arbiter=Sampling.from_config(sampling["arbiter"]),
                ),
                routes=tuple(str(r) for r in cfg.get("routes") or ()),
                expert_history=bool(cfg.get("expert_history", False)),
                arbiter_backfill=bool(cfg.get("arbiter_backfill", True)),
                expert_rounds=int(cfg.get("expert_rounds", 1)),
                expert_call_tags=None
                if cfg.get("expert_call_tags") is None
                else int(cfg["expert_call_tags"]),
                fallback_persona=FallbackPersona(
                    str(cfg["fallback_persona"]["name"]), str(cfg["fallback_persona"]["description"])
                ),
            )
        except KeyError as exc:
            raise ConfigError(
                f"pipeline.agents is missing {exc.args[0]!r} (see conf/pipeline/v2.yaml)"
            ) from None
        settings.check()
        return settings

    def check(self) -> None:
        counts = {
            "k_personas": self.k_personas,
            "m_tags": self.m_tags,
            "expert_rounds": self.expert_rounds,
            "expert_call_tags": self.call_tags,
            "n_tags": self.n_tags,
            "tag.min_words": self.tag.min_words,
            "persona.evidence_items": self.persona.evidence_items,
            "validation.echo_ngram_words": self.validation.echo_ngram_words,
            "evidence.top_k": self.evidence_top_k,
            "situation.max_items": self.situation_max_items,
        }
        for key, value in counts.items():
            if value < 1:
                raise ConfigError(f"pipeline.agents.{key} must be at least 1, not {value}")
        if self.call_tags > self.m_tags:
            raise ConfigError("pipeline.agents.expert_call_tags must be at most m_tags")
        if self.tag.max_words < self.tag.min_words:
            raise ConfigError("pipeline.agents.tag.max_words must be at least tag.min_words")
        # The schemas import these settings: imported here, not at the top.
        from recgpt.agents.schemas import TAG_WORD_CHARS, persona_name_max_chars, persona_name_pattern

        for core in self.tag.cores:
            words = core.split()
            if (
                not CORE_PATTERN.fullmatch(core)
                or len(words) > self.tag.max_words
                or max(map(len, words)) > TAG_WORD_CHARS
            ):
                raise ConfigError(
                    f"pipeline.agents.tag.cores: {core!r} is not 1-{self.tag.max_words} "
                    f"lower-case words of 1-{TAG_WORD_CHARS} letters"
                )
        if not 0 < self.validation.near_duplicate_cosine <= 1:
            raise ConfigError("pipeline.agents.validation.near_duplicate_cosine must be in (0, 1]")
        minimum = self.validation.catalog_min_cosine
        if minimum is not None and not -1 <= minimum <= 1:
            raise ConfigError("pipeline.agents.validation.catalog_min_cosine must be in [-1, 1] or null")
        share = self.validation.generic_max_share
        if share is not None and not 0 < share <= 1:
            raise ConfigError("pipeline.agents.validation.generic_max_share must be in (0, 1] or null")
        if self.validation.generic_min_users < 1:
            raise ConfigError("pipeline.agents.validation.generic_min_users must be at least 1")
        fallback = self.fallback_persona
        if not fallback.name.strip() or not fallback.description.strip():
            raise ConfigError("pipeline.agents.fallback_persona needs a name and a description")
        if self.persona.name_max_chars < persona_name_max_chars():
            raise ConfigError(
                f"pipeline.agents.persona.name_max_chars must be at least {persona_name_max_chars()}, "
                "the longest name the planner's schema admits"
            )
        if not re.fullmatch(persona_name_pattern(), fallback.name):
            raise ConfigError(
                "pipeline.agents.fallback_persona.name must be what a planner may write: "
                "1-3 lower-case words of letters"
            )
        if (
            len(fallback.name) > self.persona.name_max_chars
            or len(fallback.description) > self.persona.description_max_chars
        ):
            raise ConfigError("pipeline.agents.fallback_persona must fit the persona limits")
        if not -1 <= self.evidence_min_cosine <= 1:
            raise ConfigError("pipeline.agents.evidence.min_cosine must be in [-1, 1]")
        if not self.prompt_version:
            raise ConfigError("pipeline.agents.prompt_version must be set (it is recorded with every output)")
