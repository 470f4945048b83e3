"""Row checks of the ingest stage as Spark column expressions: each input row gets the list of
every rule it breaks, so good rows go to their table and bad rows to quarantine with reasons.

Transforms are pure functions of DataFrames and plain values, so tests build tiny inputs inline.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recgpt.tables import BEHAVIOR_TYPES

REASONS = "_reasons"
RAW = "_raw"
# Where each raw row came from (a file path, "synthetic", ...); set by the source reader.
SOURCE = "_source"


def _blank(col: Column) -> Column:
    return col.isNull() | (F.trim(col.cast("string")) == "")


def _cast(df: DataFrame, name: str, target: T.DataType) -> tuple[Column, Column]:
    """(typed value, True where a present raw value failed to convert)."""
    if name not in df.columns:
        return F.lit(None).cast(target), F.lit(False)
    raw = F.col(name)
    if df.schema[name].dataType == target:
        return raw, F.lit(False)
    if isinstance(target, T.TimestampType):
        typed = F.try_to_timestamp(F.trim(raw.cast("string")))
    else:
        typed = raw.try_cast(target)
    return typed, raw.isNotNull() & ~_blank(raw) & typed.isNull()


def _with_reasons(df: DataFrame, checks: Sequence[tuple[Column, str]]) -> DataFrame:
    flags = [F.when(cond, F.lit(reason)) for cond, reason in checks]
    return df.withColumn(REASONS, F.array_compact(F.array(*flags)))


def _prepare(raw: DataFrame) -> DataFrame:
    """Keep the raw record as JSON text (for quarantine) and the row's source."""
    data_cols = [c for c in raw.columns if c != SOURCE]
    df = raw if SOURCE in raw.columns else raw.withColumn(SOURCE, F.lit("unknown"))
    record = F.struct(*[F.col(c).cast("string").alias(c) for c in data_cols])
    return df.withColumn(RAW, F.to_json(record, {"ignoreNullFields": "false"}))


def check_items(raw: DataFrame) -> DataFrame:
    """Typed items with `_reasons` (empty = good) and `_raw`; duplicates after the first flagged."""
    df = _prepare(raw)
    price, bad_price = _cast(df, "price", T.DoubleType())
    df = df.select(
        F.trim(F.col("item_id").cast("string")).alias("item_id"),
        F.col("title").cast("string").alias("title"),
        F.trim(F.col("category").cast("string")).alias("category"),
        (F.col("category_path") if "category_path" in df.columns else F.lit(None))
        .cast("string")
        .alias("category_path"),
        (F.col("brand") if "brand" in df.columns else F.lit(None)).cast("string").alias("brand"),
        price.alias("price"),
        bad_price.alias("_bad_price"),
        F.col(RAW),
        F.col(SOURCE),
    )
    first = Window.partitionBy("item_id").orderBy(RAW)
    df = df.withColumn("_dup", F.row_number().over(first) > 1)
    df = _with_reasons(
        df,
        [
            (_blank(F.col("item_id")), "missing item_id"),
            (_blank(F.col("title")), "missing title"),
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

    def opt(name: str) -> Column:
        return (F.col(name) if name in df.columns else F.lit(None)).cast("string").alias(name)

    df = df.select(
        F.trim(F.col("user_id").cast("string")).alias("user_id"),
        age.alias("age"),
        opt("gender"),
        opt("region"),
        opt("occupation"),
        bad_age.alias("_bad_age"),
        F.col(RAW),
        F.col(SOURCE),
    )
    first = Window.partitionBy("user_id").orderBy(RAW)
    df = df.withColumn("_dup", F.row_number().over(first) > 1)
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


def check_behaviors(raw: DataFrame, item_ids: DataFrame, until: str, min_ts: str = "1995-01-01") -> DataFrame:
    """Typed behaviours with `_reasons`: ids, behaviour type, timestamps in [min_ts, until],
    queries for searches, items that exist in `item_ids` (a one-column DataFrame of good ids)."""
    df = _prepare(raw)
    ts, bad_ts = _cast(df, "ts", T.TimestampType())
    rating, bad_rating = _cast(df, "rating", T.DoubleType())
    df = df.select(
        F.trim(F.col("user_id").cast("string")).alias("user_id"),
        F.trim(F.col("item_id").cast("string")).alias("item_id"),
        F.lower(F.trim(F.col("behavior").cast("string"))).alias("behavior"),
        (F.col("query") if "query" in df.columns else F.lit(None)).cast("string").alias("query"),
        ts.alias("ts"),
        rating.alias("rating"),
        bad_ts.alias("_bad_ts"),
        bad_rating.alias("_bad_rating"),
        F.col(RAW),
        F.col(SOURCE),
    )
    df = df.withColumn("item_id", F.when(_blank(F.col("item_id")), None).otherwise(F.col("item_id")))
    known = item_ids.select(F.col("item_id").alias("_known")).distinct()
    df = df.join(known, F.col("item_id") == F.col("_known"), "left")
    end = _dt.date.fromisoformat(until) + _dt.timedelta(days=1)
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
            (F.col("ts") >= F.lit(end.isoformat()).cast("timestamp"), f"ts after ingest end date {until}"),
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
        (F.col("weather") if "weather" in df.columns else F.lit(None)).cast("string").alias("weather"),
        strings("festivals").alias("festivals"),
        strings("trends").alias("trends"),
        F.col(RAW),
        F.col(SOURCE),
    )
    return _with_reasons(
        df,
        [
            (F.col("dt").isNull(), "missing or unparseable dt"),
            (_blank(F.col("region")), "missing region"),
            (~F.col("season").isin("spring", "summer", "autumn", "winter"), "unknown season"),
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
