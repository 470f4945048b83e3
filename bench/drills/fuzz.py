"""Fuzzed-input drill: hypothesis generates malformed records for every loader (canonical CSV,
MovieLens ml-100k and ml-1m, Amazon Reviews JSONL plain and gzipped, Taobao CSV), the real ingest
stage reads them, and the drill counts where every row went.

One generated case is one record: a good one, or one with a wrong type, a missing field, broken
UTF-8, a huge field, a duplicated key, a timestamp out of range, a truncated or split line, text
that is not the format at all, or arbitrary text in one field. Spark is too slow to start once per
record, so the records are written into files of about `BATCH` records (after a few good anchor
records that every file needs) and ingest runs once per file, in a fresh warehouse.

What must hold, per file and summed per loader:
- rows in (the drill's own count of the non-blank physical lines it wrote, see `rows_in`) equal
  rows written plus rows quarantined, and equal the stage report's rows in;
- every record built good is written exactly once, every record built bad is quarantined with
  the reason its fault calls for, a written row always comes from a generated record, and keys
  are unique in the written items and users;
- no ingest crashes: any exception is a failure, and a clear `RecGPTError` is one too, because
  every generated file is meant to be ingestible.
Whole-file problems (empty, missing, binary, truncated, headerless, not JSON) run as their own
cases: each must end in a clear error naming the file or table, or in rows counted as above.

Generation is seeded, so the same cases and figures come back on every run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import enum
import gzip
import io
import json
import random
import re
import shutil
import string
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from pyspark.sql import SparkSession

from bench.drills import DrillResult

SEED = 20251028
FULL_CASES = 1000  # per loader
BATCH = 250  # generated records per ingested file
RUN_DT = "2025-10-28"
DAY0 = _dt.datetime(1995, 1, 1)  # ingest.min_ts
END = _dt.datetime(2025, 10, 29)  # the day after ingest.until (= run.dt for these sources)
EPOCH = _dt.datetime(1970, 1, 1)
LONG_MAX = 2**63 - 1
TAG_RE = re.compile(r"T\d{5}Z")

# What a generated record should become.
GOOD, BAD, ANY, DUP, BLANK = "good", "bad", "any", "duplicate", "blank"


class Slot(enum.Enum):
    """Values filled in when a record is placed in a file: its tag (unique in the file), the tag
    of an earlier good record of the same table (a duplicated key), or no value at all (JSON)."""

    TAG = "tag"
    DUP = "dup"
    ABSENT = "absent"


BROKEN_MARK = "\ue001"  # stands for invalid UTF-8 bytes inside a JSON string until rendering


@dataclass(frozen=True)
class Record:
    """One generated case. `fields` maps column to value (text, raw bytes or a `Slot` for
    delimited files; JSON values for JSONL); `shape` damages the rendered line; `reason` is what
    the quarantine reason must say for a bad record."""

    table: str
    kind: str
    verdict: str
    fields: dict[str, Any]
    shape: tuple[str, int] | None = None
    reason: str = ""
    broken: bytes = b""
    pick: int = 0  # which earlier record a duplicate copies


@dataclass
class Placed:
    """A record in a file: its tag, the verdict once duplicates are resolved, its lines."""

    record: Record
    tag: str | None
    verdict: str
    lines: list[bytes]

    @property
    def tag_written(self) -> bool:
        return self.tag is not None and any(self.tag.encode() in line for line in self.lines)


# -- values ---------------------------------------------------------------------------------------

WORD = st.text(string.ascii_letters + string.digits, min_size=1, max_size=10)
TITLE = st.lists(WORD, min_size=1, max_size=5).map(" ".join)
# Never a number, NaN, Infinity, date or epoch: starts with a letter no parser accepts.
NOT_A_NUMBER = st.text(string.ascii_lowercase, max_size=8).map(lambda s: "x" + s)
BROKEN_UTF8 = st.sampled_from(
    [
        b"\xff",
        b"\xfe\xfe",
        b"\xc3\x28",
        b"\x80",
        b"\xed\xa0\x80",
        b"\xf8\x88\x80\x80\x80",
        b"\xc0\x80",
        b"\xe2\x82",
    ]
)
FUZZ_TEXT = st.text(st.characters(exclude_categories=("Cs", "Co"), exclude_characters="\r\n"), max_size=24)
FUZZ_BYTES = st.binary(max_size=24).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
HUGE = st.integers(2_001, 300_000)
BEHAVIORS = ("click", "view", "fav", "cart", "purchase", "review")  # every type but search


def _seconds(moment: _dt.datetime) -> int:
    return int((moment - EPOCH).total_seconds())


def _padded(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Values as sources write them: any case, sometimes with spaces around (checks trim)."""
    return st.tuples(values, st.sampled_from(["", " ", "  "]), st.booleans()).map(
        lambda t: f"{t[1]}{t[0].upper() if t[2] else t[0]}{t[1]}"
    )


def _moments(low: _dt.datetime, high: _dt.datetime) -> st.SearchStrategy[str]:
    formats = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d")
    moments = st.datetimes(min_value=low, max_value=high)
    return st.tuples(moments, st.sampled_from(formats)).map(lambda t: t[0].strftime(t[1]))


GOOD_TS_TEXT = _moments(DAY0, END - _dt.timedelta(microseconds=1))
EARLY_TS_TEXT = _moments(_dt.datetime(1900, 1, 1), DAY0 - _dt.timedelta(microseconds=1))
LATE_TS_TEXT = _moments(END, _dt.datetime(9999, 12, 31, 23, 59, 59))
NO_SUCH_DAY = st.sampled_from(["2025-02-30 10:00:00", "2025-13-01", "2025-10-32", "20251001", "1.7e9"])


def _epochs(per_second: int) -> dict[str, st.SearchStrategy[int]]:
    """Epoch timestamps in a source's unit: in range, before, after, overflowing the microsecond
    conversion (still a long), and beyond a long."""
    first, end = _seconds(DAY0) * per_second, _seconds(END) * per_second
    overflow = LONG_MAX // (1_000_000 // per_second) + 1
    return {
        "good": st.integers(first, end - 1),
        "early": st.integers(-overflow + 1, first - 1),
        "late": st.integers(end, overflow - 1),
        "overflow": st.one_of(st.integers(overflow, LONG_MAX), st.integers(-LONG_MAX, -overflow)),
        "beyond a long": st.integers(LONG_MAX + 1, 10**30),
    }


# -- formats: how a record becomes lines ----------------------------------------------------------


@dataclass(frozen=True)
class Delimited:
    """Separated text, no quoting by the writer (as the public datasets are)."""

    sep: str
    encoding: str = "UTF-8"
    columns: Callable[[dict[str, Any]], list[Any]] | None = None  # fields -> values in file order

    def line(self, fields: dict[str, Any], order: Sequence[str]) -> bytes:
        values = self.columns(fields) if self.columns else [fields[c] for c in order]
        return self.sep.encode().join(self.encode(v) for v in values)

    def encode(self, value: Any) -> bytes:
        if isinstance(value, bytes):
            return value
        if isinstance(value, tuple):  # ML genre names, joined the ml-1m way
            return "|".join(value).encode(self.encoding, "replace")
        return str(value).encode(self.encoding, "replace")

    def damaged(self, line: bytes, shape: tuple[str, int]) -> list[bytes]:
        """A line (of good fields, so no separator inside one) with `shape` applied: each result has
        another field count, or an unclosed quote, or is blank."""
        name, k = shape
        sep = self.sep.encode()
        parts = line.split(sep)
        n = len(parts)
        if name == "drop":
            return [sep.join(parts[: k % n] + parts[k % n + 1 :])]
        if name == "extra":
            return [sep.join(parts + [b"x%d" % i for i in range(1 + k % 3)])]
        if name == "cut":  # cut before the last separator: fewer fields
            last = line.rfind(sep)
            return [line[: 1 + k % last]] if last > 0 else [b""]
        if name == "split":  # a line break for the separator between two fields
            at = 1 + k % (n - 1)
            return [sep.join(parts[:at]), sep.join(parts[at:])]
        if name == "unclosed":  # a quote opened at a field start and never closed
            i = k % n
            return [sep.join([*parts[:i], b'"' + parts[i], *parts[i + 1 :]])]
        raise ValueError(name)

    def blank(self) -> st.SearchStrategy[Any]:
        return st.sampled_from([b"", b" ", b"   "])

    def with_broken(self, value: Any, broken: bytes) -> tuple[Any, bytes]:
        return self.encode(value) + broken, b""

    def fuzz(self) -> st.SearchStrategy[Any]:
        return st.one_of(FUZZ_TEXT, FUZZ_BYTES)

    def quoted(self, text: str) -> Any:
        return f'"{text}{self.sep}{text}"'


@dataclass(frozen=True)
class Jsonl:
    """JSON Lines: one object per line."""

    def line(self, fields: dict[str, Any], order: Sequence[str]) -> bytes:
        present = {k: v for k, v in fields.items() if v is not Slot.ABSENT}
        return json.dumps(present, ensure_ascii=False).encode()

    def damaged(self, line: bytes, shape: tuple[str, int]) -> list[bytes]:
        name, k = shape
        if name == "cut":  # a strict prefix of an object is never a complete object
            return [line[: 1 + k % (len(line) - 1)]]
        if name == "not an object":
            return [
                [b"[" + line + b"]", b"[" + line + b"," + line + b"]", b"[]", b"null", b"5", b'"x"'][k % 6]
            ]
        if name == "two objects":
            return [line + [b"", b" ", b","][k % 3] + line]
        if name == "trailing text":
            return [line + [b"x", b"}", b" //", b"]"][k % 4]]
        if name == "not json":
            return [b"user,item,rating\t" + line.replace(b'"', b"").replace(b"{", b"").replace(b"}", b"")]
        raise ValueError(name)

    def blank(self) -> st.SearchStrategy[Any]:
        return st.sampled_from([Slot.ABSENT, None, "", "  "])

    def with_broken(self, value: Any, broken: bytes) -> tuple[Any, bytes]:
        return f"{value if isinstance(value, str) else ''}{BROKEN_MARK}", broken

    def fuzz(self) -> st.SearchStrategy[Any]:
        return FUZZ_TEXT

    def quoted(self, text: str) -> Any:
        return f'{text}","{text}'


Format = Delimited | Jsonl
DELIMITED_SHAPES = ("drop", "extra", "cut", "split", "unclosed")
JSONL_SHAPES = ("cut", "not an object", "two objects", "trailing text", "not json")


# -- tables and the kinds of fault ----------------------------------------------------------------


@dataclass(frozen=True)
class BadValue:
    """A value a column must refuse, and the reason the quarantine then gives."""

    kind: str
    column: str
    values: st.SearchStrategy[Any]
    reason: str


@dataclass(frozen=True)
class Table:
    """One input file of a loader, as the drill generates it.

    `tag` is the column that carries each record's tag into the written table (the key of keyed
    tables, so duplicated keys are duplicated tags); `required` maps columns to the reason a blank
    one gets; `text` are free-text columns where any content is fine; `huge` maps columns to the
    reason a 2,001..300,000-character value gets ('' = accepted); `utf8` are the columns whose
    broken bytes are caught ('invalid characters'); `fixed` columns are left to `extra_kinds`."""

    name: str
    columns: tuple[str, ...]
    tag: str
    keyed: bool
    good: st.SearchStrategy[dict[str, Any]]
    required: dict[str, str]
    bad: tuple[BadValue, ...] = ()
    text: tuple[str, ...] = ()
    huge: dict[str, str] = field(default_factory=dict)
    utf8: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()
    extra_kinds: tuple[st.SearchStrategy[Record], ...] = ()


def _slots(t: Table, fmt: Format) -> list[st.SearchStrategy[Record]]:
    """One table's kinds of case in turn: a good record before each kind of fault."""
    shapes = JSONL_SHAPES if isinstance(fmt, Jsonl) else DELIMITED_SHAPES
    faults = [
        _missing(t, fmt),
        *(_shaped(t, shape) for shape in shapes),
        _fuzzed(t, fmt),
        _blank_line(t),
        *(_bad_value(t, bad) for bad in t.bad),
        *_bytes_kinds(t, fmt),
        *([_huge(t)] if t.huge else []),
        *([_duplicate(t)] if t.keyed else []),
        *([_quoted(t, fmt)] if t.text else []),
        *t.extra_kinds,
    ]
    return [kind for fault in faults for kind in (_good(t), fault)]


def _good(t: Table) -> st.SearchStrategy[Record]:
    return t.good.map(lambda f: Record(t.name, "good", GOOD, f))


@st.composite
def _bad_value(draw: st.DrawFn, t: Table, bad: BadValue) -> Record:
    fields = draw(t.good) | {bad.column: draw(bad.values)}
    return Record(t.name, bad.kind, BAD, fields, reason=bad.reason)


@st.composite
def _missing(draw: st.DrawFn, t: Table, fmt: Format) -> Record:
    column = draw(st.sampled_from(sorted(t.required)))
    fields = draw(t.good) | {column: draw(fmt.blank())}
    return Record(t.name, f"missing {column}", BAD, fields, reason=t.required[column])


@st.composite
def _broken_utf8(draw: st.DrawFn, t: Table, fmt: Format) -> Record:
    column = draw(st.sampled_from(t.utf8))
    fields = draw(t.good)
    fields[column], broken = fmt.with_broken(fields.get(column, ""), draw(BROKEN_UTF8))
    return Record(t.name, "broken utf-8", BAD, fields, reason="invalid characters", broken=broken)


def _bytes_kinds(t: Table, fmt: Format) -> list[st.SearchStrategy[Record]]:
    """Invalid UTF-8 in a UTF-8 file is a fault; a latin-1 file (MovieLens' items, all of ml-1m)
    takes any byte as a character, so there the same bytes in free text are good."""
    if isinstance(fmt, Delimited) and fmt.encoding != "UTF-8":
        return [_latin1(t, fmt)] if t.text else []
    return [_broken_utf8(t, fmt)] if t.utf8 else []


@st.composite
def _latin1(draw: st.DrawFn, t: Table, fmt: Format) -> Record:
    column = draw(st.sampled_from(t.text))
    fields = draw(t.good)
    fields[column], _ = fmt.with_broken(fields[column], draw(BROKEN_UTF8))
    return Record(t.name, "latin-1 bytes", GOOD, fields)


@st.composite
def _huge(draw: st.DrawFn, t: Table) -> Record:
    column = draw(st.sampled_from(sorted(t.huge)))
    fields = draw(t.good) | {column: "x" * draw(HUGE)}
    reason = t.huge[column]
    return Record(t.name, f"huge {column}", BAD if reason else GOOD, fields, reason=reason)


@st.composite
def _duplicate(draw: st.DrawFn, t: Table) -> Record:
    fields = draw(t.good) | {t.tag: Slot.DUP}
    return Record(t.name, "duplicated key", DUP, fields, reason="duplicate", pick=draw(st.integers(0, 999)))


@st.composite
def _shaped(draw: st.DrawFn, t: Table, shape: str) -> Record:
    where = draw(st.integers(0, 10_000))  # picks the field, cut or variant the shape uses
    return Record(t.name, f"line: {shape}", BAD, draw(t.good), shape=(shape, where), reason="malformed")


@st.composite
def _fuzzed(draw: st.DrawFn, t: Table, fmt: Format) -> Record:
    column = draw(st.sampled_from([c for c in t.columns if c != t.tag and c not in t.fixed]))
    fields = draw(t.good) | {column: draw(fmt.fuzz())}
    return Record(t.name, f"arbitrary {column}", ANY, fields)


@st.composite
def _quoted(draw: st.DrawFn, t: Table, fmt: Format) -> Record:
    column = draw(st.sampled_from(t.text))
    fields = draw(t.good) | {column: fmt.quoted(draw(WORD))}
    return Record(t.name, f"separator in {column}", GOOD, fields)


def _blank_line(t: Table) -> st.SearchStrategy[Record]:
    return st.sampled_from([b"", b"  ", b"\t"]).map(
        lambda b: Record(t.name, "blank line", BLANK, {"line": b})
    )


# -- loaders --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How one loader's files are laid out for one file batch: the file of each table, its
    format and header, and the config overrides pointing ingest at them."""

    name: str
    files: dict[str, str]
    formats: dict[str, Format]
    overrides: Callable[[Path], list[str]]
    header: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Loader:
    """A loader under test: its tables, the anchor records every file starts with (the items the
    behaviours name, so good behaviours are good), its layouts (alternated between files), and the
    tables whose written rows come from other tables (Taobao's items)."""

    name: str
    tables: tuple[Table, ...]
    anchors: tuple[Record, ...]
    layouts: tuple[Layout, ...]
    derived: tuple[str, ...] = ()

    def strategy(self, layout: Layout) -> st.SearchStrategy[Record]:
        """A case of any kind: one flat choice among every table's slots (the tables filled to the
        same number of slots), which hypothesis makes near uniform; nested choices would favour
        its simplest branches and starve some kinds of fault."""
        per_table = [_slots(t, layout.formats[t.name]) for t in self.tables]
        longest = max(map(len, per_table))
        slots = [table[i % len(table)] for i in range(longest) for table in per_table]
        return st.sampled_from(slots).flatmap(lambda kind: kind)

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)


ANCHOR_ITEMS = tuple(f"T{n:05d}Z" for n in range(5))  # the tags of the first five records
ITEM_REF = _padded(st.sampled_from(ANCHOR_ITEMS))
TEXT_TS = (
    BadValue("wrong type: ts", "ts", NOT_A_NUMBER, "unparseable ts"),
    BadValue("no such day: ts", "ts", NO_SUCH_DAY, "unparseable ts"),
    BadValue("ts too early", "ts", EARLY_TS_TEXT, "ts before 1995-01-01"),
    BadValue("ts too late", "ts", LATE_TS_TEXT, f"ts after ingest end date {RUN_DT}"),
)


def _epoch_ts(per_second: int, as_text: bool) -> tuple[BadValue, ...]:
    e = _epochs(per_second)
    text = (lambda s: s.map(str)) if as_text else (lambda s: s)
    return (
        BadValue("wrong type: ts", "ts", NOT_A_NUMBER, "unparseable ts"),
        BadValue("ts too early", "ts", text(e["early"]), "ts before 1995-01-01"),
        BadValue("ts too late", "ts", text(e["late"]), f"ts after ingest end date {RUN_DT}"),
        BadValue("ts overflows", "ts", text(e["overflow"]), "unparseable ts"),
        BadValue("ts beyond a long", "ts", text(e["beyond a long"]), "unparseable ts"),
    )


def _rating_faults(column: str = "rating") -> tuple[BadValue, ...]:
    return (
        BadValue("wrong type: rating", column, NOT_A_NUMBER, "rating is not a number"),
        BadValue("NaN rating", column, st.sampled_from(["NaN", "nan"]), "rating is NaN"),
    )


def _unknown_item(column: str = "item_id") -> BadValue:
    return BadValue("unknown item", column, WORD.map(lambda w: "zz" + w), "unknown item_id")


def _canonical_items() -> Table:
    return Table(
        "items",
        ("item_id", "title", "category", "category_path", "brand", "price"),
        tag="item_id",
        keyed=True,
        good=st.fixed_dictionaries(
            {
                "item_id": st.just(Slot.TAG),
                "title": TITLE,
                "category": _padded(WORD),
                "category_path": st.one_of(
                    st.just(""), st.lists(WORD, min_size=1, max_size=3).map(" > ".join)
                ),
                "brand": st.one_of(st.just(""), WORD),
                "price": st.one_of(st.just(""), st.floats(0, 1e6).map(lambda p: f"{p:.2f}")),
            }
        ),
        required={"item_id": "missing item_id", "title": "missing title", "category": "missing category"},
        bad=(
            BadValue("wrong type: price", "price", NOT_A_NUMBER, "price is not a number"),
            BadValue(
                "negative price", "price", st.floats(-1e6, -0.01).map(lambda p: f"{p:.2f}"), "negative price"
            ),
        ),
        text=("title", "category_path", "brand"),
        huge={"title": "title longer than 2000", "category_path": "", "brand": ""},
        utf8=("title", "category", "category_path", "brand", "price"),
    )


def _canonical_users() -> Table:
    return Table(
        "users",
        ("user_id", "age", "gender", "region", "occupation"),
        tag="user_id",
        keyed=True,
        good=st.fixed_dictionaries(
            {
                "user_id": st.just(Slot.TAG),
                "age": st.one_of(st.just(""), st.integers(0, 120).map(str)),
                "gender": st.sampled_from(["F", "M", "", "other"]),
                "region": WORD,
                "occupation": TITLE,
            }
        ),
        required={"user_id": "missing user_id"},
        bad=(
            BadValue("wrong type: age", "age", NOT_A_NUMBER, "age is not an integer"),
            BadValue(
                "age beyond an int", "age", st.integers(2**31, 10**15).map(str), "age is not an integer"
            ),
            BadValue(
                "age out of range",
                "age",
                st.one_of(st.integers(121, 2**31 - 1), st.integers(-(2**31), -1)).map(str),
                "age outside 0..120",
            ),
        ),
        text=("occupation", "region"),
        huge={"occupation": ""},
        utf8=("age", "gender", "region", "occupation"),
    )


def _canonical_env() -> Table:
    return Table(
        "env_signals",
        ("dt", "region", "season", "weather", "festivals", "trends"),
        tag="weather",
        keyed=False,
        good=st.fixed_dictionaries(
            {
                "dt": st.dates(_dt.date(2025, 1, 1), _dt.date(2025, 12, 31)).map(str),
                "region": WORD,
                "season": _padded(st.sampled_from(["spring", "summer", "autumn", "winter"])),
                "weather": st.just(Slot.TAG),
                "festivals": st.lists(WORD, max_size=3).map("|".join),
                "trends": st.lists(WORD, max_size=3).map("|".join),
            }
        ),
        required={"dt": "missing or unparseable dt", "region": "missing region", "season": "unknown season"},
        bad=(
            BadValue("wrong type: dt", "dt", NOT_A_NUMBER, "missing or unparseable dt"),
            BadValue(
                "no such day: dt", "dt", st.sampled_from(["2025-02-30", "2025-13-01"]), "unparseable dt"
            ),
            BadValue("unknown season", "season", NOT_A_NUMBER, "unknown season"),
        ),
        text=("festivals", "trends"),
        huge={"trends": ""},
        utf8=("dt", "region", "season", "festivals", "trends"),
    )


def _canonical_behaviors() -> Table:
    return Table(
        "behaviors",
        ("user_id", "item_id", "behavior", "query", "ts", "rating"),
        tag="query",
        keyed=False,
        good=st.fixed_dictionaries(
            {
                "user_id": _padded(WORD),
                "item_id": ITEM_REF,
                "behavior": _padded(st.sampled_from(BEHAVIORS)),
                "query": st.just(Slot.TAG),
                "ts": GOOD_TS_TEXT,
                "rating": st.one_of(st.just(""), st.sampled_from(["1", "2", "3.5", "4", "5"])),
            }
        ),
        required={
            "user_id": "missing user_id",
            "item_id": "missing item_id",
            "behavior": "missing behavior",
            "ts": "missing ts",
        },
        bad=(
            *TEXT_TS,
            BadValue("epoch ts in a text source", "ts", _epochs(1)["good"].map(str), "unparseable ts"),
            *_rating_faults(),
            _unknown_item(),
            BadValue("unknown behavior", "behavior", NOT_A_NUMBER, "unknown behavior"),
        ),
        huge={"user_id": ""},
        utf8=("user_id", "item_id", "behavior", "ts", "rating"),
        extra_kinds=(_search(),),
    )


def _canonical() -> Loader:
    """The canonical CSV layout: a folder per input table, each file with its header row."""
    items = _canonical_items()
    users = _canonical_users()
    env = _canonical_env()
    behaviors = _canonical_behaviors()
    csv = Delimited(",")
    layout = Layout(
        "csv",
        files={t: f"{t}/part.csv" for t in ("items", "users", "env_signals", "behaviors")},
        formats={t: csv for t in ("items", "users", "env_signals", "behaviors")},
        header={t.name: ",".join(t.columns).encode() for t in (items, users, env, behaviors)},
        overrides=lambda src: ["data=canonical", f"data.path={src}", "data.format=csv"],
    )
    return Loader("canonical", (items, users, env, behaviors), _item_anchors(items), (layout,))


def _search() -> st.SearchStrategy[Record]:
    """A search: no item needed, the query (the tag) is what it carries."""
    fields = st.fixed_dictionaries(
        {
            "user_id": WORD,
            "item_id": st.sampled_from(["", " "]),
            "behavior": st.just("search"),
            "query": st.just(Slot.TAG),
            "ts": GOOD_TS_TEXT,
            "rating": st.just(""),
        }
    )
    return fields.map(lambda f: Record("behaviors", "search", GOOD, f))


def _item_anchors(items: Table) -> tuple[Record, ...]:
    return tuple(
        Record("items", "anchor", GOOD, {c: "" for c in items.columns} | _anchor_item(i)) for i in range(5)
    )


def _anchor_item(i: int) -> dict[str, Any]:
    return {
        "item_id": Slot.TAG,
        "title": f"anchor item {i}",
        "category": "anchors",
        "genres": ("Comedy",),
        "release_date": "01-Jan-1995",
        "video_release_date": "",
        "imdb_url": "http://x",
        "parent_asin": Slot.TAG,
        "main_category": "anchors",
        "categories": ["anchors"],
        "store": "drill",
        "price": "1.5",
    }


ML_GENRES = ("unknown", "Action", "Comedy", "Drama", "Film-Noir", "Sci-Fi", "Western")


def _ml100k_item(fields: dict[str, Any]) -> list[Any]:
    from sparkio.loaders import ML100K_GENRES

    genres = fields["genres"]
    flags = (
        ["1" if g in genres else "0" for g in ML100K_GENRES] if isinstance(genres, tuple) else [genres] * 19
    )
    head = [fields[c] for c in ("item_id", "title", "release_date", "video_release_date", "imdb_url")]
    return head + flags


def _ml_ratings() -> Table:
    return Table(
        "behaviors",
        ("user_id", "item_id", "rating", "ts"),
        tag="user_id",
        keyed=False,
        good=st.fixed_dictionaries(
            {
                "user_id": st.just(Slot.TAG),
                "item_id": ITEM_REF,
                "rating": st.sampled_from(["1", "2", "3", "4", "5"]),
                "ts": _epochs(1)["good"].map(str),
            }
        ),
        required={"item_id": "missing item_id", "ts": "missing ts"},
        bad=(*_epoch_ts(1, as_text=True), *_rating_faults(), _unknown_item()),
        huge={"item_id": "unknown item_id"},
        utf8=("item_id", "rating", "ts"),
    )


def _ml_movies() -> Table:
    return Table(
        "items",
        ("item_id", "title", "release_date", "video_release_date", "imdb_url", "genres"),
        tag="item_id",
        keyed=True,
        good=st.fixed_dictionaries(
            {
                "item_id": st.just(Slot.TAG),
                "title": TITLE,
                "release_date": st.just("01-Jan-1995"),
                "video_release_date": st.just(""),
                "imdb_url": st.just("http://us.imdb.com/x"),
                "genres": st.sets(st.sampled_from(ML_GENRES), min_size=1, max_size=3).map(
                    lambda s: tuple(sorted(s))
                ),
            }
        ),
        required={"item_id": "missing item_id", "title": "missing title"},
        bad=(BadValue("no genre", "genres", st.just(()), "missing category"),),
        text=("title",),
        huge={"title": "title longer than 2000"},
    )


def _ml_users() -> Table:
    return Table(
        "users",
        ("user_id", "age", "gender", "occupation", "zip"),
        tag="user_id",
        keyed=True,
        good=st.fixed_dictionaries(
            {
                "user_id": st.just(Slot.TAG),
                "age": st.integers(0, 120).map(str),
                "gender": st.sampled_from(["F", "M"]),
                "occupation": st.one_of(WORD, st.integers(0, 20).map(str)),
                "zip": st.one_of(st.integers(0, 99999).map(lambda z: f"{z:05d}"), WORD),
            }
        ),
        required={"user_id": "missing user_id"},
        bad=(
            BadValue("wrong type: age", "age", NOT_A_NUMBER, "age is not an integer"),
            BadValue("age out of range", "age", st.integers(121, 2**31 - 1).map(str), "age outside 0..120"),
        ),
        text=("occupation",),
        huge={"zip": ""},
        # Not zip: the loader keeps only a region made from its first character.
        utf8=("age", "gender", "occupation"),
    )


def _movielens() -> Loader:
    """ml-100k and ml-1m in turn: the same tables in their two layouts, separators and encodings."""
    ratings = _ml_ratings()
    movies = _ml_movies()
    users = _ml_users()
    anchors = (
        *(Record("items", "anchor", GOOD, _anchor_item(i)) for i in range(5)),
        Record(
            "users",
            "anchor",
            GOOD,
            {"user_id": Slot.TAG, "age": "30", "gender": "F", "occupation": "1", "zip": "1"},
        ),
        Record(
            "behaviors",
            "anchor",
            GOOD,
            {"user_id": Slot.TAG, "item_id": ANCHOR_ITEMS[0], "rating": "4", "ts": str(_seconds(END) - 1)},
        ),
    )
    latin = "ISO-8859-1"
    ml100k = Layout(
        "ml-100k",
        files={"behaviors": "u.data", "items": "u.item", "users": "u.user"},
        formats={
            "behaviors": Delimited("\t"),
            "items": Delimited("|", latin, _ml100k_item),
            "users": Delimited("|"),
        },
        overrides=lambda src: ["data=movielens", f"data.path={src}"],
    )
    ml1m_user = ("user_id", "gender", "age", "occupation", "zip")
    ml1m = Layout(
        "ml-1m",
        files={"behaviors": "ratings.dat", "items": "movies.dat", "users": "users.dat"},
        formats={
            "behaviors": Delimited("::", latin),
            "items": Delimited("::", latin, lambda f: [f["item_id"], f["title"], f["genres"]]),
            "users": Delimited("::", latin, lambda f: [f[c] for c in ml1m_user]),
        },
        overrides=lambda src: ["data=movielens", f"data.path={src}"],
    )
    return Loader("movielens", (ratings, movies, users), anchors, (ml100k, ml1m))


def _amazon_reviews() -> Table:
    ms = _epochs(1_000)
    return Table(
        "behaviors",
        (
            "rating",
            "title",
            "text",
            "asin",
            "parent_asin",
            "user_id",
            "timestamp",
            "helpful_vote",
            "verified_purchase",
        ),
        tag="user_id",
        keyed=False,
        good=st.fixed_dictionaries(
            {
                "user_id": st.just(Slot.TAG),
                "parent_asin": ITEM_REF.map(str.strip),
                "timestamp": st.one_of(ms["good"], ms["good"].map(str)),
            },
            optional={
                "rating": st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0]),
                "title": TITLE,
                "text": TITLE,
                "asin": WORD,
                "helpful_vote": st.integers(0, 10_000),
                "verified_purchase": st.booleans(),
            },
        ),
        required={"parent_asin": "missing item_id", "timestamp": "missing ts"},
        bad=(
            *(replace(b, column="timestamp") for b in _epoch_ts(1_000, as_text=False)),
            BadValue(
                "ts as a float", "timestamp", st.floats(1e12, 1.7e12).map(lambda f: f + 0.5), "unparseable ts"
            ),
            BadValue("wrong type: rating", "rating", NOT_A_NUMBER, "malformed record"),
            BadValue("rating as text", "rating", st.sampled_from(["4", "4.0"]), "malformed record"),
            BadValue("wrong type: helpful_vote", "helpful_vote", NOT_A_NUMBER, "malformed record"),
            BadValue(
                "wrong type: verified_purchase", "verified_purchase", st.just("yes"), "malformed record"
            ),
            BadValue("wrong type: parent_asin", "parent_asin", st.just({"id": 1}), "unknown item_id"),
            _unknown_item("parent_asin"),
        ),
        huge={"text": "", "title": ""},
        utf8=("parent_asin",),
    )


def _amazon_meta() -> Table:
    return Table(
        "items",
        ("main_category", "title", "store", "categories", "price", "parent_asin"),
        tag="parent_asin",
        keyed=True,
        good=st.fixed_dictionaries(
            {
                "parent_asin": st.just(Slot.TAG),
                "title": TITLE,
                "main_category": WORD,
                "categories": st.lists(WORD, max_size=4),
            },
            optional={
                "store": WORD,
                "price": st.one_of(st.none(), st.floats(0, 1e4).map(lambda p: f"{p:.2f}")),
            },
        ),
        required={"parent_asin": "missing item_id", "title": "missing title"},
        bad=(
            BadValue("wrong type: price", "price", NOT_A_NUMBER, "price is not a number"),
            BadValue(
                "negative price", "price", st.floats(-1e4, -0.01).map(lambda p: f"{p:.2f}"), "negative price"
            ),
            BadValue("wrong type: categories", "categories", WORD, "malformed record"),
        ),
        text=("title", "store"),
        huge={"title": "title longer than 2000", "store": ""},
        utf8=("title", "store"),
        extra_kinds=(_no_category(),),
    )


def _amazon() -> Loader:
    """Amazon Reviews 2023: reviews JSONL (plain and gzipped in turn) and item metadata JSONL."""
    reviews = _amazon_reviews()
    meta = _amazon_meta()
    anchors = (
        *(
            Record("items", "anchor", GOOD, {k: v for k, v in _anchor_item(i).items() if k in meta.columns})
            for i in range(5)
        ),
        Record(
            "behaviors",
            "anchor",
            GOOD,
            {"user_id": Slot.TAG, "parent_asin": ANCHOR_ITEMS[0], "timestamp": 1_600_000_000_000},
        ),
    )
    return Loader(
        "amazon", (reviews, meta), anchors, (_amazon_layout(gzipped=False), _amazon_layout(gzipped=True))
    )


def _no_category() -> st.SearchStrategy[Record]:
    """Meta without any category: no categories and no main_category."""
    return st.fixed_dictionaries(
        {
            "parent_asin": st.just(Slot.TAG),
            "title": TITLE,
            "categories": st.sampled_from([[], [""], [" "], Slot.ABSENT]),
            "main_category": st.sampled_from([Slot.ABSENT, None, ""]),
        }
    ).map(lambda f: Record("items", "no category", BAD, f, reason="missing category"))


def _amazon_layout(gzipped: bool) -> Layout:
    suffix = ".gz" if gzipped else ""
    files = {"behaviors": f"reviews.jsonl{suffix}", "items": "meta.jsonl"}
    return Layout(
        "jsonl.gz" if gzipped else "jsonl",
        files=files,
        formats={"behaviors": Jsonl(), "items": Jsonl()},
        overrides=lambda src: [
            "data=amazon",
            f"data.reviews={src / files['behaviors']}",
            f"data.meta={src / files['items']}",
        ],
    )


TAOBAO_POOL = {f"P{i}": f"C{i % 4}" for i in range(10)}


def _taobao_behaviors() -> Table:
    return Table(
        "behaviors",
        ("user_id", "item_id", "category_id", "behavior_type", "ts"),
        tag="user_id",
        keyed=False,
        good=_taobao_good(),
        required={"item_id": "missing item_id", "behavior_type": "missing behavior", "ts": "missing ts"},
        bad=(
            *_epoch_ts(1, as_text=True),
            BadValue(
                "unknown behavior",
                "behavior_type",
                st.sampled_from(["clk", "xbuy", "pv2"]),
                "unknown behavior",
            ),
        ),
        # The placeholder title names the item: a 2,001-character id makes the item's title too long.
        huge={"item_id": "unknown item_id"},
        utf8=("item_id", "behavior_type", "ts"),
        # A pool item's category decides whether the item is good for every row naming it.
        fixed=("category_id",),
        extra_kinds=(_taobao_category(),),
    )


@st.composite
def _taobao_good(draw: st.DrawFn) -> dict[str, Any]:
    """A good line: a pool item with its own category, a behaviour type the loader maps (Taobao
    writes them in lower case; spaces around are trimmed)."""
    item = draw(st.sampled_from(sorted(TAOBAO_POOL)))
    return {
        "user_id": Slot.TAG,
        "item_id": item,
        "category_id": TAOBAO_POOL[item],
        "behavior_type": draw(_padded(st.sampled_from(["pv", "buy", "cart", "fav"]))).lower(),
        "ts": str(draw(_epochs(1)["good"])),
    }


def _taobao() -> Loader:
    """Taobao UserBehavior.csv: behaviours only; the loader derives the items from them."""
    behaviors = _taobao_behaviors()
    anchors = (
        Record(
            "behaviors",
            "anchor",
            GOOD,
            {
                "user_id": Slot.TAG,
                "item_id": "P0",
                "category_id": "C0",
                "behavior_type": "pv",
                "ts": str(_seconds(END) - 1),
            },
        ),
    )
    layout = Layout(
        "csv",
        files={"behaviors": "UserBehavior.csv"},
        formats={"behaviors": Delimited(",")},
        overrides=lambda src: ["data=taobao", f"data.path={src / 'UserBehavior.csv'}"],
    )
    return Loader("taobao", (behaviors,), anchors, (layout,), derived=("items",))


def _taobao_category() -> st.SearchStrategy[Record]:
    """An item seen only with a blank or broken category: no good item, so its behaviour names an
    unknown item (a fresh item id, so the pool items the good rows name stay good)."""
    category = st.one_of(st.sampled_from(["", " "]), BROKEN_UTF8.map(lambda b: b"C" + b))
    return st.tuples(WORD, category, _epochs(1)["good"]).map(
        lambda t: Record(
            "behaviors",
            "bad item category",
            BAD,
            {
                "user_id": Slot.TAG,
                "item_id": "Q" + t[0],
                "category_id": t[1],
                "behavior_type": "pv",
                "ts": str(t[2]),
            },
            reason="unknown item_id",
        )
    )


LOADERS: dict[str, Callable[[], Loader]] = {
    "canonical": _canonical,
    "movielens": _movielens,
    "amazon": _amazon,
    "taobao": _taobao,
}


# -- generation ------------------------------------------------------------------------------------


def generate(strategy: st.SearchStrategy[Record], n: int, salt: int) -> list[Record]:
    """n records from `strategy`, the same ones on every run: hypothesis drives the drawing (its
    generation phase only, seeded, no example database) and the 'test' just keeps each record."""
    drawn: list[Record] = []

    @seed(SEED + salt)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )
    @given(strategy)
    def keep(record: Record) -> None:
        drawn.append(record)

    keep()
    return drawn


# -- files ----------------------------------------------------------------------------------------


def place(loader: Loader, layout: Layout, records: Sequence[Record]) -> list[Placed]:
    """The records of one file with their tags (position in the file) and lines; a duplicated
    key takes the tag of an earlier good record of its table (or becomes good when there is none)."""
    placed: list[Placed] = []
    good_tags: dict[str, list[str]] = defaultdict(list)
    for n, record in enumerate([*loader.anchors, *records]):
        tag, verdict = f"T{n:05d}Z", record.verdict
        if verdict == DUP:
            earlier = good_tags[record.table]
            if earlier:
                tag = earlier[record.pick % len(earlier)]
            else:
                verdict = GOOD
        fields = {k: (tag if v in (Slot.TAG, Slot.DUP) else v) for k, v in record.fields.items()}
        t = loader.table(record.table)
        keeps_tag = fields.get(t.tag) == tag
        lines = _render(layout.formats[record.table], t, record, fields)
        placed.append(Placed(record, tag if keeps_tag else None, verdict, lines))
        if verdict == GOOD and keeps_tag:
            good_tags[record.table].append(tag)
    return placed


def _render(fmt: Format, t: Table, record: Record, fields: dict[str, Any]) -> list[bytes]:
    if record.verdict == BLANK:
        return [record.fields["line"]]
    line = fmt.line(fields, t.columns)
    if record.broken:
        line = line.replace(BROKEN_MARK.encode(), record.broken)
    if record.shape:
        return fmt.damaged(line, record.shape)
    return [line]


def write_files(src: Path, layout: Layout, placed: Sequence[Placed]) -> None:
    """Every file of the layout: its header, then its records' lines, newline-terminated."""
    src.mkdir(parents=True, exist_ok=True)
    for table, name in layout.files.items():
        lines = [layout.header[table]] if table in layout.header else []
        lines += [line for p in placed if p.record.table == table for line in p.lines]
        data = b"".join(line + b"\n" for line in lines)
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(data, mtime=0) if name.endswith(".gz") else data)


def physical_lines(data: bytes) -> list[bytes]:
    """Lines as Hadoop's line reader splits them (LF, CR or CRLF ends a line)."""
    lines = re.split(rb"\r\n|\r|\n", data)
    return lines[:-1] if lines and lines[-1] == b"" else lines


def _blank_delimited(line: bytes) -> bool:
    """Spark's CSV reader skips a line Java's String.trim empties (only bytes <= 0x20): no row."""
    return all(b <= 0x20 for b in line)


def _blank_json(line: bytes) -> bool:
    """A JSONL line of nothing but JSON whitespace holds no record: no row."""
    return not line.strip(b" \t")


def rows_in(path: Path, json_lines: bool, header: bool) -> int:
    """The drill's own count of the rows a file holds, independent of Spark: its non-blank
    physical lines, less the header (the first non-blank line) of a file that has one."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    blank = _blank_json if json_lines else _blank_delimited
    n = sum(1 for line in physical_lines(data) if not blank(line))
    return max(n - 1, 0) if header else n


def counted_rows(src: Path, layout: Layout) -> dict[str, int]:
    return {
        table: rows_in(src / name, isinstance(layout.formats[table], Jsonl), table in layout.header)
        for table, name in layout.files.items()
    }


# -- ingest and what it wrote ---------------------------------------------------------------------


@dataclass
class Outcome:
    """One ingest run: its report (None when it raised), the error, and the written tables."""

    report: Any = None
    error: BaseException | None = None
    written: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    invalid_utf8: Counter[str] = field(default_factory=Counter)  # table -> values that are not UTF-8


def ingest(spark: SparkSession, warehouse: Path, overrides: Iterable[str], fraction: float = 1.0) -> Outcome:
    """The real ingest stage in this process, its summary kept off the drill's output."""
    from jobs import ingest as stage
    from jobs.stage import execute, open_context
    from recgpt.config import load_config

    cfg = load_config(
        [
            f"storage.warehouse={warehouse}",
            f"run.dt={RUN_DT}",
            f"ingest.max_quarantine_fraction={fraction}",
            *overrides,
        ]
    )
    outcome = Outcome()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            outcome.report = execute(open_context(cfg, "ingest", spark), stage.run)
    except Exception as exc:  # every outcome is counted; the drill decides what is a failure
        outcome.error = exc
    for name in ("behaviors", "items", "users", "env_signals", "quarantine"):
        rows, invalid = _read(warehouse / name)
        outcome.invalid_utf8[name] = invalid
        if name == "quarantine":
            outcome.quarantine = rows
        else:
            outcome.written[name] = rows
    return outcome


def _read(path: Path) -> tuple[list[dict[str, Any]], int]:
    """A Delta table's rows, and how many of its text values are not valid UTF-8: those break
    every Arrow or pandas reader, so the drill reads text as bytes and counts them."""
    import pyarrow as pa
    from deltalake import DeltaTable

    if not (path / "_delta_log").is_dir():
        return [], 0
    table = DeltaTable(str(path)).to_pyarrow_table()
    invalid, columns = 0, []
    for column in table.columns:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            columns.append(column.to_pylist())
            continue
        raw = column.cast(pa.large_binary()).to_pylist()
        invalid += sum(1 for v in raw if v is not None and v.decode("utf-8", "replace").encode() != v)
        columns.append([None if v is None else v.decode("utf-8", "replace") for v in raw])
    return [
        dict(zip(table.column_names, values, strict=True)) for values in zip(*columns, strict=True)
    ], invalid


def describe(exc: BaseException) -> str:
    """An exception in one line: its type and first line (a JVM trace shows as what it is)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:300]}"


def is_clear(exc: BaseException) -> bool:
    from recgpt.errors import RecGPTError

    return isinstance(exc, RecGPTError)


# -- checking one file ------------------------------------------------------------------------------


@dataclass
class Tally:
    """Figures summed over a loader's files, and what went wrong, one sentence per problem."""

    cases: int = 0
    rows_in: int = 0
    written: int = 0
    quarantined: int = 0
    duplicates: int = 0
    failures: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)

    def result(self, drill: str, seconds: float, details: dict[str, Any]) -> DrillResult:
        return DrillResult(
            drill,
            cases=self.cases,
            rows_in=self.rows_in,
            rows_written=self.written,
            rows_quarantined=self.quarantined,
            rows_lost=self.rows_in - self.written - self.quarantined,
            duplicates=self.duplicates,
            seconds=round(seconds, 1),
            failures=self.failures,
            details={"kinds": dict(sorted(self.kinds.items())), **details},
        )


def check_file(
    loader: Loader,
    layout: Layout,
    label: str,
    placed: list[Placed],
    src: Path,
    outcome: Outcome,
    tally: Tally,
) -> None:
    """Every rule of the module docstring for one ingested file, into `tally`."""
    fed = counted_rows(src, layout)
    if outcome.error is not None:
        verdict = "a clear error" if is_clear(outcome.error) else "a crash"
        tally.failures.append(
            f"{label}: ingest ended in {verdict} on a file meant to ingest: {describe(outcome.error)}"
        )
    written = {t: len(outcome.written.get(t, [])) for t in fed}
    quarantined = Counter(q["table_name"] for q in outcome.quarantine)
    tally.rows_in += sum(fed.values())
    tally.written += sum(written.values())
    tally.quarantined += sum(quarantined[t] for t in fed)
    for t, n in fed.items():
        if n != written[t] + quarantined[t]:
            tally.failures.append(
                f"{label}: {t}: {n} rows in, {written[t]} written + {quarantined[t]} quarantined"
            )
    _check_report(label, outcome, fed, loader.derived, quarantined, tally)
    tally.duplicates += _duplicate_keys(outcome)
    for table, n in sorted(outcome.invalid_utf8.items()):
        if n:
            tally.failures.append(f"{label}: {table} holds {n} text values that are not valid UTF-8")
    if any(not str(q["reason"]).strip() for q in outcome.quarantine):
        tally.failures.append(f"{label}: a quarantined row without a reason")
    for t in loader.tables:
        _check_verdicts(label, t, [p for p in placed if p.record.table == t.name], outcome, tally)


def _check_report(
    label: str,
    outcome: Outcome,
    fed: dict[str, int],
    derived: Sequence[str],
    quarantined: Counter[str],
    tally: Tally,
) -> None:
    """The stage's own figures against the drill's: rows in (plus derived tables' rows, which no
    file holds), rows out and rows quarantined."""
    report = outcome.report
    if report is None:
        return
    derived_rows = sum(len(outcome.written.get(t, [])) + quarantined[t] for t in derived)
    expected = sum(fed.values()) + derived_rows
    if report.rows_in != expected:
        tally.failures.append(f"{label}: the report says {report.rows_in} rows in, the files hold {expected}")
    if report.rows_quarantined != len(outcome.quarantine):
        held = len(outcome.quarantine)
        tally.failures.append(
            f"{label}: the report says {report.rows_quarantined} quarantined, the table holds {held}"
        )
    written = sum(len(rows) for rows in outcome.written.values())
    if report.rows_out != written:
        tally.failures.append(
            f"{label}: the report says {report.rows_out} rows out, the tables hold {written}"
        )


def _duplicate_keys(outcome: Outcome) -> int:
    """Rows beyond the first of a key in the written items and users (snapshots of unique keys)."""
    extra = 0
    for table, key in (("items", "item_id"), ("users", "user_id")):
        counts = Counter(row[key] for row in outcome.written.get(table, []))
        extra += sum(n - 1 for n in counts.values() if n > 1)
    return extra


def _check_verdicts(label: str, t: Table, placed: list[Placed], outcome: Outcome, tally: Tally) -> None:
    """Each tagged record against what it was built to become (see the module docstring)."""
    written = Counter(str(row[_written_column(t)]) for row in outcome.written.get(t.name, []))
    reasons: dict[str, list[str]] = defaultdict(list)
    for q in outcome.quarantine:
        if q["table_name"] == t.name:
            for tag in set(TAG_RE.findall(q["raw"])):
                reasons[tag].append(q["reason"])
    groups: dict[str, list[Placed]] = defaultdict(list)
    for p in placed:
        if p.tag is not None:
            groups[p.tag].append(p)
    problems: Counter[str] = Counter()
    for tag, members in groups.items():
        for problem in _group_problems(members, written[tag], reasons[tag]):
            problems[problem] += 1
    strays = sum(n for tag, n in written.items() if tag not in groups)
    if strays:
        problems["written rows that match no generated record"] += strays
    tally.failures += [f"{label}: {t.name}: {n} x {problem}" for problem, n in sorted(problems.items())]


def _written_column(t: Table) -> str:
    """Where a table's tag column lands in the written table (the loaders rename some)."""
    return {"parent_asin": "item_id"}.get(t.tag, t.tag)


def _group_problems(members: list[Placed], written: int, reasons: list[str]) -> list[str]:
    """What is wrong with the records sharing one tag (one record, or a key and its duplicates)."""
    verdicts = {p.verdict for p in members}
    first = members[0].record
    if verdicts <= {GOOD, DUP}:
        problems = (
            [] if written == 1 else [f"'{first.kind}' built good written {written} times (expected once)"]
        )
        dups = len(members) - 1
        if sum("duplicate" in r for r in reasons) != dups:
            problems.append(f"key with {dups} duplicate(s) not quarantined as duplicates: {reasons}")
        return problems
    if verdicts == {BAD}:
        problems = [f"'{first.kind}' built bad but written"] if written else []
        if members[0].tag_written and not any(first.reason in r for r in reasons):
            problems.append(
                f"'{first.kind}' quarantined without '{first.reason}': {reasons or 'not quarantined'}"
            )
        return problems
    return [f"'{first.kind}' written {written} times"] if written > 1 else []


# -- the drill per loader ---------------------------------------------------------------------------


def fuzz_loader(spark: SparkSession, name: str, workdir: Path, cases: int) -> DrillResult:
    """`cases` generated records of one loader, in files of about BATCH records, each ingested
    once; a file's folder is kept when it failed, to reproduce it."""
    loader = LOADERS[name]()
    started = time.perf_counter()
    tally = Tally()
    sizes = batch_sizes(cases)
    for i, size in enumerate(sizes):
        layout = loader.layouts[i % len(loader.layouts)]
        records = generate(loader.strategy(layout), size, salt=1_000 * list(LOADERS).index(name) + i)
        tally.cases += len(records)
        tally.kinds.update(r.kind for r in records)
        placed = place(loader, layout, records)
        base = workdir / name / f"file{i}"
        write_files(base / "src", layout, placed)
        known = len(tally.failures)
        outcome = ingest(spark, base / "wh", layout.overrides(base / "src"))
        check_file(loader, layout, f"file {i} ({layout.name})", placed, base / "src", outcome, tally)
        if len(tally.failures) == known:
            shutil.rmtree(base)
    return tally.result(f"fuzz.{name}", time.perf_counter() - started, {"files": len(sizes)})


def batch_sizes(cases: int) -> list[int]:
    """`cases` split into files of at most BATCH records, as even as can be."""
    files = max(1, -(-cases // BATCH))
    return [cases // files + (1 if i < cases % files else 0) for i in range(files)]


# -- whole-file problems ----------------------------------------------------------------------------

ITEMS_CSV = b"item_id,title,category\ni1,wool scarf,scarves\ni2,oak desk,desks\n"
BEHAVIORS_HEADER = b"user_id,item_id,behavior,ts\n"
BEHAVIORS_ROWS = (
    b"u1,i1,view,2025-10-01 10:00:00\nu2,i2,cart,2025-10-02 11:00:00\nu3,i1,fav,2025-10-03 12:00:00\n"
)
ML_DATA = b"1\t10\t4\t881250949\n2\t10\t5\t881250950\n3\t10\t3\t881250951\n"
ML_ITEM = b"10|Heat (1995)|01-Jan-1995||http://x|" + b"|".join([b"0"] * 5 + [b"1"] + [b"0"] * 13) + b"\n"
ML_USER = b"1|24|M|technician|85711\n2|53|F|other|02138\n"
REVIEWS = b"".join(
    json.dumps(
        {"user_id": f"u{i}", "parent_asin": "P1", "rating": 4.0, "timestamp": 1_600_000_000_000 + i}
    ).encode()
    + b"\n"
    for i in range(200)
)
META = json.dumps(
    {"parent_asin": "P1", "title": "face oil", "main_category": "Beauty", "categories": []}
).encode()
TAOBAO = b"1,100,7,pv,1511544070\n1,100,7,buy,1511544080\n2,101,8,cart,1511544090\n"


def _garbage(n: int = 4096) -> bytes:
    """Seeded binary garbage (every byte value, line breaks included)."""
    return random.Random(SEED).randbytes(n)


def _truncated_gzip(data: bytes) -> bytes:
    packed = gzip.compress(data, mtime=0)
    return packed[: len(packed) * 2 // 3]


@dataclass(frozen=True)
class WholeFile:
    """A file-level problem: `files` (path -> bytes, under the source folder) and the ingest
    config; `expect` is 'error' (a clear error naming `names`) or 'rows' (rows in = written +
    quarantined for the counted `rows` files, at least `quarantined` of them quarantined)."""

    name: str
    source: str
    files: dict[str, bytes]
    expect: str
    names: str = ""
    rows: dict[str, str] = field(default_factory=dict)  # table -> file whose rows feed it
    quarantined: int = 0
    fmt: str = "csv"
    ci: bool = False  # one of the few the reduced drill runs

    def overrides(self, src: Path) -> list[str]:
        if self.source == "canonical":
            return ["data=canonical", f"data.path={src}", f"data.format={self.fmt}"]
        if self.source == "movielens":
            return ["data=movielens", f"data.path={src}"]
        if self.source == "amazon":
            reviews = next(p for p in (*self.files, "reviews.jsonl") if p.startswith("reviews"))
            return ["data=amazon", f"data.reviews={src / reviews}", f"data.meta={src / 'meta.jsonl'}"]
        return ["data=taobao", f"data.path={src / 'UserBehavior.csv'}"]


def _canonical_files(behaviors: bytes, name: str = "behaviors/part.csv") -> dict[str, bytes]:
    return {"items/part.csv": ITEMS_CSV, name: behaviors}


def _parquet(rows: dict[str, list[Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table(rows), sink)
    return sink.getvalue()


def _items_parquet() -> bytes:
    return _parquet({"item_id": ["i1", "i2"], "title": ["wool scarf", "oak desk"], "category": ["s", "d"]})


def _wrong_types_parquet() -> bytes:
    """Behaviours with numbers for user ids, binary item ids (one not UTF-8), typed timestamps and
    ratings as text: two of the four rows break a rule."""
    import pyarrow as pa

    return _parquet(
        {
            "user_id": pa.array([1, 2, 3, 4]),
            "item_id": pa.array([b"i1", b"i2", b"\xff\xfe", b"i1"], pa.binary()),
            "behavior": ["view", "cart", "view", "fav"],
            "ts": pa.array([_dt.datetime(2025, 10, d) for d in (1, 2, 3, 4)], pa.timestamp("us", tz="UTC")),
            "rating": ["4", "x", "NaN", "5"],
        }
    )


WHOLE_FILES: tuple[WholeFile, ...] = (
    WholeFile("canonical: empty behaviors file", "canonical", _canonical_files(b""), "error", "behaviors"),
    WholeFile(
        "canonical: no items folder",
        "canonical",
        {"behaviors/part.csv": BEHAVIORS_HEADER + BEHAVIORS_ROWS},
        "error",
        "items",
    ),
    WholeFile("canonical: binary garbage", "canonical", _canonical_files(_garbage()), "error", "behaviors"),
    WholeFile(
        "canonical: no header row", "canonical", _canonical_files(BEHAVIORS_ROWS), "error", "behaviors"
    ),
    WholeFile(
        "canonical: wrong header",
        "canonical",
        _canonical_files(b"uid,iid,action,time\n" + BEHAVIORS_ROWS),
        "error",
        "behaviors",
    ),
    WholeFile(
        "canonical: duplicated header column",
        "canonical",
        _canonical_files(b"user_id,user_id,item_id,behavior,ts\n" + BEHAVIORS_ROWS),
        "error",
        "behaviors",
    ),
    WholeFile(
        "canonical: header only", "canonical", _canonical_files(BEHAVIORS_HEADER), "error", "behaviors"
    ),
    WholeFile(
        "canonical: byte-order mark",
        "canonical",
        _canonical_files(b"\xef\xbb\xbf" + BEHAVIORS_HEADER + BEHAVIORS_ROWS),
        "rows",
        rows={"behaviors": "behaviors/part.csv", "items": "items/part.csv"},
    ),
    WholeFile(
        "canonical: CRLF line ends",
        "canonical",
        _canonical_files((BEHAVIORS_HEADER + BEHAVIORS_ROWS).replace(b"\n", b"\r\n")),
        "rows",
        rows={"behaviors": "behaviors/part.csv", "items": "items/part.csv"},
    ),
    WholeFile(
        "canonical: last line cut mid-record",
        "canonical",
        _canonical_files(BEHAVIORS_HEADER + BEHAVIORS_ROWS + b"u4,i2,vi"),
        "rows",
        rows={"behaviors": "behaviors/part.csv", "items": "items/part.csv"},
        quarantined=1,
    ),
    WholeFile(
        "canonical: truncated gzip",
        "canonical",
        _canonical_files(_truncated_gzip(BEHAVIORS_HEADER + BEHAVIORS_ROWS * 400), "behaviors/part.csv.gz"),
        "error",
        "part.csv.gz",
    ),
    WholeFile(
        "canonical: parquet of garbage",
        "canonical",
        {"items/p.parquet": _items_parquet(), "behaviors/p.parquet": _garbage()},
        "error",
        "behaviors",
        fmt="parquet",
    ),
    WholeFile(
        "canonical: truncated parquet",
        "canonical",
        {"items/p.parquet": _items_parquet(), "behaviors/p.parquet": _wrong_types_parquet()[:-200]},
        "error",
        "behaviors",
        fmt="parquet",
    ),
    WholeFile(
        "canonical: parquet of wrong types",
        "canonical",
        {"items/p.parquet": _items_parquet(), "behaviors/p.parquet": _wrong_types_parquet()},
        "rows",
        rows={"behaviors": "behaviors/p.parquet", "items": "items/p.parquet"},
        quarantined=2,
        fmt="parquet",
    ),
    WholeFile(
        "canonical: empty folder",
        "canonical",
        {"items/part.csv": ITEMS_CSV, "behaviors/.keep": b""},
        "error",
        "behaviors",
    ),
    WholeFile(
        "movielens: no u.item",
        "movielens",
        {"u.data": ML_DATA, "u.user": ML_USER},
        "error",
        "u.item",
        ci=True,
    ),
    WholeFile(
        "movielens: empty u.user",
        "movielens",
        {"u.data": ML_DATA, "u.item": ML_ITEM, "u.user": b""},
        "error",
        "u.user",
    ),
    WholeFile(
        "movielens: binary u.data",
        "movielens",
        {"u.data": _garbage(), "u.item": ML_ITEM, "u.user": ML_USER},
        "error",
        "u.data",
    ),
    WholeFile(
        "movielens: last line cut mid-record",
        "movielens",
        {"u.data": ML_DATA + b"4\t10\t", "u.item": ML_ITEM, "u.user": ML_USER},
        "rows",
        rows={"behaviors": "u.data", "items": "u.item", "users": "u.user"},
        quarantined=1,
    ),
    WholeFile("movielens: neither layout", "movielens", {"README": b"ml-100k"}, "error", "u.data"),
    WholeFile(
        "amazon: reviews not JSON",
        "amazon",
        {"reviews.jsonl": ML_DATA.replace(b"\t", b",") * 20, "meta.jsonl": META},
        "error",
        "reviews.jsonl",
    ),
    WholeFile("amazon: no meta file", "amazon", {"reviews.jsonl": REVIEWS}, "error", "meta.jsonl"),
    WholeFile(
        "amazon: empty reviews",
        "amazon",
        {"reviews.jsonl": b"", "meta.jsonl": META},
        "error",
        "reviews.jsonl",
    ),
    WholeFile(
        "amazon: truncated gzip",
        "amazon",
        {"reviews.jsonl.gz": _truncated_gzip(REVIEWS * 20), "meta.jsonl": META},
        "error",
        "reviews.jsonl.gz",
        ci=True,
    ),
    WholeFile(
        "amazon: last line cut mid-record",
        "amazon",
        {"reviews.jsonl": REVIEWS + REVIEWS[:40], "meta.jsonl": META},
        "rows",
        rows={"behaviors": "reviews.jsonl", "items": "meta.jsonl"},
        quarantined=1,
    ),
    WholeFile(
        "amazon: a JSON array, not JSON lines",
        "amazon",
        {
            "reviews.jsonl": json.dumps([json.loads(x) for x in REVIEWS.splitlines()], indent=1).encode(),
            "meta.jsonl": META,
        },
        "error",
        "reviews.jsonl",
    ),
    WholeFile("taobao: empty file", "taobao", {"UserBehavior.csv": b""}, "error", "UserBehavior.csv"),
    WholeFile("taobao: no file", "taobao", {}, "error", "UserBehavior.csv"),
    WholeFile(
        "taobao: binary garbage",
        "taobao",
        {"UserBehavior.csv": _garbage()},
        "error",
        "UserBehavior.csv",
        ci=True,
    ),
    WholeFile(
        "taobao: last line cut mid-record",
        "taobao",
        {"UserBehavior.csv": TAOBAO + b"3,102,9,p"},
        "rows",
        rows={"behaviors": "UserBehavior.csv"},
        quarantined=1,
    ),
    WholeFile(
        "taobao: a header line",
        "taobao",
        {"UserBehavior.csv": b"user_id,item_id,category_id,behavior_type,timestamp\n" + TAOBAO},
        "rows",
        rows={"behaviors": "UserBehavior.csv"},
        quarantined=1,
    ),
)


def whole_files(spark: SparkSession, workdir: Path, every: bool = True) -> DrillResult:
    """The WHOLE_FILES cases (all, or the few marked `ci`) through ingest with the default
    refusal threshold (0.5)."""
    started = time.perf_counter()
    tally = Tally()
    for i, case in enumerate(c for c in WHOLE_FILES if every or c.ci):
        base = workdir / "whole_files" / f"case{i}"
        for name, data in case.files.items():
            (base / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            (base / "src" / name).write_bytes(data)
        (base / "src").mkdir(parents=True, exist_ok=True)
        outcome = ingest(spark, base / "wh", case.overrides(base / "src"), fraction=0.5)
        tally.cases += 1
        tally.kinds[case.expect] += 1
        known = len(tally.failures)
        if case.expect == "error":
            _check_error(case, outcome, tally)
        else:
            _check_rows(case, base / "src", outcome, tally)
        if len(tally.failures) == known:
            shutil.rmtree(base)
    return tally.result("fuzz.whole_files", time.perf_counter() - started, {})


def _check_error(case: WholeFile, outcome: Outcome, tally: Tally) -> None:
    """A clear error (a RecGPTError, no JVM trace in it) that names the file or table."""
    exc = outcome.error
    if exc is None:
        tally.failures.append(f"{case.name}: ingested where a clear error was expected")
    elif not is_clear(exc) or "\tat " in str(exc):
        tally.failures.append(f"{case.name}: a crash, not a clear error: {describe(exc)}")
    elif case.names not in str(exc):
        tally.failures.append(f"{case.name}: the error does not name {case.names}: {describe(exc)}")


def _check_rows(case: WholeFile, src: Path, outcome: Outcome, tally: Tally) -> None:
    """Ingested, with every counted row written or quarantined, `case.quarantined` of them."""
    if outcome.error is not None:
        tally.failures.append(f"{case.name}: ingest failed: {describe(outcome.error)}")
        return
    quarantined = Counter(q["table_name"] for q in outcome.quarantine)
    for table, name in case.rows.items():
        n, written = _count_file(src / name, case.source), len(outcome.written[table])
        tally.rows_in += n
        tally.written += written
        tally.quarantined += quarantined[table]
        if n != written + quarantined[table]:
            tally.failures.append(
                f"{case.name}: {table}: {n} rows in, {written} written + {quarantined[table]} quarantined"
            )
    if len(outcome.quarantine) != case.quarantined:
        reasons = [q["reason"] for q in outcome.quarantine]
        tally.failures.append(
            f"{case.name}: {len(reasons)} rows quarantined, expected {case.quarantined}: {reasons}"
        )


def _count_file(path: Path, source: str) -> int:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows
    return rows_in(path, json_lines=".jsonl" in path.name, header=source == "canonical")


# -- entry point ------------------------------------------------------------------------------------


def run(workdir: Path, cases: int | None = None, spark: SparkSession | None = None) -> list[DrillResult]:
    """One result per loader (`fuzz.<loader>`, `cases` generated records each, FULL_CASES by
    default) and one for the whole-file cases (all of them in the full drill, the few marked `ci`
    when `cases` is given). Uses `spark` when given (tests share theirs), else builds and stops a
    small local session of its own."""
    session = spark or _session()
    try:
        results = [fuzz_loader(session, name, workdir, cases or FULL_CASES) for name in LOADERS]
        results.append(whole_files(session, workdir, every=cases is None))
    finally:
        if spark is None:
            session.stop()
    return results


def _session() -> SparkSession:
    from sparkio.session import build_session

    return build_session(
        {
            "master": "local[2]",
            "conf": {
                "spark.driver.memory": "2g",
                "spark.sql.shuffle.partitions": 4,
                "spark.default.parallelism": 2,
                "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                # Timestamps without a zone are UTC, as the job's own sessions read them.
                "spark.sql.session.timeZone": "UTC",
            },
            "log_level": "ERROR",
        },
        "drill-fuzz",
    )
