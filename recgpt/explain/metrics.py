"""Quality figures of a run's explanations per mode, as the paper defines them where it does:

- diversity: 1 - mean ROUGE-L F between the explanations of the same item for different users
  (pairs within each item explained for at least two users; `max_per_item` users per item, the
  first by user id, bound the pairs);
- distinct-n: distinct word n-grams over all n-grams of the mode's explanations;
- words: mean words per explanation; pass rate: written over attempted (written + failed).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence

from recgpt.agents.text import words
from recgpt.explain.rules import rouge_l


def diversity(rows: Iterable[tuple[str, str, str]], max_per_item: int = 20) -> tuple[float | None, int]:
    """(1 - mean pairwise ROUGE-L F, pairs) over (item_id, user_id, text) rows; (None, 0) when
    no item was explained for two users."""
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for item, user, text in rows:
        by_item[item].setdefault(user, text)
    scores = []
    for texts in by_item.values():
        chosen = [texts[u] for u in sorted(texts)[:max_per_item]]
        scores += [rouge_l(a, b) for a, b in itertools.combinations(chosen, 2)]
    if not scores:
        return None, 0
    return 1.0 - sum(scores) / len(scores), len(scores)


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    grams = [tuple(t[i : i + n]) for t in (words(x) for x in texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def mean_words(texts: Sequence[str]) -> float | None:
    return sum(len(words(t)) for t in texts) / len(texts) if texts else None
