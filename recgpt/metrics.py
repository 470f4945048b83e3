"""Offline evaluation metrics of mined intents, one user at a time: pure functions over plain
values, so each definition is unit-tested on hand-made cases; the evaluate stage averages them.

Definitions (also in the README):
- a tag's category is the most common category among its `category_items` best recalled items;
- HR@K: the category of the user's first held-out interaction is among the categories of the
  user's K best-ranked tags (K = 30 as in the paper);
- Recall@K of a channel: the share of the user's held-out items among its K recalled items;
- exclusive recall: the share of the user's held-out items that tag recall retrieves in its K
  and the co-visitation channel does not;
- diversity: mean pairwise cosine distance of the user's tag embeddings;
- novelty: the share of the user's distinct tag categories absent from the history's categories;
- persona recovery: the share of planted personas sharing a category with a tag of the user;
- the heuristic baselines, which need no LLM: HR@K of the user's own most frequent history
  categories (`history`) and of the most popular categories before dt (`popular`), each given as
  many distinct categories as the variant's tags name for that user (and also exactly 1 and 3);
- 95% intervals: percentile bootstrap over users of a mean, and of the paired difference of two
  means on the same users (each replicate resamples users, both values of a user together).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def round_robin(lists: Sequence[Sequence[str]], k: int) -> list[str]:
    """The first k distinct items taking one from each list in turn (best tag first): a user's
    tag-recall list, so every tag contributes its best items before any tag its second best."""
    merged: list[str] = []
    seen: set[str] = set()
    depth = max((len(items) for items in lists), default=0)
    for position in range(depth):
        for items in lists:
            if position < len(items) and items[position] not in seen:
                seen.add(items[position])
                merged.append(items[position])
                if len(merged) == k:
                    return merged
    return merged


def tag_category(categories: Sequence[str | None], scores: Sequence[float] | None = None) -> str | None:
    """The most common category among a tag's recalled items (best first); a tie goes to the
    larger summed score, then to the category met first."""
    counts: Counter[str] = Counter()
    weight: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, category in enumerate(categories):
        if category is None:
            continue
        counts[category] += 1
        weight[category] = weight.get(category, 0.0) + (float(scores[i]) if scores is not None else 0.0)
        first.setdefault(category, i)
    if not counts:
        return None
    return max(counts, key=lambda c: (counts[c], weight[c], -first[c]))


def hit_at_k(next_category: str | None, ranked_tag_categories: Sequence[str | None], k: int = 30) -> float:
    """1.0 when the next interaction's category is among the categories of the k best tags."""
    if next_category is None:
        return 0.0
    return float(next_category in set(ranked_tag_categories[:k]))


def recall_at_k(heldout: Collection[str], recalled: Sequence[str], k: int = 30) -> float | None:
    """Share of the held-out items among the first k recalled; None without held-out items."""
    if not heldout:
        return None
    return len(set(heldout) & set(recalled[:k])) / len(set(heldout))


def exclusive_recall(
    heldout: Collection[str], channel: Sequence[str], other: Sequence[str], k: int = 30
) -> float | None:
    """Share of the held-out items that `channel` retrieves in its first k and `other` does not
    in its first k."""
    if not heldout:
        return None
    only = (set(heldout) & set(channel[:k])) - set(other[:k])
    return len(only) / len(set(heldout))


def diversity(vectors: np.ndarray) -> float | None:
    """Mean pairwise cosine distance (1 - cosine) of the rows; None for fewer than two."""
    n = len(vectors)
    if n < 2:
        return None
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    upper = sims[np.triu_indices(n, k=1)]
    return float(np.mean(1.0 - upper))


def novelty(tag_categories: Iterable[str | None], history_categories: Collection[str]) -> float | None:
    """Share of the distinct tag categories the history never touched; None without any."""
    found = {c for c in tag_categories if c is not None}
    if not found:
        return None
    return len(found - set(history_categories)) / len(found)


def persona_recovery(
    planted: Sequence[Collection[str]], tag_categories: Iterable[str | None]
) -> float | None:
    """Share of the planted personas (each a set of categories) matched by a tag's category."""
    if not planted:
        return None
    found = {c for c in tag_categories if c is not None}
    return sum(1 for categories in planted if found & set(categories)) / len(planted)


def top_categories(counts: Mapping[str, int], n: int) -> list[str]:
    """The n categories with the largest counts (ties: alphabetical)."""
    return [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def baseline_hits(
    next_category: str | None, history_counts: Mapping[str, int], popular: Sequence[str], matched: int
) -> dict[str, float | None]:
    """HR of the two LLM-free baselines for one user: the history's most frequent categories and
    the globally most popular ones (best first), given `matched` categories (as many as the
    variant named for the user) and 1 and 3. None without a held-out interaction."""
    out: dict[str, float | None] = {}
    for name, ranked in (("history", top_categories(history_counts, 3 + matched)), ("popular", popular)):
        for suffix, n in (("", matched), ("_top1", 1), ("_top3", 3)):
            out[f"hr_{name}{suffix}"] = (
                None if next_category is None else float(next_category in set(ranked[:n]))
            )
    return out


def bootstrap_mean(values: np.ndarray, replicates: int, seed: int) -> tuple[float, float] | None:
    """95% percentile interval of the mean of `values` (one per user; NaN = undefined for the
    user, left out) over `replicates` resamples of the users; None without two defined values."""
    x = values[~np.isnan(values)]
    if len(x) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(replicates)
    for r in range(replicates):
        means[r] = x[rng.integers(0, len(x), len(x))].mean()
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def bootstrap_difference(
    a: np.ndarray, b: np.ndarray, replicates: int, seed: int
) -> tuple[float, float, float, int] | None:
    """Mean of a - b over the users where both are defined, with its 95% paired-bootstrap
    interval (each replicate resamples users; a user's two values stay together): (difference,
    low, high, users); None with fewer than two such users."""
    both = ~np.isnan(a) & ~np.isnan(b)
    d = (a - b)[both]
    interval = bootstrap_mean(d, replicates, seed)
    if interval is None:
        return None
    return float(d.mean()), interval[0], interval[1], len(d)


def user_metrics(
    tags: Sequence[tuple[Sequence[str], Sequence[str | None], Sequence[float]]],
    heldout: Collection[str],
    next_category: str | None,
    history_categories: Collection[str],
    planted: Sequence[Collection[str]],
    covisit: Sequence[str],
    tag_vectors: np.ndarray | None = None,
    k: int = 30,
    category_items: int = 5,
    history_counts: Mapping[str, int] | None = None,
    popular: Sequence[str] = (),
) -> dict[str, float | list[str | None] | list[str] | None]:
    """Every per-user metric from the user's tags best first, each as (recalled items best
    first, their categories, their scores), and what the user did. A user without tags scores 0
    on HR, Recall and persona recovery (a failed mining is a miss), and None where a metric
    needs tags (diversity, novelty) or data the user lacks (no held-out items, no planted personas).
    The baselines' HR (`baseline_hits`) are given as many categories as the k best tags name."""
    categories = [tag_category(cats[:category_items], scores[:category_items]) for _, cats, scores in tags]
    recalled = round_robin([items for items, _, _ in tags], k)
    has_next = next_category is not None
    named = len({c for c in categories[:k] if c is not None})
    return {
        **baseline_hits(next_category, history_counts or {}, popular, named),
        "hr": hit_at_k(next_category, categories, k) if has_next else None,
        "recall_tags": recall_at_k(heldout, recalled, k),
        "recall_covisit": recall_at_k(heldout, covisit, k),
        "exclusive_recall": exclusive_recall(heldout, recalled, covisit, k),
        "diversity": diversity(tag_vectors) if tag_vectors is not None else None,
        "novelty": novelty(categories, history_categories),
        "persona_recovery": persona_recovery(planted, categories),
        "tag_categories": categories,
        "recalled": recalled,
    }


# The explanation figures (udfs.explain.explanation_metrics), per mode; `users` counts explanations.
EXPLANATION_DOCS = {
    "pass_rate": "share of attempted (user, item) pairs whose line passed every rule",
    "words": "mean words per written line",
    "diversity": "1 - mean ROUGE-L F between written lines of the same item for different users",
    "diversity_all": "the same over every line the model wrote, the rejected ones included",
    "distinct1": "distinct words over all words of the written lines",
    "distinct2": "distinct word pairs over all word pairs of the written lines",
    "tokens": (
        "LLM prompt + generated tokens per attempted line (a meta line counts its style guide; "
        "retries included)"
    ),
    "seconds": "engine seconds per attempted line (retries included)",
    "calls": "LLM calls per attempted line: 1 (2 for meta) when no retry was needed",
}


def metric_docs(k: int) -> dict[str, str]:
    """One-line definitions of the eval_metrics rows, shown in the report (the README has the
    long form)."""
    return {
        f"hr{k}": f"users whose first held-out interaction's category is a category of their top-{k} tags",
        f"recall_at_{k}_tags": (
            f"held-out items among the user's {k} tag-recall items (round robin over tags)"
        ),
        f"recall_at_{k}_covisit": f"held-out items among the user's {k} co-visitation items",
        "exclusive_recall": f"held-out items in the tag channel's {k} and not in co-visitation's {k}",
        "persona_recovery": "planted personas sharing a category with one of the user's tags (synthetic)",
        "diversity": "mean pairwise cosine distance of the user's tag embeddings",
        "novelty": "share of the user's tag categories absent from the history",
        f"hr{k}_history": (
            "baseline: the user's most frequent history categories, as many as the variant's tags name"
        ),
        f"hr{k}_popular": (
            "baseline: the most popular categories before dt, as many as the variant's tags name"
        ),
        "hr_history_top1": "baseline: the user's most frequent history category",
        "hr_history_top3": "baseline: the user's 3 most frequent history categories",
        "hr_popular_top1": "baseline: the most popular category before dt",
        "hr_popular_top3": "baseline: the 3 most popular categories before dt",
        "catalog_coverage_tags": "catalog items in at least one user's tag-recall list",
        "catalog_coverage_covisit": "catalog items in at least one user's co-visitation list",
        "failure_rate": "mined users that ended in mining_failures",
        "tokens_per_user": "LLM prompt + generated tokens per mined user (llm_calls)",
        "tagged_users": "users with final tags",
        "heldout_users": "users with an interaction in the held-out window",
        **{
            f"explain_{name}_{mode}": f"{mode} explanations: {doc}"
            for mode in ("meta", "single", "template")
            for name, doc in EXPLANATION_DOCS.items()
        },
    }


def mean_metrics(k: int) -> list[tuple[str, str]]:
    """The eval_metrics that are a variant's mean of a per-user score: (metric, the
    `user_metrics` key it averages), over the users for whom the score is defined."""
    return [
        (f"hr{k}", "hr"),
        (f"recall_at_{k}_tags", "recall_tags"),
        (f"recall_at_{k}_covisit", "recall_covisit"),
        ("exclusive_recall", "exclusive_recall"),
        ("persona_recovery", "persona_recovery"),
        ("diversity", "diversity"),
        ("novelty", "novelty"),
        (f"hr{k}_history", "hr_history"),
        (f"hr{k}_popular", "hr_popular"),
        ("hr_history_top1", "hr_history_top1"),
        ("hr_history_top3", "hr_history_top3"),
        ("hr_popular_top1", "hr_popular_top1"),
        ("hr_popular_top3", "hr_popular_top3"),
    ]


def variant_metrics(
    means: Mapping[str, Any],
    k: int,
    failed: int,
    tokens: int | None,
    tag_items: int,
    covisit_items: int,
    catalog_size: int,
) -> list[tuple[str, float | None, int]]:
    """One variant's eval_metrics as (metric, value, users it is over). `means` holds each mean
    metric's value (None without users) and its user count under `<metric>__n`, and the
    variant's evaluated `users` and `tagged` users. A mined user is tagged or `failed`: the
    failure rate and LLM `tokens` per user are over those. Catalog coverage: the distinct items
    in the tag channel's (`tag_items`) and the co-visitation channel's (`covisit_items`) lists
    as a share of the catalog."""
    users, tagged = int(means["users"]), int(means["tagged"])
    mined = tagged + failed
    values: list[tuple[str, float | None, int]] = [
        (name, means[name], means[f"{name}__n"]) for name, _ in mean_metrics(k)
    ]
    values += [
        ("catalog_coverage_tags", tag_items / max(catalog_size, 1), users),
        ("catalog_coverage_covisit", covisit_items / max(catalog_size, 1), users),
        ("failure_rate", failed / mined if mined else None, mined),
        ("tokens_per_user", tokens / mined if tokens is not None and mined else None, mined),
        ("tagged_users", tagged, users),
        ("heldout_users", means[f"recall_at_{k}_tags__n"], users),
    ]
    return values
