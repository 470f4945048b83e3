"""Words a generation may not write, as the engine bans them: the forms of a word the tokenizer
writes as one token get a logit bias of -100 (never sampled), the forms it splits are vLLM's
bad words (the last token of the sequence is banned once the rest is written)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from recgpt.llm.request import Sampling

BAN = -100.0  # the lowest bias OpenAI's API takes: the token is never sampled


@dataclass(frozen=True)
class WordBans:
    logit_bias: tuple[tuple[int, float], ...] = ()
    bad_words: tuple[str, ...] = ()

    def apply(self, sampling: Sampling) -> Sampling:
        return replace(sampling, logit_bias=self.logit_bias, bad_words=self.bad_words)

    def __bool__(self) -> bool:
        return bool(self.logit_bias or self.bad_words)


def word_bans(tokenizer: Any, word: str) -> tuple[frozenset[int], tuple[str, ...]]:
    """(the ids of the forms of `word` the tokenizer writes as one token, the forms it splits).
    The forms: lower-case or capitalised, with or without a leading space (a JSON string's first
    word has none); a phrase also with hyphens for its spaces."""
    single: set[int] = set()
    split: list[str] = []
    spellings = {word, word.replace(" ", "-")}  # "eco friendly" is also written "eco-friendly"
    for form in sorted({f for w in spellings for f in (w, w.capitalize(), f" {w}", f" {w.capitalize()}")}):
        ids = tokenizer.encode(form, add_special_tokens=False)
        if len(ids) == 1:
            single.add(ids[0])
        else:
            split.append(form)
    return frozenset(single), tuple(split)


class Banner:
    """`WordBans` of a set of words for one tokenizer, each word's forms encoded once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._forms: dict[str, tuple[frozenset[int], tuple[str, ...]]] = {}

    def __call__(self, banned: Iterable[str]) -> WordBans:
        tokens: set[int] = set()
        sequences: set[str] = set()
        for word in banned:
            if word not in self._forms:
                self._forms[word] = word_bans(self.tokenizer, word)
            single, split = self._forms[word]
            tokens |= single
            sequences.update(split)
        return WordBans(tuple((t, BAN) for t in sorted(tokens)), tuple(sorted(sequences)))
