"""A user's behaviour history as LLM context, three ways: the full text (every kept behaviour with
its full title: the uncompressed V1 baseline), V1 hierarchical compression (time buckets of
`time (behaviours) | core titles`), and the hybrid form (the same buckets with every item as ONE
entity slot that refers to its embedding; times, behaviours and queries stay text). Both compressed
forms open with the same line naming the categories of the history's items, most items first: an
entity slot does not say which category its item is in, and a tag should name what a shop sells.
"""

from __future__ import annotations

import datetime as _dt
import functools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from recgpt.llm.request import EMBED_MARK, strip_marks
from recgpt.rundate import RunDate

# Verbs that read well in a history line, per behaviour type.
VERBS = {
    "purchase": "bought",
    "cart": "carted",
    "fav": "saved",
    "review": "reviewed",
    "view": "viewed",
    "click": "clicked",
    "search": "searched",
}
# A search query in a bucket line is cut to this many characters (queries are untrusted and
# unbounded; the gist is at the start).
QUERY_CHARS = 80
# A category name in the categories line is cut to this many characters (catalog text is untrusted).
CATEGORY_CHARS = 40
# How the categories line opens a context.
CATEGORIES_PREFIX = "categories: "
# The categories line may take at most this share of the token budget, or it is left out.
CATEGORY_SHARE = 4
# Order inside a bucket's behaviour summary: strongest signal first.
STRENGTH = ("purchase", "cart", "fav", "review", "search", "view", "click")


@dataclass(frozen=True)
class Event:
    ts: _dt.datetime
    behavior: str
    item_id: str | None = None
    title: str | None = None
    category: str | None = None
    query: str | None = None


@dataclass
class Bucket:
    label: str
    kinds: Counter[str] = field(default_factory=Counter)
    # (item_id or None for queries, text) in first-seen order, each once.
    entries: list[tuple[str | None, str]] = field(default_factory=list)


# Titles recur across users (popular items): both text helpers are pure and cached per process.
@functools.lru_cache(maxsize=262_144)
def clean_text(text: str) -> str:
    """Untrusted title or query text as one safe line: no newlines, no embedding marks, no
    delimiter characters the prompt uses, collapsed spaces."""
    text = strip_marks(text)
    text = re.sub(r"[\r\n\t|;]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


_BRACKETS = re.compile(r"[\(\[\{【（][^\)\]\}】）]*[\)\]\}】）]")
_MODEL_NO = re.compile(r"\b(?=[A-Za-z\-]*\d)[A-Za-z0-9\-]{2,}\b")
_LETTER = re.compile(r"[^\W\d_]")


@functools.lru_cache(maxsize=262_144)
def core_title(title: str, max_words: int = 6) -> str:
    """An item's core title: bracketed asides and model numbers removed, first `max_words` words.
    (V1's "item -> core attributes" without an LLM: titles lead with what the item is.)"""
    text = clean_text(title)
    core = _BRACKETS.sub(" ", text)
    core = _MODEL_NO.sub(" ", core)
    words = [w for w in re.split(r"[\s,/]+", core) if _LETTER.search(w)]
    return " ".join(words[:max_words]) or " ".join(text.split()[:max_words])


@functools.lru_cache(maxsize=65_536)
def category_name(category: str) -> str:
    """A catalog category as the categories line writes it, spelled as a grounded tag's core
    is: lower case, apostrophes dropped, every other run of characters that are not letters or
    digits one space ("Children's" -> "childrens", "Sci-Fi" -> "sci fi"), at most
    `CATEGORY_CHARS` characters."""
    name = re.sub(r"['’]", "", clean_text(category).lower())
    return re.sub(r"[\W_]+", " ", name)[:CATEGORY_CHARS].strip()


def line_categories(history: str) -> tuple[str, ...]:
    """The category names of a context's categories line (`category_line`, its first line), in
    its order; () when the context opens with none."""
    first = history.split("\n", 1)[0]
    if not first.startswith(CATEGORIES_PREFIX):
        return ()
    entries = (e.rsplit(" ", 1) for e in first[len(CATEGORIES_PREFIX) :].split(", "))
    return tuple(e[0] for e in entries if len(e) == 2 and e[1].isdigit() and e[0])


def category_line(events: Iterable[Event], top: int) -> str:
    """`categories: drama 24, comedy 12`: the `top` categories with the most distinct items among
    the events (ties by name), each with its number of items; "" when no item has a category."""
    items: dict[str, str] = {}
    for e in events:
        if e.behavior != "search" and e.item_id and e.category:
            name = category_name(e.category)
            if name:
                items.setdefault(e.item_id, name)
    counts = Counter(items.values())
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return CATEGORIES_PREFIX + ", ".join(f"{name} {n}" for name, n in ranked) if ranked else ""


def reliable(events: Iterable[Event], keep: Sequence[str]) -> list[Event]:
    """Kept behaviour types only, oldest first, with repeats of the same behaviour on the same
    item (or query) on the same day collapsed into one."""
    kept = set(keep)
    seen: set[tuple[_dt.date, str, str]] = set()
    out = []
    for e in sorted(events, key=lambda e: e.ts):
        if e.behavior not in kept:
            continue
        target = e.item_id if e.behavior != "search" else (e.query or "").strip().lower()
        if not target:
            continue
        key = (e.ts.date(), e.behavior, target)
        if key in seen:
            continue
        seen.add(key)
        out.append(e)
    return out


def bucket_label(day: _dt.date, as_of: RunDate, daily_days: int = 30, monthly_days: int = 365) -> str:
    """Daily within `daily_days` of the run date, monthly within a year, yearly beyond."""
    age = RunDate(day).days_until(as_of)
    if age <= daily_days:
        return day.isoformat()
    if age <= monthly_days:
        return day.strftime("%Y-%m")
    return str(day.year)


def buckets(events: Sequence[Event], as_of: RunDate, core_words: int = 6) -> list[Bucket]:
    """Reliable events grouped by time bucket, oldest bucket first."""
    out: dict[str, Bucket] = {}
    for e in events:
        label = bucket_label(e.ts.date(), as_of)
        b = out.setdefault(label, Bucket(label))
        b.kinds[e.behavior] += 1
        if e.behavior == "search":
            entry: tuple[str | None, str] = (None, f'search "{clean_text(e.query or "")[:QUERY_CHARS]}"')
        else:
            entry = (e.item_id, core_title(e.title or e.item_id or "", core_words))
        if entry not in b.entries:
            b.entries.append(entry)
    return list(out.values())


def kinds_summary(kinds: Counter[str]) -> str:
    """`bought 1, viewed 2`: strongest signal first, other types after in first-seen order."""
    return ", ".join(f"{VERBS.get(k, k)} {kinds[k]}" for k in STRENGTH if kinds[k]) + "".join(
        f", {k} {n}" for k, n in kinds.items() if k not in STRENGTH
    )


def bucket_line(b: Bucket, hybrid: bool) -> tuple[str, list[str]]:
    """`time (behaviours) | item; item; ...`; in hybrid form each item is one entity slot."""
    parts: list[str] = []
    entities: list[str] = []
    for item_id, text in b.entries:
        if hybrid and item_id is not None:
            parts.append(EMBED_MARK)
            entities.append(item_id)
        else:
            parts.append(text)
    return f"{b.label} ({kinds_summary(b.kinds)}) | " + "; ".join(parts), entities


def full_text(events: Sequence[Event]) -> str:
    """Every kept behaviour with its full title, one line each: the uncompressed baseline."""
    lines = []
    for e in events:
        when = e.ts.strftime("%Y-%m-%d %H:%M")
        what = (
            f'"{clean_text(e.query or "")}"'
            if e.behavior == "search"
            else clean_text(e.title or e.item_id or "")
        )
        lines.append(f"{when} {VERBS.get(e.behavior, e.behavior)}: {what}")
    return "\n".join(lines)


@dataclass
class Compressed:
    text: str
    tokens: int
    entity_ids: list[str]
    dropped_buckets: int


def compress(
    blocks: Sequence[Bucket],
    count_tokens: Callable[[str], int],
    budget: int,
    hybrid: bool,
    head: str = "",
) -> Compressed:
    """Bucket lines, oldest dropped first until the context fits `budget` tokens. In hybrid form
    an entity slot counts as one token (what the model reads), not as the mark's characters.
    `head` (the categories line) opens the context when it takes at most 1/`CATEGORY_SHARE` of
    the budget (with its newline); the buckets then share what it leaves."""

    def cost(line: tuple[str, list[str]]) -> int:
        return count_tokens(line[0].replace(EMBED_MARK, "")) + len(line[1]) + 1

    head_cost = count_tokens(head) + count_tokens("\n") if head and blocks else 0
    if head_cost > budget // CATEGORY_SHARE:
        head, head_cost = "", 0
    budget -= head_cost

    lines = [bucket_line(b, hybrid) for b in blocks]
    costs = [cost(line) for line in lines]
    total = sum(costs)
    start = 0
    while total > budget and start < len(lines) - 1:
        total -= costs[start]
        start += 1
    kept = lines[start:]
    if kept and total > budget:
        # Even the newest bucket alone is too long: keep its newest entries that fit.
        newest = blocks[-1]
        entries = list(newest.entries)
        while (
            len(entries) > 1
            and cost(bucket_line(Bucket(newest.label, newest.kinds, entries), hybrid)) > budget
        ):
            entries.pop(0)
        kept = [bucket_line(Bucket(newest.label, newest.kinds, entries), hybrid)]
    text = "\n".join([head] * bool(head_cost) + [t for t, _ in kept])
    entities = [e for _, ents in kept for e in ents]
    tokens = count_tokens(text.replace(EMBED_MARK, "")) + len(entities) if kept else 0
    return Compressed(text, tokens, entities, start)
