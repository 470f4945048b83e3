"""Row checks of the ingest stage as Spark column expressions: each input row gets the list of
every rule it breaks, so good rows go to their table and bad rows to quarantine with reasons.

Transforms are pure functions of DataFrames and plain values, so tests build tiny inputs inline.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recgpt.errors import SourceError
from recgpt.rundate import RunDate
from recgpt.tables import BEHAVIOR_TYPES, INTAKE, LINE_ISSUE, MALFORMED, RAW, REASONS, SOURCE


def _blank(col: Column) -> Column:
    return col.isNull() | (F.trim(col.cast("string")) == "")


EPOCH_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000}


def _cast(
    df: DataFrame, name: str, target: T.DataType, epoch_unit: str | None = None
) -> tuple[Column, Column]:
    """(typed value, True where a present raw value failed to convert). Timestamps given as
    numbers (or digit strings) are epochs in `epoch_unit` when a source declares one."""
    if name not in df.columns:
        return F.lit(None).cast(target), F.lit(False)
    raw = F.col(name)
    if df.schema[name].dataType == target:
        return raw, F.lit(False)
    if isinstance(target, T.TimestampType):
        text = F.trim(raw.cast("string"))
        typed = F.try_to_timestamp(text)
        if epoch_unit is not None:
            per_second = EPOCH_UNITS[epoch_unit]
            # An epoch too large for microseconds is null (unparseable), not an overflow error
            # that stops the whole ingest.
            micros = F.try_multiply(text.try_cast("long"), F.lit(1_000_000 // per_second))
            typed = F.when(text.rlike(r"^-?[0-9]+$"), F.timestamp_micros(micros)).otherwise(typed)
    else:
        typed = raw.try_cast(target)
    return typed, raw.isNotNull() & ~_blank(raw) & typed.isNull()


def _prepare(raw: DataFrame) -> DataFrame:
    """Keep the raw record (the original line if it did not parse, else its fields as JSON) and
    the row's source, and collect what went wrong while reading it (`_intake` reasons)."""
    data_cols = [c for c in raw.columns if c not in (SOURCE, MALFORMED, LINE_ISSUE)]
    df = raw if SOURCE in raw.columns else raw.withColumn(SOURCE, F.lit("unknown"))
    malformed = F.col(MALFORMED) if MALFORMED in raw.columns else F.lit(None).cast("string")
    record = F.struct(*[F.col(c).cast("string").alias(c) for c in data_cols])
    # Bytes that are not valid UTF-8 decode to U+FFFD: the file is in another encoding.
    mojibake = F.lit(False)
    for c in data_cols:
        if isinstance(raw.schema[c].dataType, T.StringType):
            mojibake = mojibake | F.coalesce(F.col(c).contains("\ufffd"), F.lit(False))
    line_issue = F.col(LINE_ISSUE) if LINE_ISSUE in raw.columns else F.lit(None).cast("string")
    intake = F.array(
        F.when(line_issue.isNotNull(), F.concat(F.lit("malformed line: "), line_issue)).when(
            malformed.isNotNull(), F.lit("malformed record: the line does not parse")
        ),
        F.when(mojibake, F.lit("invalid characters: the file is not in its declared encoding")),
    )
    return df.withColumn(
        RAW, F.coalesce(malformed, F.to_json(record, {"ignoreNullFields": "false"}))
    ).withColumn(INTAKE, intake)


def _with_reasons(df: DataFrame, checks: Sequence[tuple[Column, str]]) -> DataFrame:
    flags = [F.when(cond, F.lit(reason)) for cond, reason in checks]
    return df.withColumn(REASONS, F.array_compact(F.concat(F.col(INTAKE), F.array(*flags)))).drop(INTAKE)


def _optional_text(df: DataFrame, name: str) -> Column:
    """An optional input column as text, null when the source does not have it."""
    return (F.col(name) if name in df.columns else F.lit(None)).cast("string").alias(name)


def _flag_duplicates(df: DataFrame, key: str) -> DataFrame:
    """`_dup`: every row of a key after the first; "first" is by raw record, so reruns agree."""
    first = Window.partitionBy(key).orderBy(RAW)
    return df.withColumn("_dup", F.row_number().over(first) > 1)


def check_items(raw: DataFrame, max_title_chars: int = 2000) -> DataFrame:
    """Typed items with `_reasons` (empty = good) and `_raw`; duplicates after the first flagged."""
    df = _prepare(raw)
    price, bad_price = _cast(df, "price", T.DoubleType())
    df = df.select(
        F.trim(F.col("item_id").cast("string")).alias("item_id"),
        F.col("title").cast("string").alias("title"),
        F.trim(F.col("category").cast("string")).alias("category"),
        _optional_text(df, "category_path"),
        _optional_text(df, "brand"),
        price.alias("price"),
        bad_price.alias("_bad_price"),
        F.col(RAW),
        F.col(SOURCE),
        F.col(INTAKE),
    )
    df = _flag_duplicates(df, "item_id")
    df = _with_reasons(
        df,
        [
            (_blank(F.col("item_id")), "missing item_id"),
            (_blank(F.col("title")), "missing title"),
            (F.length(F.col("title")) > max_title_chars, f"title longer than {max_title_chars} characters"),
            (_blank(F.col("category")), "missing category"),
            (F.col("_bad_price"), "price is not a number"),
            (F.col("price") < 0, "negative price"),
            (~_blank(F.col("item_id")) & F.col("_dup"), "duplicate item_id"),
        ],
    )
    return df.drop("_bad_price", "_dup")


def check_users(raw: DataFrame) -> DataFrame:
    df = _prepare(raw)
    age, bad_age = _cast(df, "age", T.IntegerType())

    df = df.select(
        F.trim(F.col("user_id").cast("string")).alias("user_id"),
        age.alias("age"),
        _optional_text(df, "gender"),
        _optional_text(df, "region"),
        _optional_text(df, "occupation"),
        bad_age.alias("_bad_age"),
        F.col(RAW),
        F.col(SOURCE),
        F.col(INTAKE),
    )
    df = _flag_duplicates(df, "user_id")
    df = _with_reasons(
        df,
        [
            (_blank(F.col("user_id")), "missing user_id"),
            (F.col("_bad_age"), "age is not an integer"),
            ((F.col("age") < 0) | (F.col("age") > 120), "age outside 0..120"),
            (~_blank(F.col("user_id")) & F.col("_dup"), "duplicate user_id"),
        ],
    )
    return df.drop("_bad_age", "_dup")


def check_behaviors(
    raw: DataFrame,
    item_ids: DataFrame,
    until: RunDate,
    min_ts: str = "1995-01-01",
    epoch_unit: str | None = None,
) -> DataFrame:
    """Typed behaviours with `_reasons`: ids, behaviour type, timestamps in [min_ts, until],
    queries for searches, items that exist in `item_ids` (a one-column DataFrame of good ids)."""
    df = _prepare(raw)
    ts, bad_ts = _cast(df, "ts", T.TimestampType(), epoch_unit)
    rating, bad_rating = _cast(df, "rating", T.DoubleType())
    df = df.select(
        F.trim(F.col("user_id").cast("string")).alias("user_id"),
        F.trim(F.col("item_id").cast("string")).alias("item_id"),
        F.lower(F.trim(F.col("behavior").cast("string"))).alias("behavior"),
        _optional_text(df, "query"),
        ts.alias("ts"),
        rating.alias("rating"),
        bad_ts.alias("_bad_ts"),
        bad_rating.alias("_bad_rating"),
        F.col(RAW),
        F.col(SOURCE),
        F.col(INTAKE),
    )
    df = df.withColumn("item_id", F.when(_blank(F.col("item_id")), None).otherwise(F.col("item_id")))
    known = item_ids.select(F.col("item_id").alias("_known")).distinct()
    df = df.join(known, F.col("item_id") == F.col("_known"), "left")
    end = until.plus(1)
    is_search = F.col("behavior") == "search"
    df = _with_reasons(
        df,
        [
            (_blank(F.col("user_id")), "missing user_id"),
            (_blank(F.col("behavior")), "missing behavior"),
            (~_blank(F.col("behavior")) & ~F.col("behavior").isin(*BEHAVIOR_TYPES), "unknown behavior"),
            (F.col("_bad_ts"), "unparseable ts"),
            (F.col("ts").isNull() & ~F.col("_bad_ts"), "missing ts"),
            (F.col("ts") < F.lit(min_ts).cast("timestamp"), f"ts before {min_ts}"),
            (F.col("ts") >= F.lit(end.iso).cast("timestamp"), f"ts after ingest end date {until}"),
            (is_search & _blank(F.col("query")), "search without query"),
            (~is_search & F.col("item_id").isNull(), "missing item_id"),
            (~is_search & F.col("item_id").isNotNull() & F.col("_known").isNull(), "unknown item_id"),
            (F.col("_bad_rating"), "rating is not a number"),
            (F.isnan(F.col("rating")), "rating is NaN"),
        ],
    )
    df = df.withColumn("dt", F.to_date(F.col("ts")))
    return df.drop("_bad_ts", "_bad_rating", "_known")


def check_env_signals(raw: DataFrame) -> DataFrame:
    df = _prepare(raw)
    dt_col = F.col("dt")
    typed_dt = (
        dt_col if isinstance(df.schema["dt"].dataType, T.DateType) else F.try_to_date(dt_col.cast("string"))
    )

    def strings(name: str) -> Column:
        if name not in df.columns:
            return F.array().cast("array<string>")
        if isinstance(df.schema[name].dataType, T.ArrayType):
            return F.col(name).cast("array<string>")
        # CSV sources carry lists as '|'-separated text.
        return F.when(_blank(F.col(name)), F.array()).otherwise(F.split(F.col(name), r"\|"))

    df = df.select(
        typed_dt.alias("dt"),
        F.trim(F.col("region").cast("string")).alias("region"),
        F.lower(F.trim(F.col("season").cast("string"))).alias("season"),
        _optional_text(df, "weather"),
        strings("festivals").alias("festivals"),
        strings("trends").alias("trends"),
        F.col(RAW),
        F.col(SOURCE),
        F.col(INTAKE),
    )
    return _with_reasons(
        df,
        [
            (F.col("dt").isNull(), "missing or unparseable dt"),
            (_blank(F.col("region")), "missing region"),
            # A null season (an empty CSV field) is unknown too: `isin` alone gives null, no reason,
            # and the row would reach the non-nullable column and fail the whole write.
            (
                ~F.coalesce(F.col("season").isin("spring", "summer", "autumn", "winter"), F.lit(False)),
                "unknown season",
            ),
        ],
    )


def good(df: DataFrame) -> DataFrame:
    return df.where(F.size(REASONS) == 0).drop(REASONS, RAW, SOURCE)


def bad(df: DataFrame, table: str) -> DataFrame:
    """Quarantine rows (table_name, source, raw, reason) of a checked DataFrame."""
    return df.where(F.size(REASONS) > 0).select(
        F.lit(table).alias("table_name"),
        F.col(SOURCE).alias("source"),
        F.col(RAW).alias("raw"),
        F.array_join(REASONS, "; ").alias("reason"),
    )


def check_inputs(
    tables: Mapping[str, DataFrame],
    until: RunDate,
    min_ts: str,
    max_title_chars: int,
    epoch_unit: str | None = None,
) -> dict[str, DataFrame]:
    """Every input table of a source checked, items first (a behaviour must name a good item);
    the optional users and env_signals only when the source has them."""
    checked = {"items": check_items(tables["items"], max_title_chars=max_title_chars)}
    if "users" in tables:
        checked["users"] = check_users(tables["users"])
    if "env_signals" in tables:
        checked["env_signals"] = check_env_signals(tables["env_signals"])
    checked["behaviors"] = check_behaviors(
        tables["behaviors"],
        good(checked["items"]).select("item_id"),
        until=until,
        min_ts=min_ts,
        epoch_unit=epoch_unit,
    )
    return checked


# Spark's failure to read an input file, and the Java exception behind it.
READ_FAILURE = re.compile(
    r"\[FAILED_READ_FILE[.\w]*\] Encountered error while reading file (\S+?)\.?(?:\s|$)"
)
CAUSE = re.compile(r"Caused by: ([^\n]+)")


def flagged_counts(df: DataFrame) -> tuple[int, int]:
    """(rows, rows breaking at least one rule) of a checked DataFrame. This is the first action
    that reads the source's files, so a file Spark cannot read to its end (a truncated gzip
    stream, a corrupt Parquet page) stops here with a SourceError naming it, not a JVM trace."""
    try:
        row = df.agg(
            F.count(F.lit(1)).alias("n"), F.sum((F.size(REASONS) > 0).cast("long")).alias("bad")
        ).first()
    except Exception as exc:
        unreadable = _unreadable_file(exc)
        if unreadable is None:
            raise
        raise unreadable from exc
    assert row is not None
    return int(row["n"]), int(row["bad"] or 0)


def _unreadable_file(exc: Exception) -> SourceError | None:
    """The SourceError for Spark's failure to read an input file (with the Java exception behind
    it when the message carries one), or None for any other error."""
    failed = READ_FAILURE.search(str(exc))
    if failed is None:
        return None
    cause = CAUSE.search(str(exc))
    return SourceError(f"cannot read {failed.group(1)}: {cause.group(1) if cause else 'not to its end'}")


def refuse_unusable(
    source: str,
    checked: Mapping[str, DataFrame],
    counts: Mapping[str, tuple[int, int]],
    max_quarantine_fraction: float,
) -> None:
    """SourceError when more than `max_quarantine_fraction` of any table's rows broke a rule (a
    source not in the format it claims), with the first reasons of each such table and their
    files, or when the source gave no behaviours or items. The first is checked first: a file of
    garbage that leaves a derived table empty (Taobao's items) is named for what it is."""
    limit = max_quarantine_fraction
    over = [name for name, (n_in, n_bad) in counts.items() if n_in and n_bad / n_in > limit]
    if over:
        raise SourceError(
            "; ".join(f"{counts[n][1]:,} of {counts[n][0]:,} {n} rows failed their checks" for n in over)
            + f" (> {limit:.0%} each): is the source in the format it claims? First reasons:\n"
            + "\n".join(_preview(bad(checked[n], n)) for n in over)
        )
    empty = [name for name in ("behaviors", "items") if counts[name][0] == 0]
    if empty:
        raise SourceError(f"source {source!r} gave no rows for {empty}: nothing to ingest")


def _preview(df: DataFrame, n: int = 5) -> str:
    rows = df.select("source", "reason", "raw").limit(n).collect()
    return "\n".join(f"  {r['source']}: {r['reason']} <- {r['raw'][:200]}" for r in rows)


def quarantine(checked: Mapping[str, DataFrame]) -> DataFrame:
    """The quarantine rows of every checked table, one DataFrame."""
    parts = [bad(df, name) for name, df in checked.items()]
    return functools.reduce(DataFrame.unionByName, parts)
