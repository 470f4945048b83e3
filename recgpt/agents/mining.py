"""Intent mining for a batch of users, one agent stage at a time: every planner of the batch in
one engine call, then every Expert, then every Arbiter (V2); or every V1 route of every user in
one call (the V1 baseline). Batching by stage keeps the engine's batch full and lets the prefix
cache serve each agent's shared system message once. An Expert's (or route's) tag list is
gathered over up to `expert_rounds` calls of `expert_call_tags` tags, each later call banning the
words already written; each round is one more engine call for every list still short of M tags
that pass the rule checks.

V2 degrades instead of failing: an unusable plan leaves the user one general persona whose Expert
reads the whole history, and so does a plan whose personas' Experts gave no valid tag (a second
round of one call for those users); a failed Expert leaves the others' tags; an unusable Arbiter answer
leaves the validated pool in its order. Each such step is counted in `UserOutcome.fallbacks` as
`<fallback>:<cause>`; only a user left with no valid tag fails. A user whose every tag the
run-wide rule on generic tags drops (recgpt/agents/generic.py) is mined once more (`rescue`), with
those tags banned while decoding, before counting as a failure.

Pure orchestration over an `Engine`: prompts, parsing and validation come from the sibling
modules, embeddings from an injected function, so the control flow runs the same against the
real vLLM engine and against a scripted backend in unit tests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from pydantic import BaseModel

from recgpt.agents.evidence import ground
from recgpt.agents.generic import GENERIC_TAG, ONLY_GENERIC_TAGS, STEP, tag_key
from recgpt.agents.prompts import arbiter_prompt, expert_prompt, planner_prompt, route_prompt
from recgpt.agents.schemas import (
    AgentSchemas,
    Persona,
    Pick,
    Tag,
    arbiter_picks,
    expert_tags,
    max_candidates,
    personas_of,
    user_cores,
    within_cores,
)
from recgpt.agents.settings import AgentSettings
from recgpt.agents.text import words
from recgpt.agents.validate import (
    FILLER,
    Checked,
    Embed,
    Rejected,
    Rejection,
    ValidationContext,
    check_personas,
    check_tags,
    pool,
    tag_problem,
)
from recgpt.context import line_categories
from recgpt.llm.bans import Banner
from recgpt.llm.engine import Engine
from recgpt.llm.request import Request, Result, Sampling
from recgpt.untrusted import pii_shape

# Failure reasons of the pipeline itself (engine errors keep the engine's own reason).
NO_VALID_PERSONA = "no_valid_persona"
NO_VALID_TAG = "no_valid_tag"
NO_VALID_PICK = "no_valid_pick"
ALL_CALLS_FAILED = "all_calls_failed"
# Fallbacks of V2 (counted as "<fallback>:<cause>").
GENERAL_PERSONA = "general_persona"  # the plan was unusable: one general persona
EXPERT_DROPPED = "expert_dropped"  # one Expert failed: the others' tags count
POOL_ORDER = "pool_order"  # the Arbiter's answer was unusable: the validated pool in order
GENERIC_RESCUE = "generic_rescue"  # the run-wide rule left no tag: mined again, generic tags banned
# Of V2 and V1 alike: a tag whose reason held personal data is kept with the reason cut before it
# (recgpt/agents/validate.py: REASON_WITHHELD), counted as "reason_cut:pii".
REASON_CUT = "reason_cut"


@dataclass(frozen=True)
class UserInput:
    """Everything the agents read about one user; `embeds` holds one block per entity mark of a
    hybrid `history` (empty for a text history), `item_ids`/`item_vectors` the context's items
    and their embeddings (for grounding tags in evidence)."""

    user_id: str
    history: str
    embeds: tuple[np.ndarray, ...] = ()
    profile: Mapping[str, Any] = field(default_factory=dict)
    situation: Mapping[str, Any] = field(default_factory=dict)
    bought_titles: tuple[str, ...] = ()
    item_ids: tuple[str, ...] = ()
    item_vectors: np.ndarray | None = None


@dataclass(frozen=True)
class FinalTag:
    rank: int
    tag: Tag
    evidence_item_ids: tuple[str, ...]


@dataclass(frozen=True)
class Failure:
    step: str  # planner | expert | arbiter | route
    reason: str


# Rejected personas and tags kept per rule and user, as written (cut to EXAMPLE_CHARS), for the
# stage summary: what a rule rejects, not only how often.
EXAMPLES_PER_RULE = 2
EXAMPLE_CHARS = 60


@dataclass
class UserOutcome:
    user_id: str
    personas: list[Persona] = field(default_factory=list)
    tags: list[FinalTag] = field(default_factory=list)
    failure: Failure | None = None
    # Every LLM call made for the user, with its step, for the cost ledger.
    calls: list[tuple[str, Result]] = field(default_factory=list)
    # Reason code -> how many of the model's personas or tags validation rejected, and the first
    # few of them as written (`EXAMPLES_PER_RULE`; personal data as its shape, `pii_shape`:
    # the tag and reason with digits and email addresses masked).
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_examples: dict[str, list[str]] = field(default_factory=dict)
    # Tags the Experts (V2) or routes (V1) proposed, and how many of them repeated another one
    # of the same user exactly or nearly: the redundancy the V2 planner is meant to remove.
    proposed: int = 0
    duplicates: int = 0
    # "<fallback>:<cause>" -> how often mining degraded instead of failing the user (or, for
    # REASON_CUT, instead of rejecting a tag).
    fallbacks: Counter[str] = field(default_factory=Counter)
    # "<step>: <reason>" -> the user's LLM calls that gave no usable answer.
    failed_calls: Counter[str] = field(default_factory=Counter)

    def checked(self, checked: Checked[Tag]) -> Counter[str]:
        """Counts a tag check's rejections (`reject`) and its cut reasons; the rejection counts."""
        if checked.reasons_cut:
            self.fallbacks[f"{REASON_CUT}:{Rejection.PII.value}"] += checked.reasons_cut
        return self.reject(checked.rejected)

    def reject(self, rejected: Sequence[Rejected[Any]]) -> Counter[str]:
        """Counts `rejected` by reason and keeps a few of each as examples; the counts."""
        codes = Counter(r.reason.value for r in rejected)
        self.rejected.update(codes)
        for r in rejected:
            # A Tag or a Persona, cut before comparing: a long text is kept once.
            if r.reason is Rejection.PII:  # where the digits were: the tag or its reason
                said = (
                    (r.item.tag, r.item.reason)
                    if isinstance(r.item, Tag)
                    else (r.item.name, r.item.description)
                )
                text = pii_shape(" | ".join(said))[: 2 * EXAMPLE_CHARS]
            else:
                text = (r.item.tag if isinstance(r.item, Tag) else r.item.name)[:EXAMPLE_CHARS]
            kept = self.rejected_examples.setdefault(r.reason.value, [])
            if len(kept) < EXAMPLES_PER_RULE and text not in kept:
                kept.append(text)
        return codes


@dataclass(frozen=True)
class Ask:
    """One Expert (or V1 route) call: whose, the persona or route it serves, and the words its
    sampling bans (a follow-up round bans these and more)."""

    user: UserInput
    served: str
    request: Request
    banned: frozenset[str] = frozenset()


def distinct(tags: Sequence[Tag]) -> list[Tag]:
    """`tags` without the repeats of an earlier one (compared by their words)."""
    seen: set[str] = set()
    kept = []
    for t in tags:
        said = " ".join(words(t.tag))
        if said not in seen:
            seen.add(said)
            kept.append(t)
    return kept


def written(tags: Sequence[Tag]) -> frozenset[str]:
    """The words of `tags` a follow-up answer may not write again: every word but filler and
    each tag's last (its head noun, which a different tag may share); a one-word tag's word too
    (with `tag.min_words` 1, "action" would otherwise come back every round)."""
    out: set[str] = set()
    for t in tags:
        tokens = words(t.tag)
        out.update(w for w in (tokens if len(tokens) == 1 else tokens[:-1]) if w not in FILLER)
    return frozenset(out)


class Miner:
    """Runs one pipeline (`v2` or `v1_baseline`) over batches of users."""

    def __init__(
        self,
        engine: Engine,
        settings: AgentSettings,
        schemas: AgentSchemas,
        validation: ValidationContext,
        embed: Embed | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.schemas = schemas
        self.validation = validation
        self.embed = embed
        self._banner: Banner | None = None  # built on the first banned word
        self._cores = frozenset(settings.tag.cores)
        self._core_phrase_words = frozenset(w for e in settings.tag.cores for w in e.split())

    # -- V2: planner -> experts -> arbiter ---------------------------------------------------

    def mine_v2(self, users: Sequence[UserInput]) -> list[UserOutcome]:
        s = self.settings
        outcomes = {u.user_id: UserOutcome(u.user_id) for u in users}

        planned = self._call(
            "planner",
            [
                (
                    u,
                    planner_prompt(s, u.history, u.profile, u.situation).request(
                        f"{u.user_id}:planner", self.schemas.planner, s.sampling.planner, u.user_id, u.embeds
                    ),
                )
                for u in users
            ],
            outcomes,
        )
        personas: dict[str, list[Persona]] = {}
        fallback = Persona(s.fallback_persona.name, s.fallback_persona.description)
        for user, result in planned:
            out = outcomes[user.user_id]
            kept: list[Persona] = []
            cause = result.error or "no_output"
            if result.parsed is not None:
                plan = check_personas(personas_of(result.parsed), self.validation)
                out.reject(plan.rejected)
                kept, cause = plan.kept, NO_VALID_PERSONA
            if not kept:
                out.fallbacks[f"{GENERAL_PERSONA}:{_code(cause)}"] += 1
                kept = [fallback]
            out.personas = kept
            personas[user.user_id] = kept

        candidates: dict[str, list[Tag]] = {}
        retry: list[UserInput] = []
        kept_tags = self._experts(users, personas, fallback, outcomes, "expert")
        for user in users:
            if kept_tags[user.user_id]:
                candidates[user.user_id] = kept_tags[user.user_id]
            elif outcomes[user.user_id].personas != [fallback]:
                retry.append(user)
        # The planner's personas gave no usable tag: the user gets a second chance with the
        # general persona, whose Expert reads the whole history, before counting as a failure.
        for user in retry:
            out = outcomes[user.user_id]
            cause = out.failure.reason if out.failure else NO_VALID_TAG
            out.fallbacks[f"{GENERAL_PERSONA}:{_code(cause)}"] += 1
            out.failure = None
            out.personas = [fallback]
            personas[user.user_id] = [fallback]
        for user_id, tags in self._experts(retry, personas, fallback, outcomes, "expert_general").items():
            if tags:
                candidates[user_id] = tags

        judged = self._call(
            "arbiter",
            [
                (
                    u,
                    arbiter_prompt(s, u.history, u.profile, u.situation, candidates[u.user_id]).request(
                        f"{u.user_id}:arbiter", self.schemas.arbiter, s.sampling.arbiter, u.user_id, u.embeds
                    ),
                )
                for u in users
                if u.user_id in candidates
            ],
            outcomes,
        )
        for user, result in judged:
            out = outcomes[user.user_id]
            pooled = candidates[user.user_id]
            final: list[Tag] = []
            cause = result.error or "no_output"
            if result.parsed is not None:
                picked = self._selection(arbiter_picks(result.parsed), pooled, out)
                checked = check_tags(picked, self._for(user, out.personas), self.embed)
                out.checked(checked)
                final, cause = checked.kept[: s.n_tags], NO_VALID_PICK
            if not final:
                # The Arbiter gave nothing usable: the validated pool, each persona's best first.
                out.fallbacks[f"{POOL_ORDER}:{_code(cause)}"] += 1
                final = [replace(t, score=None) for t in pooled[: s.n_tags]]
            elif s.arbiter_backfill and len(final) < s.n_tags:
                # Its picks first; the rest of the (already validated) pool after them, unscored.
                chosen = {t.tag for t in final}
                rest = [t for t in pooled if t.tag not in chosen]
                final += [replace(t, score=None) for t in rest[: s.n_tags - len(final)]]
            out.tags = self._ground(user, final)
        return [outcomes[u.user_id] for u in users]

    def _experts(
        self,
        users: Sequence[UserInput],
        personas: Mapping[str, list[Persona]],
        fallback: Persona,
        outcomes: dict[str, UserOutcome],
        round_name: str,
        avoid: frozenset[str] = frozenset(),
        step: str = "expert",
    ) -> dict[str, list[Tag]]:
        """One Expert call per persona of each user, all in one engine call (request keys
        `<user>:<round_name>:<persona index>`), and the follow-up rounds of `_asked`; by user id
        the pooled tags that pass validation (empty, with `failure` set on the outcome, when none
        does). `avoid`: words and phrases every call is decoded without; `step`: the calls' step in
        the ledger."""
        s = self.settings
        asks: dict[str, Ask] = {}
        general = frozenset(w for w in words(fallback.name) if w not in FILLER)
        for user in users:
            for i, persona in enumerate(personas.get(user.user_id, [])):
                # The general persona carries no evidence of its own: its Expert reads the history.
                reads = replace(s, expert_history=True) if persona == fallback else s
                prompt = expert_prompt(reads, user.history, persona, user.situation)
                embeds = user.embeds if prompt.history_message is not None else ()
                key = f"{user.user_id}:{round_name}:{i}"
                # The general persona's Expert may not write that persona's name: the small model
                # otherwise answers "all interests" five times, each rejected as the persona
                # restated. The description's words stay allowed: with "history" and "interest"
                # banned too, its reasons ran into digit runs ("1.1.1.1...").
                banned = (general if persona == fallback else frozenset()) | avoid
                schema, sampling = self._user_schema(user), self._banned(banned)
                request = prompt.request(key, schema, sampling, user.user_id, embeds)
                asks[key] = Ask(user, persona.name, request, banned)
        answered = self._asked(step, asks, outcomes)
        kept: dict[str, list[Tag]] = {}
        for user in users:
            out = outcomes[user.user_id]
            lists, failed = answered.get(user.user_id, ([], []))
            kept[user.user_id] = []
            if not lists:
                out.failure = Failure("expert", failed[0] if failed else ALL_CALLS_FAILED)
                continue
            out.fallbacks.update(f"{EXPERT_DROPPED}:{_code(e)}" for e in failed)
            checked = self._pooled(lists, user, out, out.personas)
            if not checked.kept:
                out.failure = Failure("expert", NO_VALID_TAG)
                continue
            # The Arbiter's schema numbers at most every Expert's full list.
            kept[user.user_id] = checked.kept[: max_candidates(s)]
        return kept

    def _asked(
        self, step: str, asks: Mapping[str, Ask], outcomes: dict[str, UserOutcome]
    ) -> dict[str, tuple[list[list[Tag]], list[str]]]:
        """By user id: the tags of each of the user's asks that gave an answer (repeats within
        an answer dropped and counted as duplicates), and the errors of those that gave none.

        With `expert_rounds` > 1, an answer with fewer than `m_tags` distinct tags that pass the
        rule checks (`tag_problem`: all but the embedding checks, which run on the pool) is asked again
        (step `<step>_more`, request key `<key>:more<round>`) with the words of its tags so far
        banned but each tag's last one (the head noun: "comedy films" then "action films"): the
        small model otherwise writes its first tag five times over, and greedy decoding would only
        repeat that answer. With catalog cores, a core an earlier tag was nothing but is banned
        too, and with `tag.core_first` the follow-up's schema leaves out every core the earlier
        tags opened with (`_narrowed`; no follow-up once all are used; with `tag.history_cores`
        and `tag.beyond_history`, once the history's are used, the catalog's others). A
        follow-up's tags come after the first answer's; one that fails costs nothing but its
        ledger row."""
        s = self.settings
        proposed: dict[str, list[Tag]] = {}
        errors: dict[str, str] = {}
        for key, result in self._answers(step, asks, outcomes):
            if result.parsed is None:
                errors[key] = result.error or "no_output"
            else:
                proposed[key] = expert_tags(result.parsed, asks[key].served)
        users = {ask.user.user_id: ask.user for ask in asks.values()}
        rules = {uid: self._for(u, outcomes[uid].personas) for uid, u in users.items()}

        passes: dict[tuple[str, str], bool] = {}  # (user id, tag): checked once over the rounds

        def usable(key: str) -> int:
            uid, tags = asks[key].user.user_id, distinct(proposed[key])
            for t in tags:
                if (uid, t.tag) not in passes:
                    passes[uid, t.tag] = tag_problem(t, rules[uid]) is None
            return sum(passes[uid, t.tag] for t in tags)

        for number in range(2, s.expert_rounds + 1):
            again = {}
            for key, tags in proposed.items():
                if usable(key) >= s.m_tags:
                    continue
                ask, spent = asks[key], self._spent(tags)
                narrowed = s.tag.core_first and bool(self._cores)
                schema = self._narrowed(self._user_cores(ask.user), spent) if narrowed else ask.request.schema
                if schema is None and narrowed and s.tag.history_cores and s.tag.beyond_history:
                    schema = self._narrowed(s.tag.cores, spent)  # the history's cores are spent
                if schema is None:  # every core is spent
                    continue
                sampling = self._banned(ask.banned | written(tags), spent)
                request = replace(ask.request, key=f"{key}:more{number}", sampling=sampling, schema=schema)
                again[key] = replace(ask, request=request)
            for key, result in self._answers(f"{step}_more", again, outcomes):
                if result.parsed is not None:
                    proposed[key] += expert_tags(result.parsed, asks[key].served)
        by_user: dict[str, tuple[list[list[Tag]], list[str]]] = {}
        for key, ask in asks.items():
            lists, failed = by_user.setdefault(ask.user.user_id, ([], []))
            if key in errors:
                failed.append(errors[key])
                continue
            tags = distinct(proposed[key])
            repeats = len(proposed[key]) - len(tags)
            out = outcomes[ask.user.user_id]
            out.proposed += repeats
            out.duplicates += repeats
            if repeats:  # no zero counts in the rejections written
                out.rejected["duplicate"] += repeats
            lists.append(tags)
        return by_user

    def _answers(
        self, step: str, asks: Mapping[str, Ask], outcomes: dict[str, UserOutcome]
    ) -> list[tuple[str, Result]]:
        results = self._call(step, [(ask.user, ask.request) for ask in asks.values()], outcomes)
        return [(key, result) for key, (_, result) in zip(asks, results, strict=True)]

    def _spent(self, tags: Sequence[Tag]) -> frozenset[str]:
        """The catalog cores earlier tags used up: a tag that is nothing but a core ("drama");
        with `tag.core_first`, the core a tag starts with ("drama classics")."""
        spent = set()
        for t in tags:
            said = " ".join(words(t.tag))
            if said in self._cores:
                spent.add(said)
            elif self.settings.tag.core_first:
                opening = max((c for c in self._cores if said.startswith(f"{c} ")), key=len, default=None)
                if opening:
                    spent.add(opening)
        return frozenset(spent)

    def _user_cores(self, user: UserInput) -> tuple[str, ...]:
        """The cores the user's tags may name (`user_cores`, from its history's categories line)."""
        return user_cores(self.settings, line_categories(user.history))

    def _user_schema(self, user: UserInput) -> type[BaseModel]:
        """The schema of the user's first Expert or route call."""
        schema = self._schema(self._user_cores(user))
        assert schema is not None  # a user's cores are never none while the run has some
        return schema

    def _schema(self, cores: Sequence[str]) -> type[BaseModel] | None:
        """The Expert call's schema with tags naming one of `cores` (the run's own for all of
        them; None for none)."""
        if frozenset(cores) == self._cores:
            return self.schemas.expert_call
        schemas = within_cores(self.settings, cores)
        return schemas.expert_call if schemas else None

    def _narrowed(self, cores: Sequence[str], spent: frozenset[str]) -> type[BaseModel] | None:
        """The Expert call's schema over `cores` less the `spent` ones (None when none is left):
        with `tag.core_first` a follow-up round names another category. A ban alone does not
        hold: the model spells a banned word in other tokens ("dr" "ama")."""
        return self._schema([c for c in cores if c not in spent])

    def _banned(self, banned: frozenset[str], spent: frozenset[str] = frozenset()) -> Sampling:
        """The Expert's sampling with `banned` words kept out of the answer (`Banner`), but never
        a word of a catalog core (`tag.cores`): after "dry pet food" the next tag may still
        name "pet food" or "pet beds". `spent`: cores an earlier tag was nothing but ("drama"),
        banned whole: a grounded one-word tag otherwise comes back every round."""
        banned = (banned - self._core_phrase_words) | spent
        if not banned:
            return self.settings.sampling.expert
        if self._banner is None:
            self._banner = Banner(self.engine.renderer.tokenizer)
        return self._banner(sorted(banned)).apply(self.settings.sampling.expert)

    def _selection(self, picks: list[Pick], candidates: list[Tag], out: UserOutcome) -> list[Tag]:
        """The candidates the Arbiter picked, in its order, with its score and reason; a number
        outside the list is rejected (`not_a_candidate`), a repeated one once (`duplicate`)."""
        chosen, seen = [], set()
        for pick in picks:
            if not 1 <= pick.pick <= len(candidates):
                out.rejected["not_a_candidate"] += 1
                continue
            if pick.pick in seen:
                out.rejected["duplicate"] += 1
                continue
            seen.add(pick.pick)
            candidate = candidates[pick.pick - 1]
            chosen.append(replace(candidate, score=pick.score, reason=pick.reason or candidate.reason))
        return chosen

    # -- V1 baseline: independent routes over the full V1 text ---------------------------------

    def mine_v1(
        self, users: Sequence[UserInput], avoid: frozenset[str] = frozenset(), step: str = "route"
    ) -> list[UserOutcome]:
        """Every route of every user (request keys `<user>:<step>:<route>`), each decoded without
        the words and phrases of `avoid`; the routes' valid tags merged round-robin."""
        s = self.settings
        outcomes = {u.user_id: UserOutcome(u.user_id) for u in users}
        sampling = self._banned(avoid)
        asks = {
            f"{u.user_id}:{step}:{route}": Ask(
                u,
                route,
                route_prompt(s, route, u.history, u.situation).request(
                    f"{u.user_id}:{step}:{route}",
                    self._user_schema(u),
                    sampling,
                    u.user_id,
                    u.embeds,
                ),
                avoid,
            )
            for u in users
            for route in s.routes
        }
        answered = self._asked(step, asks, outcomes)
        for user in users:
            out = outcomes[user.user_id]
            lists, failed = answered.get(user.user_id, ([], []))
            if not lists:
                out.failure = Failure("route", failed[0] if failed else ALL_CALLS_FAILED)
                continue
            # The routes' tags merged round-robin: no arbiter ranks them in V1.
            checked = self._pooled(lists, user, out)
            if not checked.kept:
                out.failure = Failure("route", NO_VALID_TAG)
                continue
            out.tags = self._ground(user, checked.kept)
        return [outcomes[u.user_id] for u in users]

    # -- the rescue of users the run-wide rule on generic tags left without a tag ----------------

    def rescue(self, pipeline: str, users: Sequence[UserInput], avoid: Sequence[str]) -> list[UserOutcome]:
        """Users whose every tag the run-wide rule dropped as generic, mined once more with the
        run's generic tags (`avoid`) banned while decoding: V2 with the general persona alone
        (its Expert reads the whole history, step `expert_rescue`; the validated pool in order,
        no Arbiter), V1 with its routes (step `route_rescue`). A tag that still comes out as one
        of `avoid` is rejected (`generic_tag`); a user left without a tag fails again with
        `only_generic_tags`. Every user counts `generic_rescue:only_generic_tags`."""
        banned = frozenset(avoid)
        if pipeline == "v1_baseline":
            outcomes = self.mine_v1(users, banned, "route_rescue")
        elif pipeline == "v2":
            s = self.settings
            general = Persona(s.fallback_persona.name, s.fallback_persona.description)
            by_id = {u.user_id: UserOutcome(u.user_id, personas=[general]) for u in users}
            personas = {u.user_id: [general] for u in users}
            kept = self._experts(users, personas, general, by_id, "expert_rescue", banned, "expert_rescue")
            for user in users:
                by_id[user.user_id].tags = self._ground(
                    user, [replace(t, score=None) for t in kept[user.user_id][: s.n_tags]]
                )
            outcomes = [by_id[u.user_id] for u in users]
        else:
            raise ValueError(f"unknown pipeline {pipeline!r}")
        generic = {tag_key(t) for t in avoid}
        for out in outcomes:
            out.fallbacks[f"{GENERIC_RESCUE}:{ONLY_GENERIC_TAGS}"] += 1
            fresh = [t for t in out.tags if tag_key(t.tag.tag) not in generic]
            if len(fresh) < len(out.tags):
                out.rejected[GENERIC_TAG] += len(out.tags) - len(fresh)
            out.tags = [replace(t, rank=i + 1) for i, t in enumerate(fresh)]
            out.failure = None if out.tags else Failure(STEP, ONLY_GENERIC_TAGS)
        return outcomes

    # -- shared ----------------------------------------------------------------------------------

    def _call(
        self, step: str, calls: list[tuple[UserInput, Request]], outcomes: dict[str, UserOutcome]
    ) -> list[tuple[UserInput, Result]]:
        if not calls:
            return []
        results = self.engine.generate([request for _, request in calls])
        for (user, _), result in zip(calls, results, strict=True):
            out = outcomes[user.user_id]
            out.calls.append((step, result))
            if result.parsed is None:
                out.failed_calls[f"{step}: {_code(result.error or 'no_output')}"] += 1
        return [(user, result) for (user, _), result in zip(calls, results, strict=True)]

    def _pooled(
        self, lists: list[list[Tag]], user: UserInput, out: UserOutcome, personas: Sequence[Persona] = ()
    ) -> Checked[Tag]:
        checked = check_tags(pool(lists), self._for(user, personas), self.embed)
        codes = out.checked(checked)
        out.proposed += sum(len(tags) for tags in lists)
        out.duplicates += codes["duplicate"] + codes["near_duplicate"]
        return checked

    def _for(self, user: UserInput, personas: Sequence[Persona] = ()) -> ValidationContext:
        return self.validation.for_user(user.bought_titles, personas)

    def _ground(self, user: UserInput, tags: list[Tag]) -> list[FinalTag]:
        evidence: list[list[str]] = [[] for _ in tags]
        if self.embed is not None and user.item_ids and user.item_vectors is not None:
            evidence = ground(
                self.embed([t.tag for t in tags]),
                list(user.item_ids),
                user.item_vectors,
                self.settings.evidence_top_k,
                self.settings.evidence_min_cosine,
            )
        return [FinalTag(i + 1, t, tuple(e)) for i, (t, e) in enumerate(zip(tags, evidence, strict=True))]


def _code(reason: str) -> str:
    """The code of a failure reason: engine errors read "invalid_output: <detail>"."""
    return reason.split(":", 1)[0].strip() or "no_output"


def mine(
    miner: Miner, pipeline: str, users: Sequence[UserInput], rescue: Sequence[str] = ()
) -> list[UserOutcome]:
    """The pipeline's outcome for each user; with `rescue` (the run's generic tags), the users'
    second chance instead (`Miner.rescue`)."""
    if rescue:
        return miner.rescue(pipeline, users, rescue)
    runs: dict[str, Callable[[Sequence[UserInput]], list[UserOutcome]]] = {
        "v2": miner.mine_v2,
        "v1_baseline": miner.mine_v1,
    }
    if pipeline not in runs:
        raise ValueError(f"unknown pipeline {pipeline!r}; one of {sorted(runs)}")
    return runs[pipeline](users)
