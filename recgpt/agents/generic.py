"""The cross-user rule on generic tags: a tag the run gave to more than a configured share of its
users says nothing about any one of them ("safety net" to 26 of 64 users, mostly recalling the
most popular genre), unless it names a catalog category, which many users may share. The rule
runs once the whole run's tags are known (`udfs.generic_tags.drop_generic`): such a tag is
dropped for every user, counted as its own rejection (`generic_tag`), unless it opens with a
category's name: then it is cut to that name ("running shoes ireland" -> "running shoes"), the
category the model named for the user without the padding it gave many. A user left without a tag
is mined once more with the run's generic tags banned (`Miner.rescue`, unless
`validation.generic_rescue` is off) and fails with `only_generic_tags` when that gives no other.

Tags compare by their folded words (plural "s" dropped), so "safety nets" counts with "safety net".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from recgpt.agents.settings import AgentSettings
from recgpt.agents.text import words
from recgpt.agents.validate import fold_words, singular_forms

GENERIC_TAG = "generic_tag"  # the rejection code counted per dropped tag
ONLY_GENERIC_TAGS = "only_generic_tags"  # the failure reason of a user left without a tag
STEP = "generic"  # the failure step: the run-wide check after every Arbiter (or route)


@dataclass(frozen=True)
class GenericRule:
    """A tag is generic when more than `max_share` of the run's users and more than `min_users`
    users got it (the floor keeps a small run from dropping a tag two users share)."""

    max_share: float
    min_users: int

    @classmethod
    def of(cls, settings: AgentSettings) -> GenericRule | None:
        """The rule the validation settings ask for, None when it is off."""
        check = settings.validation
        if check.generic_max_share is None:
            return None
        return cls(check.generic_max_share, check.generic_min_users)

    def limit(self, users: int) -> int:
        """The most users a non-category tag may be given in a run of `users` users."""
        return max(math.floor(self.max_share * users), self.min_users)


def tag_key(tag: str) -> str:
    """What tags are counted by: their words, lower case, plural "s" dropped."""
    return " ".join(fold_words(words(tag)))


def category_words(categories: Iterable[str | None]) -> list[frozenset[str]]:
    """The word set of each category name or path ("Movies > Action | Sci-Fi"), each word also in
    its folded form."""
    found = set()
    for text in categories:
        if text:
            tokens = words(text)
            found.add(frozenset(tokens) | frozenset(fold_words(tokens)))
    return list(found)


def names_category(tag: str, categories: Iterable[frozenset[str]]) -> bool:
    """Whether every word of the tag (or its singular) belongs to one category's name or path:
    "action movies" does for "Movies > Action | Sci-Fi", "fantasy ireland" does not."""
    tokens = words(tag)
    if not tokens:
        return False
    return any(all(any(f in known for f in singular_forms(w)) for w in tokens) for known in categories)


def category_prefix(tag: str, categories: Iterable[frozenset[str]]) -> str | None:
    """The longest run of the tag's leading words, shorter than the tag, that names a category
    (`names_category`): "running shoes" of "running shoes ireland"; None when none does."""
    tokens = words(tag)
    known = list(categories)
    for n in range(len(tokens) - 1, 0, -1):
        head = " ".join(tokens[:n])
        if names_category(head, known):
            return head
    return None
