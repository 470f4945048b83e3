"""Behaviour compression inside Spark: every behaviour before the run date shuffled ONCE by user and
sorted by time, then, a chunk of users at a time, reliable-behaviour filtering, per-user capping and
the V1 and hybrid contexts computed on Arrow columns, with token counts from the LLM's own tokenizer."""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from recgpt import context as C
from recgpt.llm.request import EMBED_MARK
from recgpt.rundate import RunDate
from recgpt.tables import USER_CONTEXT
from sparkio.worker import per_process

_TOKENIZERS: dict[str, Any] = {}

OUT_SCHEMA = pa.schema([f for f in USER_CONTEXT.schema if f.name not in ("dt", "run_id", "created_at")])

# Rows compressed together: enough that the per-chunk costs (tokenizer calls, Arrow kernels, the
# Python work per distinct title) amortise over many users, few enough to bound a worker's memory.
CHUNK_ROWS = 200_000
# Token counts of recurring pieces (titles, bucket heads, times) kept per worker before a reset.
CACHE_PIECES = 2_000_000
_DAY_US = 86_400_000_000
_MINUTE_US = 60_000_000


def tokenizer_for(path: str) -> Any:
    def load() -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)

    return per_process(_TOKENIZERS, path, load)


def tokenizer_spec(path: str) -> str:
    """The (fast) tokenizer the model's AutoTokenizer resolves to, as its JSON: workers rebuild
    the same backend from it in a fraction of a second instead of importing transformers."""
    return str(tokenizer_for(path).backend_tokenizer.to_str())


def backend_for(spec: str) -> Any:
    def load() -> Any:
        from tokenizers import Tokenizer

        return Tokenizer.from_str(spec)

    return per_process(_TOKENIZERS, spec, load)


def clustered_history(
    behaviors: DataFrame, items: DataFrame | None, dt: RunDate, cfg: Mapping[str, Any]
) -> DataFrame:
    """Every behaviour strictly before `dt`, clustered by user (all of a user's rows in one
    partition, adjacent), with the item's title and category (none when `items` is None: the
    compressor then looks them up itself): one shuffle, no aggregation. `in_rule_order` orders a
    chunk of whole users by time (Spark sorts on the user alone: half the cost of sorting on six columns).
    The payload columns are set only on rows a context may keep (kept types, within the
    lookback, with an item or a query); the others only count towards `events`. A search's
    `target` (its trimmed lower-cased query) is what its repeats are judged on; any other
    behaviour's is its item."""
    keep = [str(k) for k in cfg["keep_behaviors"]]
    since = dt.minus(int(cfg["lookback_days"]))
    search = F.col("behavior") == "search"
    target = F.when(search, F.lower(F.trim("query"))).otherwise(F.col("item_id"))
    usable = (
        (F.col("ts") >= F.lit(since.iso).cast("timestamp"))
        & F.col("behavior").isin(keep)
        & target.isNotNull()
        & (target != "")
    )
    rows = behaviors.where(F.col("ts") < F.lit(dt.iso).cast("timestamp")).select(
        "user_id",
        "ts",
        *(F.when(usable, F.col(c)).alias(c) for c in ("behavior", "item_id", "query")),
        F.when(usable & search, target).alias("target"),
    )
    if items is not None:
        columns = catalog_columns(items)
        rows = rows.join(F.broadcast(columns) if cfg.get("broadcast_items") else columns, "item_id", "left")
    return rows.repartition("user_id").sortWithinPartitions("user_id")


# How the rule reads a user's rows: by time, ties by content (an item has one title, so the title
# never breaks a tie), so a rerun keeps the same repeat and line order.
RULE_ORDER = ("user_id", "ts", "behavior", "target", "query", "item_id")


def in_rule_order(rows: pa.Table) -> pa.Table:
    """`clustered_history` rows of whole users sorted by `RULE_ORDER` (nulls first, as Spark
    sorts), with `day`: the date (in the timestamps' time zone, the session's) of a row a context
    may keep, null on the others (their `behavior` is null)."""
    rows = rows.take(pc.sort_indices(rows, sort_keys=[(c, "ascending", "at_start") for c in RULE_ORDER]))
    day = pc.if_else(
        pc.is_valid(rows["behavior"]), pc.cast(rows["ts"], pa.date32()), pa.scalar(None, pa.date32())
    )
    return rows.append_column("day", day)


def catalog_columns(items: DataFrame) -> DataFrame:
    """item_id, title, category (null when the catalog has none) as strings: what a context
    reads of an item."""
    return items.select(
        *(
            (F.col(c) if c in items.columns else F.lit(None)).cast("string").alias(c)
            for c in ("item_id", "title", "category")
        )
    )


class CatalogLookup:
    """The catalog's titles and categories by item id, for a worker to attach to its rows itself:
    the shuffle then carries no title (the widest column, a third of the stage's time at 10M
    rows)."""

    def __init__(self, catalog: pa.Table) -> None:
        self.columns = {c: catalog[c].combine_chunks() for c in ("title", "category")}
        self.position = {item: i for i, item in enumerate(catalog["item_id"].to_pylist())}

    def __call__(self, table: pa.Table) -> pa.Table:
        """`table` with each row's title and category; null for no item or an item the catalog
        lacks (as the left join)."""
        enc = pc.dictionary_encode(table["item_id"].combine_chunks())
        position = self.position
        at = pa.array([position.get(v) for v in enc.dictionary.to_pylist()], pa.int64())
        for name, values in self.columns.items():
            table = table.append_column(name, values.take(at).take(enc.indices))
        return table


@dataclass(frozen=True)
class BroadcastCatalog:
    """An `(item_id, title)` Arrow table broadcast to the workers, and a key naming this copy."""

    key: str
    table: Any  # a pyspark Broadcast


# The lookup of the catalog a worker last used (a new run's catalog replaces them).
_CATALOG: dict[str, CatalogLookup] = {}


def catalog_lookup(catalog: BroadcastCatalog) -> CatalogLookup:
    if catalog.key not in _CATALOG:
        _CATALOG.clear()  # before the new one is built: one catalog in memory at a time
    return per_process(_CATALOG, catalog.key, lambda: CatalogLookup(catalog.table.value))


class TokenCounter:
    """Token counts from the LLM's own (fast) tokenizer, with texts encoded in batches and counts
    cached. Counts equal `len(tokenizer(text, add_special_tokens=False).input_ids)`.

    `splits_at_whitespace` says whether a text's count is the sum of its pieces' counts when it
    is cut (a) before any whitespace that follows a non-whitespace character, and (b) around a
    newline that precedes a non-whitespace character (the newline counted on its own). It holds
    for byte-level BPE tokenizers with the GPT-2 split pattern and no normalizer: no pre-token of
    that pattern runs from a non-space character into a following space, a newline before a
    non-space is a pre-token of its own, the pattern has no look-behind, BPE never merges across
    pre-tokens, and added tokens without whitespace or stripping cannot span a cut."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend  # a `tokenizers.Tokenizer`, e.g. `AutoTokenizer(...).backend_tokenizer`
        self.cache: dict[str, int] = {"": 0}
        self.splits_at_whitespace = _splits_at_whitespace(json.loads(backend.to_str()))

    def prime(self, texts: Iterable[str]) -> None:
        missing = list({t for t in texts if t and t not in self.cache})
        if not missing:
            return
        for text, enc in zip(
            missing, self.backend.encode_batch_fast(missing, add_special_tokens=False), strict=True
        ):
            self.cache[text] = len(enc.ids)

    def counts(self, texts: Sequence[str]) -> np.ndarray:
        """Counts of many texts at once (one batched call for the ones not seen yet)."""
        self.prime(texts)
        cache = self.cache
        return np.array([cache[t] for t in texts], dtype=np.int64)

    def __call__(self, text: str) -> int:
        if not text:
            return 0
        if text not in self.cache:
            self.cache[text] = len(self.backend.encode(text, add_special_tokens=False).ids)
        return self.cache[text]

    def clear(self) -> None:
        self.cache.clear()
        self.cache[""] = 0


def _splits_at_whitespace(spec: Mapping[str, Any]) -> bool:
    def gpt2_bytelevel(pre: Mapping[str, Any] | None) -> bool:
        if not pre:
            return False
        if pre.get("type") == "Sequence":
            steps = pre.get("pretokenizers", [])
            # Digits only cuts more (context-free); exactly one GPT-2 byte-level split.
            return sum(gpt2_bytelevel(p) for p in steps) == 1 and all(
                p.get("type") in ("ByteLevel", "Digits") for p in steps
            )
        return (
            pre.get("type") == "ByteLevel"
            and bool(pre.get("use_regex", True))
            and not pre.get("add_prefix_space", False)
        )

    model = spec.get("model") or {}
    added = spec.get("added_tokens") or []
    return (
        spec.get("normalizer") is None
        and gpt2_bytelevel(spec.get("pre_tokenizer"))
        and model.get("type") == "BPE"
        and model.get("dropout") is None
        and all(
            not a.get("lstrip") and not a.get("rstrip") and not any(ch.isspace() for ch in a["content"])
            for a in added
        )
    )


@dataclass(frozen=True)
class Settings:
    dt: RunDate
    keep: tuple[str, ...]
    max_events: int
    budget: int
    core_words: int
    top_categories: int

    @classmethod
    def of(cls, dt: RunDate, cfg: Mapping[str, Any]) -> Settings:
        return cls(
            dt,
            tuple(str(k) for k in cfg["keep_behaviors"]),
            int(cfg["max_events_per_user"]),
            int(cfg["token_budget"]),
            int(cfg["core_title_words"]),
            int(cfg.get("top_categories", 0)),
        )


# --- the rule, one user at a time -------------------------------------------------------------


def reliable_events(rows: Sequence[Mapping[str, Any]], s: Settings) -> list[C.Event]:
    """A user's kept behaviours from their clustered rows (time order): repeats of a behaviour on
    the same target and day collapsed into the earliest, the newest `max_events` (ties by target),
    then the context module's own reliable-behaviour rule."""
    seen: set[tuple[Any, ...]] = set()
    firsts = []
    for r in rows:
        key = (r["day"], r["behavior"], r["target"] or r["item_id"])
        if r["day"] is not None and key not in seen:
            seen.add(key)
            firsts.append(r)
    if len(firsts) > s.max_events:
        by_target = sorted(range(len(firsts)), key=lambda i: firsts[i]["target"] or firsts[i]["item_id"])
        newest = set(sorted(by_target, key=lambda i: firsts[i]["ts"], reverse=True)[: s.max_events])
        firsts = [r for i, r in enumerate(firsts) if i in newest]
    return C.reliable(
        (
            C.Event(r["ts"], r["behavior"], r["item_id"], r["title"], r.get("category"), r["query"])
            for r in firsts
        ),
        s.keep,
    )


def reference_context(rows: Sequence[Mapping[str, Any]], s: Settings, count: TokenCounter) -> dict[str, Any]:
    """One user_context row from one user's clustered rows, text by text: the plain statement of
    what the columnar compressor computes, and its fallback for tokenizers whose counts do not
    add up over pieces."""
    events = reliable_events(rows, s)
    blocks = C.buckets(events, s.dt, s.core_words)
    head = C.category_line(events, s.top_categories) if s.top_categories > 0 else ""
    v1 = C.compress(blocks, count, s.budget, hybrid=False, head=head)
    hybrid = C.compress(blocks, count, s.budget, hybrid=True, head=head)
    return {
        "user_id": rows[0]["user_id"],
        "events": len(rows),
        "events_kept": len(events),
        "first_ts": events[0].ts if events else None,
        "last_ts": events[-1].ts if events else None,
        "buckets": len(blocks),
        "full_tokens": count(C.full_text(events)),
        "v1_text": v1.text,
        "v1_tokens": v1.tokens,
        "v1_dropped_buckets": v1.dropped_buckets,
        "hybrid_text": hybrid.text,
        "entity_ids": hybrid.entity_ids,
        "hybrid_tokens": hybrid.tokens,
        "hybrid_dropped_buckets": hybrid.dropped_buckets,
    }


def reference_contexts(table: pa.Table, s: Settings, count: TokenCounter) -> pa.RecordBatch:
    rows = table.to_pylist()
    users: list[list[dict[str, Any]]] = []
    for r in rows:
        if not users or users[-1][0]["user_id"] != r["user_id"]:
            users.append([])
        users[-1].append(r)
    out = [reference_context(u, s, count) for u in users]
    count.clear()  # a chunk's full texts are not reused by the next one
    return pa.RecordBatch.from_pylist(out, schema=OUT_SCHEMA)


# --- the same rule on columns -----------------------------------------------------------------


def _group_ids(*columns: np.ndarray) -> np.ndarray:
    """One int64 id per distinct tuple of the (non-negative integer) columns: a mixed-radix
    number when it fits, densified column by column when it would not."""
    ids = np.zeros(len(columns[0]), dtype=np.int64)
    for col in columns:
        if not len(col):
            break
        radix = int(col.max()) + 1
        if ids.max(initial=0) >= (1 << 62) // radix:
            ids = np.unique(ids, return_inverse=True)[1].astype(np.int64).reshape(-1)
        ids = ids * radix + col
    return ids


def _firsts(ids: np.ndarray) -> np.ndarray:
    """Positions of the first row of each id, in row order (hashing, no sort of the rows)."""
    values = pa.array(ids)
    return np.sort(pc.index_in(pc.unique(values), value_set=values).to_numpy())


def _dense(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first position of each distinct id (in order of appearance) and every row's index
    into them, by hashing."""
    values = pa.array(ids)
    distinct = pc.unique(values)
    return pc.index_in(distinct, value_set=values).to_numpy(), pc.index_in(
        values, value_set=distinct
    ).to_numpy()


def _starts(*columns: np.ndarray) -> np.ndarray:
    """Where runs of equal values (over all columns) begin."""
    change = np.zeros(len(columns[0]), dtype=bool)
    change[:1] = True
    for col in columns:
        change[1:] |= col[1:] != col[:-1]
    return np.flatnonzero(change)


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list[Any]]:
    """Dictionary codes (null -> -1) and the distinct values as Python objects."""
    enc = pc.dictionary_encode(column.combine_chunks() if column.num_chunks else pa.array([], column.type))
    return enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(
        np.int64
    ), enc.dictionary.to_pylist()


def _sums(values: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """Sums of `values` over consecutive groups beginning at `starts` (empty groups allowed)."""
    cum = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    return cum[np.append(starts[1:], n)] - cum[starts]


def _category_lines(
    category: pa.ChunkedArray, users: np.ndarray, items: np.ndarray, n_users: int, top: int
) -> list[str]:
    """`C.category_line` of every user from their kept item events (the user's index, the item's
    code, the item's category per event): distinct items counted per category name."""
    lines = [""] * n_users
    if top <= 0:
        return lines
    code, values = _codes(category)
    names = [C.category_name(v) if v else "" for v in values]
    ids: dict[str, int] = {}
    name_of = np.array([ids.setdefault(n, len(ids)) if n else -1 for n in names] + [-1], np.int64)
    named = name_of[code]  # code -1 (no category) reads the trailing -1
    ok = (items >= 0) & (named >= 0)
    users, items, named = users[ok], items[ok], named[ok]
    if not len(users):
        return lines
    once = _firsts(_group_ids(users, items))  # an item has one category
    at, of = _dense(_group_ids(users[once], named[once]))
    counts = np.bincount(of.reshape(-1), minlength=len(at))
    pair_user, pair_name = users[once][at], named[once][at]
    text = list(ids)
    rank = np.empty(len(text), np.int64)
    rank[sorted(range(len(text)), key=text.__getitem__)] = np.arange(len(text))
    order = np.lexsort((rank[pair_name], -counts, pair_user))
    pair_user, pair_name, counts = pair_user[order], pair_name[order], counts[order]
    first = np.searchsorted(pair_user, pair_user, side="left")
    chosen = np.arange(len(order)) - first < top
    for user, name, n in zip(
        pair_user[chosen].tolist(), pair_name[chosen].tolist(), counts[chosen].tolist(), strict=True
    ):
        lines[user] += f"{', ' if lines[user] else C.CATEGORIES_PREFIX}{text[name]} {n}"
    return lines


def _lists(starts: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.append(starts, len(values)), pa.int32()), values)


class EntryTexts:
    """What a title or a query becomes in a context, worked out once per distinct value per worker
    (popular items recur in every chunk): its entry text (core title or `search "..."`), the
    tokens of its pieces, and the tokens of its full-text form."""

    def __init__(self, count: TokenCounter, core_words: int) -> None:
        self.count = count
        self.core_words = core_words
        self.names: dict[str, tuple[int, int]] = {}  # title or item id -> (entry text, full tokens)
        self.queries: dict[str, tuple[int, int, str]] = {}  # query -> (entry text, full tokens, repeat key)
        self.ids: dict[str, int] = {}
        self.text: list[str] = []
        self.mid: list[int] = []  # tokens of " text;"
        self.last: list[int] = []  # tokens of " text"

    def reset_if_large(self) -> None:
        if len(self.names) + len(self.queries) + len(self.count.cache) > CACHE_PIECES:
            self.__init__(self.count, self.core_words)  # type: ignore[misc]
            self.count.clear()

    def _entries(self, texts: list[str]) -> list[int]:
        new = [t for t in dict.fromkeys(texts) if t not in self.ids]
        if new:
            self.mid += self.count.counts([f" {t};" for t in new]).tolist()
            self.last += self.count.counts([f" {t}" for t in new]).tolist()
            for t in new:
                self.ids[t] = len(self.text)
                self.text.append(t)
        return [self.ids[t] for t in texts]

    def of_names(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        new = [n for n in names if n not in self.names]
        if new:
            full = [C.clean_text(n) for n in new]
            entry = self._entries([C.core_title(n, self.core_words) for n in new])
            tokens = self.count.counts([f" {f}" for f in full])
            self.names.update(zip(new, zip(entry, tokens.tolist(), strict=True), strict=True))
        found = [self.names[n] for n in names]
        return np.array([f[0] for f in found], np.int64), np.array([f[1] for f in found], np.int64)

    def of_queries(self, queries: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        new = [q for q in queries if q not in self.queries]
        if new:
            clean = [C.clean_text(q) for q in new]
            entry = self._entries([f'search "{c[: C.QUERY_CHARS]}"' for c in clean])
            tokens = self.count.counts([f' "{c}"' for c in clean])
            keys = [q.strip().lower() for q in new]
            self.queries.update(zip(new, zip(entry, tokens.tolist(), keys, strict=True), strict=True))
        found = [self.queries[q] for q in queries]
        return (
            np.array([f[0] for f in found], np.int64),
            np.array([f[1] for f in found], np.int64),
            [f[2] for f in found],
        )


# Per-worker singletons: every partition a Python worker runs reuses the counts and entry texts
# of the ones before (the same titles recur in every partition).
_COUNTERS: dict[str, TokenCounter] = {}
_ENTRY_TEXTS: dict[tuple[str, int], EntryTexts] = {}


def counter_for(spec: str) -> TokenCounter:
    return per_process(_COUNTERS, spec, lambda: TokenCounter(backend_for(spec)))


def entry_texts_for(spec: str, core_words: int) -> EntryTexts:
    return per_process(_ENTRY_TEXTS, (spec, core_words), lambda: EntryTexts(counter_for(spec), core_words))


def columnar_contexts(table: pa.Table, s: Settings, texts: EntryTexts) -> pa.RecordBatch:
    """user_context rows for a chunk of whole users (rows as `in_rule_order` leaves them): the
    per-row work on numpy/Arrow columns, the Python work once per distinct title, query, day and
    bucket head. Token counts are sums of cached piece
    counts (`TokenCounter.splits_at_whitespace`); `reference_context` states the rule."""
    count = texts.count
    texts.reset_if_large()
    n_rows = table.num_rows
    user_col = table["user_id"].combine_chunks()
    user_start = _starts(_codes(table["user_id"])[0])
    n_users = len(user_start)
    row_user = np.repeat(np.arange(n_users), np.diff(np.append(user_start, n_rows)))

    usable = pc.is_valid(table["day"])
    rows = table.filter(usable)
    ru = row_user[pc.indices_nonzero(usable).to_numpy()]
    ts = rows["ts"].cast(pa.int64()).to_numpy()
    day = rows["day"].cast(pa.int32()).to_numpy().astype(np.int64)
    beh, beh_names = _codes(rows["behavior"])
    item, item_values = _codes(rows["item_id"])
    query_target, query_target_values = _codes(rows["target"])
    target = np.where(query_target >= 0, query_target + len(item_values), item)
    target_values = item_values + query_target_values
    # Rows are in time order within a user, so one (user, day) is one run.
    user_day = np.cumsum(np.isin(np.arange(len(ru)), _starts(ru, day))) - 1

    # Repeats of a behaviour on a target within a day: the earliest stays.
    keep = _firsts(_group_ids(user_day, beh, target))
    # The newest `max_events` per user, ties by target (binary order, as Spark sorts strings).
    per_user = np.bincount(ru[keep], minlength=n_users)
    if (per_user > s.max_events).any():
        rank = np.empty(len(target_values), dtype=np.int64)
        rank[pc.sort_indices(pa.array(target_values, pa.string())).to_numpy()] = np.arange(len(target_values))
        order = keep[np.lexsort((rank[target[keep]], -ts[keep], ru[keep]))]
        first_of_user = np.concatenate([[0], np.cumsum(per_user)])[ru[order]]
        keep = np.sort(order[np.arange(len(order)) - first_of_user < s.max_events])

    # Entry texts and full-text tokens, and the context module's own repeat rule on searches: a
    # query stripped of any whitespace (Spark's trim strips spaces only); an empty one is dropped.
    search_beh = np.array([b == "search" for b in beh_names] + [False], dtype=bool)
    search = search_beh[beh]
    title = rows["title"]
    name = pc.if_else(
        pc.and_kleene(pc.is_valid(title), pc.not_equal(title, "")), title, pc.fill_null(rows["item_id"], "")
    )
    name_code, name_values = _codes(name)
    name_entry, name_tokens = texts.of_names(name_values)
    query, query_values = _codes(rows["query"])
    query_entry, query_tokens, query_keys = texts.of_queries([q or "" for q in query_values])
    key_ids: dict[str, int] = {"": 0}
    query_key = np.array([key_ids.setdefault(k, len(key_ids)) for k in query_keys] + [0], np.int64)
    entry = np.where(search, query_entry[query] if len(query_values) else 0, name_entry[name_code])
    what_tokens = np.where(search, query_tokens[query] if len(query_values) else 0, name_tokens[name_code])
    loose = np.where(search, query_key[query], item + 1)
    keep = keep[loose[keep] > 0]
    keep = keep[_firsts(_group_ids(user_day[keep], beh[keep], loose[keep]))]

    eu, eday, ebeh, eentry = ru[keep], day[keep], beh[keep], entry[keep]
    n_events = len(keep)
    kept_per_user = np.bincount(eu, minlength=n_users)
    event_start = np.concatenate([[0], np.cumsum(kept_per_user)])[:-1]

    # Buckets: runs of one label within a user (labels follow time order).
    span = np.zeros(int(eday.max()) - int(eday.min()) + 1 if n_events else 0, dtype=np.int64)
    span[eday - (eday.min() if n_events else 0)] = 1
    days = np.flatnonzero(span) + (eday.min() if n_events else 0)
    day_of = (np.cumsum(span) - 1)[eday - (eday.min() if n_events else 0)]
    dates = [_dt.date(1970, 1, 1) + _dt.timedelta(days=int(d)) for d in days]
    labels, label_of_day = np.unique(
        np.array([C.bucket_label(d, s.dt) for d in dates], object), return_inverse=True
    )
    elabel = label_of_day.reshape(-1)[day_of.reshape(-1)]
    bucket_start = _starts(eu, elabel) if n_events else np.zeros(0, np.int64)
    n_buckets = len(bucket_start)
    ebucket = np.repeat(np.arange(n_buckets), np.diff(np.append(bucket_start, n_events)))
    bucket_user = eu[bucket_start]
    user_bucket = np.searchsorted(bucket_user, np.arange(n_users))  # a user's first bucket
    buckets_per_user = np.bincount(bucket_user, minlength=n_users)

    # A bucket's behaviour summary depends on its counts per type (and the first-seen order of
    # types outside the strength order): one string per distinct summary.
    nb = max(len(beh_names), 1)
    signature = np.bincount(ebucket * nb + ebeh, minlength=n_buckets * nb).reshape(n_buckets, nb)
    others = [b for b, kind in enumerate(beh_names) if kind not in C.STRENGTH]
    if others:
        first_seen = np.full((n_buckets, nb), n_events, dtype=np.int64)
        np.minimum.at(first_seen, (ebucket, ebeh), np.arange(n_events))
        signature = np.hstack([signature, first_seen[:, others]])
    kinds_at, kinds_of = _dense(_group_ids(*signature.T)) if n_buckets else (np.zeros(0, np.int64),) * 2
    kinds = signature[kinds_at]
    summaries = []
    for row in kinds:
        order = sorted(range(nb), key=lambda b: (1, row[nb + others.index(b)]) if b in others else (0, b))
        summaries.append(C.kinds_summary(Counter({beh_names[b]: int(row[b]) for b in order if row[b]})))
    head_keys = elabel[bucket_start] * len(kinds) + kinds_of
    head_at, head_of = _dense(head_keys)
    head_ids = head_keys[head_at]
    heads = [f"{labels[h // len(kinds)]} ({summaries[h % len(kinds)]})" for h in head_ids.tolist()]
    head_of = head_of.reshape(-1)
    head_tokens = count.counts([f"{h} |" for h in heads])[head_of]

    # A bucket's entries: an item (with its core title) or a search, each once, first seen first.
    is_item = ~search[keep]
    at = _firsts(_group_ids(ebucket, is_item.astype(np.int64), np.where(is_item, item[keep] + 1, 0), eentry))
    abucket, aentry, aitem = ebucket[at], eentry[at], is_item[at]
    entry_start = _starts(abucket) if len(at) else np.zeros(0, np.int64)
    is_last = np.append(abucket[1:] != abucket[:-1], True)[: len(at)]
    item_ids = rows["item_id"].combine_chunks().take(pa.array(keep[at]))

    newline = count("\n")
    # The categories line of each user, when it takes at most its share of the budget; the
    # buckets share what it leaves.
    category = (
        rows["category"]
        if "category" in rows.column_names
        else pa.chunked_array([pa.nulls(rows.num_rows, pa.string())])
    )
    item_of_event = np.where(search[keep], -1, item[keep])
    head_line = _category_lines(category.take(pa.array(keep)), eu, item_of_event, n_users, s.top_categories)
    head_cost = count.counts(head_line) + np.array([newline if h else 0 for h in head_line], np.int64)
    head_cost = np.where(head_cost <= s.budget // C.CATEGORY_SHARE, head_cost, 0)
    budget = s.budget - head_cost
    prefix = pa.array([f"{h}\n" if c else "" for h, c in zip(head_line, head_cost.tolist(), strict=True)])
    mid, last = np.array(texts.mid, np.int64), np.array(texts.last, np.int64)
    entry_text = pa.array(texts.text, pa.string())
    out: dict[str, Any] = {}
    for form in ("v1", "hybrid"):
        slots = aitem.astype(np.int64) if form == "hybrid" else np.zeros(len(at), np.int64)
        if form == "hybrid":  # an item is one entity slot: " ;" / " " once the marks are stripped
            piece = np.where(aitem, np.where(is_last, count(" "), count(" ;")), 0)
            piece += np.where(aitem, 0, np.where(is_last, last[aentry], mid[aentry]))
            values = pc.if_else(pa.array(aitem), EMBED_MARK, entry_text.take(pa.array(aentry)))
        else:
            piece = np.where(is_last, last[aentry], mid[aentry])
            values = entry_text.take(pa.array(aentry))
        line = head_tokens + _sums(piece, entry_start, len(at))
        line_slots = _sums(slots, entry_start, len(at))
        cost = line + line_slots + 1
        # The oldest buckets go while the rest is over budget; the newest always stays.
        before = np.concatenate([[0], np.cumsum(cost)])
        left = before[np.append(user_bucket[1:], n_buckets)][bucket_user] - before[:-1]
        over_budget = left > budget[bucket_user]
        over = np.bincount(bucket_user, weights=over_budget, minlength=n_users).astype(np.int64)
        dropped = np.minimum(over, np.maximum(buckets_per_user - 1, 0))
        kept_bucket = np.arange(n_buckets) - user_bucket[bucket_user] >= dropped[bucket_user]
        kept_entry = np.ones(len(at), dtype=bool)
        # Even the newest bucket alone is too long: its oldest entries go until it fits.
        for u in np.flatnonzero((buckets_per_user > 0) & (over >= buckets_per_user)).tolist():
            b = user_bucket[u] + buckets_per_user[u] - 1
            lo, hi = entry_start[b], (entry_start[b + 1] if b + 1 < n_buckets else len(at))
            tail = np.cumsum((piece + slots)[lo:hi][::-1])[::-1] + head_tokens[b] + 1
            cut = min(int((tail > budget[u]).sum()), hi - lo - 1)
            kept_entry[lo : lo + cut] = False
            line[b] = head_tokens[b] + piece[lo + cut : hi].sum()
            line_slots[b] = slots[lo + cut : hi].sum()
        lines = np.bincount(bucket_user, weights=kept_bucket, minlength=n_users).astype(np.int64)
        read = np.where(kept_bucket, line + line_slots, 0)
        out[f"{form}_tokens"] = (
            _sums(read, user_bucket, n_buckets) + np.maximum(lines - 1, 0) * newline + head_cost
        )
        out[f"{form}_dropped_buckets"] = dropped
        # The text: kept entries of kept buckets joined into lines, lines into the context.
        use = kept_entry & kept_bucket[abucket]
        kept = np.flatnonzero(kept_bucket)
        joined = pc.binary_join(
            _lists(np.searchsorted(abucket[use], kept), values.filter(pa.array(use))), "; "
        )
        heads_kept = pa.array(heads, pa.string()).take(pa.array(head_of[kept]))
        line_text = pc.binary_join_element_wise(heads_kept, joined, " | ")
        user_lines = _lists(np.searchsorted(bucket_user[kept], np.arange(n_users)), line_text)
        out[f"{form}_text"] = pc.binary_join_element_wise(prefix, pc.binary_join(user_lines, "\n"), "")
        if form == "hybrid":
            slot = use & aitem
            out["entity_ids"] = _lists(
                np.searchsorted(bucket_user[abucket[slot]], np.arange(n_users)),
                item_ids.filter(pa.array(slot)),
            )

    # Full text: `YYYY-MM-DD HH:MM verb: what` per behaviour, each piece counted once per value.
    local = rows["ts"]
    if pa.types.is_timestamp(local.type) and local.type.tz:
        local = pc.local_timestamp(local)
    minute = (local.cast(pa.int64()).to_numpy()[keep] % _DAY_US) // _MINUTE_US
    minute_tokens = count.counts([f" {m // 60:02d}:{m % 60:02d}" for m in range(24 * 60)])
    verb_tokens = count.counts([f" {C.VERBS.get(b, b)}:" for b in beh_names] + [""])
    day_tokens = count.counts([d.strftime("%Y-%m-%d") for d in dates] + [""])
    per_event = day_tokens[day_of.reshape(-1)] + minute_tokens[minute] + verb_tokens[ebeh] + what_tokens[keep]
    full = _sums(per_event, event_start, n_events) + np.maximum(kept_per_user - 1, 0) * newline

    ets = ts[keep]
    none = kept_per_user == 0
    ends = np.clip(np.stack([event_start, event_start + kept_per_user - 1]), 0, max(n_events - 1, 0))
    first_last = ets[ends] if n_events else np.zeros_like(ends)
    ts_type = OUT_SCHEMA.field("first_ts").type
    columns = {
        "user_id": user_col.take(pa.array(user_start)),
        "events": pa.array(np.diff(np.append(user_start, n_rows))),
        "events_kept": pa.array(kept_per_user),
        "first_ts": pa.array(first_last[0], mask=none).cast(ts_type),
        "last_ts": pa.array(first_last[1], mask=none).cast(ts_type),
        "buckets": pa.array(buckets_per_user),
        "full_tokens": pa.array(full),
        **{k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in out.items()},
    }
    return pa.RecordBatch.from_arrays([columns[f.name].cast(f.type) for f in OUT_SCHEMA], schema=OUT_SCHEMA)


def user_compressor(
    dt: RunDate,
    cfg: Mapping[str, Any],
    tokenizer: str,
    columnar: bool | None = None,
    catalog: BroadcastCatalog | None = None,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """mapInArrow over `clustered_history` rows: one user_context row per user, a chunk of whole
    users at a time (the last user of a batch may continue in the next). `tokenizer` is a
    `tokenizer_spec`. Columnar unless the tokenizer's counts do not add up over pieces (or
    `columnar` says otherwise). `catalog`: the broadcast catalog when the rows come without the
    items' titles and categories."""
    s = Settings.of(dt, cfg)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        count = counter_for(tokenizer)
        if count.splits_at_whitespace if columnar is None else columnar:
            texts = entry_texts_for(tokenizer, s.core_words)
            contexts: Callable[[pa.Table], pa.RecordBatch] = lambda t: columnar_contexts(t, s, texts)  # noqa: E731
        else:
            contexts = lambda t: reference_contexts(t, s, count)  # noqa: E731
        lookup = None if catalog is None else catalog_lookup(catalog)

        def compress(table: pa.Table) -> pa.RecordBatch:
            if lookup is not None:
                table = lookup(table)
            return contexts(in_rule_order(table))

        pending: list[pa.RecordBatch] = []
        rows = 0
        for batch in batches:
            pending.append(batch)
            rows += batch.num_rows
            if rows < CHUNK_ROWS:
                continue
            table = pa.Table.from_batches(pending).combine_chunks()
            users = table["user_id"]
            last = pc.index(users, users[-1]).as_py()  # where the possibly unfinished user begins
            if last > 0:
                yield compress(table.slice(0, last))
                table = table.slice(last)
            pending, rows = table.to_batches(), table.num_rows
        if rows:
            yield compress(pa.Table.from_batches(pending))

    return run


def compress_users(
    behaviors: DataFrame, items: DataFrame, dt: RunDate, cfg: Mapping[str, Any], tokenizer_path: str
) -> DataFrame:
    """One user_context row (without lineage) per user with any behaviour before `dt`; users
    whose behaviours are all of dropped types get an empty context, not a missing row.
    With `broadcast_items` the catalog's titles and categories go to every worker once and are
    attached after the shuffle; otherwise they are joined to the rows before it."""
    catalog = None
    if cfg.get("broadcast_items"):
        columns = catalog_columns(items).toArrow()
        catalog = BroadcastCatalog(uuid.uuid4().hex, behaviors.sparkSession.sparkContext.broadcast(columns))
    rows = clustered_history(behaviors, None if catalog else items, dt, cfg)
    compressor = user_compressor(dt, dict(cfg), tokenizer_spec(tokenizer_path), catalog=catalog)
    return rows.mapInArrow(compressor, from_arrow_schema(OUT_SCHEMA))
