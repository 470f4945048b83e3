"""Loaders of public datasets into the canonical raw columns the ingest checks expect.

Each loader keeps its format's quirks here (separators, encodings, epoch units, genre flags,
malformed JSON lines) and hands the checks text or typed columns plus `_source`; nothing is
dropped at this step: a line that does not parse becomes a row the checks quarantine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from recgpt.errors import SourceError
from recgpt.tables import LINE_ISSUE, MALFORMED, OVERFLOW, SOURCE

ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
# ml-1m codes its user ages as bucket starts and occupations as numbers (see its README).
ML1M_OCCUPATIONS: tuple[str, ...] = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)
TAOBAO_BEHAVIORS = {"pv": "view", "buy": "purchase", "cart": "cart", "fav": "fav"}
LATIN1 = "ISO-8859-1"


def _require(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise SourceError(f"{what} not found: {path}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise SourceError(f"{what} is an empty file: {path}")
    return path


def read_delimited(
    spark: SparkSession,
    path: str,
    sep: str,
    columns: Sequence[str] | None = None,
    encoding: str = "UTF-8",
    header: bool = False,
) -> DataFrame:
    """Delimited text as string columns, with line-level problems made visible instead of lost:
    a line with fewer or more fields than expected keeps its text in `_malformed` and says what
    is wrong in `_line_issue` (Spark alone would pad a short line and drop extra fields).
    `columns=None` takes the names from the header row."""
    reader = spark.read.option("sep", sep).option("encoding", encoding)
    if columns is None:
        columns = reader.option("header", "true").csv(path).columns
        if not columns:
            raise SourceError(f"{path}: no header row (empty file?)")
    n = len(columns)
    # One spare column: Spark then hands us the text of every line that does not have exactly
    # n + 1 fields, which is every normal line; `_line_issue` has Spark's parser count them.
    schema = ", ".join(f"`{c}` string" for c in [*columns, OVERFLOW, MALFORMED])
    df = (
        reader.option("header", str(header).lower())
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", MALFORMED)
        .schema(schema)
        .csv(path)
    )
    df = df.withColumn(LINE_ISSUE, _line_issue(n, sep)).withColumn(
        MALFORMED, F.when(F.col(LINE_ISSUE).isNotNull(), F.col(MALFORMED))
    )
    return df.drop(OVERFLOW).withColumn(SOURCE, F.input_file_name())


# Appended to a line as one more field, it shows where Spark's own CSV parser ends the line's
# fields (a private-use character: no real field is exactly it).
FIELD_SENTINEL = "\ue000"


def _line_issue(n: int, sep: str) -> Column:
    """What is wrong with a line's fields, or null. Spark reads a line without complaint only when
    it has exactly the n + 1 fields of the schema (the spare one included), so such a line has a
    field too many; every other line comes with its text, and Spark's own parser counts its
    fields: the sentinel appended as a last field lands at position fields + 1, or at the end of
    a quoted field that is never closed (a count of our own would disagree with the parser on
    quotes, and pass a line whose fields the parser shifted)."""
    probe = ", ".join(f"`f{i}` string" for i in range(n + 2))
    parsed = F.from_csv(F.concat(F.col(MALFORMED), F.lit(sep + FIELD_SENTINEL)), probe, {"sep": sep})
    values = F.array(*[parsed[f"f{i}"] for i in range(n + 2)])
    fields = F.array_position(values, FIELD_SENTINEL) - 1  # -1: beyond the probe, too many
    unclosed = F.exists(values, lambda v: v.endswith(FIELD_SENTINEL) & (v != FIELD_SENTINEL))
    return (
        F.when(F.col(MALFORMED).isNull(), F.lit(f"more fields than the {n} expected"))
        .when(unclosed, F.lit("a quoted field is not closed"))
        .when(fields < 0, F.lit(f"more fields than the {n} expected"))
        .when(fields != n, F.format_string(f"%d fields where {n} are expected", fields))
    )


def _text(
    spark: SparkSession, path: str, sep: str, columns: Sequence[str], encoding: str = "UTF-8"
) -> DataFrame:
    return read_delimited(spark, path, sep, columns, encoding)


def _region_from_us_zip(zip_code: Column) -> Column:
    """Coarse US region from the first zip digit; non-numeric codes (Canada) are 'ca'."""
    first = F.substring(F.trim(zip_code), 1, 1)
    return (
        F.when(first.isin("0", "1", "2"), "us-east")
        .when(first.isin("3", "4", "5", "6", "7"), "us-central")
        .when(first.isin("8", "9"), "us-west")
        .when(zip_code.isNotNull(), "ca")
    )


# -- MovieLens ----------------------------------------------------------------------------------


def movielens(spark: SparkSession, path: str) -> dict[str, DataFrame]:
    """ml-100k (u.data, u.item, u.user) or ml-1m (ratings.dat, movies.dat, users.dat)."""
    if os.path.exists(os.path.join(path, "u.data")):
        return _ml100k(spark, path)
    if os.path.exists(os.path.join(path, "ratings.dat")):
        return _ml1m(spark, path)
    raise SourceError(f"{path}: neither ml-100k (u.data) nor ml-1m (ratings.dat) files found")


def _movies(df: DataFrame, category: Column, category_path: Column) -> DataFrame:
    return df.select(
        "item_id",
        "title",
        category.alias("category"),
        category_path.alias("category_path"),
        F.lit(None).cast("string").alias("brand"),
        F.lit(None).cast("string").alias("price"),
        LINE_ISSUE,
        MALFORMED,
        SOURCE,
    )


def _movie_users(df: DataFrame, occupation: Column) -> DataFrame:
    return df.select(
        "user_id",
        "age",
        "gender",
        _region_from_us_zip(F.col("zip")).alias("region"),
        occupation.alias("occupation"),
        LINE_ISSUE,
        MALFORMED,
        SOURCE,
    )


def _ratings_as_reviews(df: DataFrame) -> DataFrame:
    return df.select(
        "user_id",
        "item_id",
        F.lit("review").alias("behavior"),
        F.lit(None).cast("string").alias("query"),
        F.col("ts"),
        F.col("rating"),
        LINE_ISSUE,
        MALFORMED,
        SOURCE,
    )


def _ml100k(spark: SparkSession, path: str) -> dict[str, DataFrame]:
    ratings = _text(
        spark, _require(f"{path}/u.data", "ml-100k ratings"), "\t", ["user_id", "item_id", "rating", "ts"]
    )
    flags = [f"g{i}" for i in range(len(ML100K_GENRES))]
    raw_items = _text(
        spark,
        _require(f"{path}/u.item", "ml-100k items"),
        "|",
        ["item_id", "title", "release_date", "video_release_date", "imdb_url", *flags],
        encoding=LATIN1,
    )
    genres = F.filter(
        F.array(*[F.when(F.col(f) == "1", F.lit(g)) for f, g in zip(flags, ML100K_GENRES, strict=True)]),
        lambda g: g.isNotNull(),
    )
    # The first listed genre other than "unknown" is the category; all of them form the path leaf.
    named = F.filter(genres, lambda g: g != "unknown")
    primary = F.coalesce(F.try_element_at(named, F.lit(1)), F.try_element_at(genres, F.lit(1)))
    path_text = F.when(F.size(genres) > 0, F.concat(F.lit("Movies > "), F.array_join(genres, " | ")))
    items = _movies(raw_items, primary, path_text)
    raw_users = _text(
        spark,
        _require(f"{path}/u.user", "ml-100k users"),
        "|",
        ["user_id", "age", "gender", "occupation", "zip"],
    )
    users = _movie_users(raw_users, F.col("occupation"))
    return {"behaviors": _ratings_as_reviews(ratings), "items": items, "users": users}


def _ml1m(spark: SparkSession, path: str) -> dict[str, DataFrame]:
    ratings = _text(
        spark,
        _require(f"{path}/ratings.dat", "ml-1m ratings"),
        "::",
        ["user_id", "item_id", "rating", "ts"],
        encoding=LATIN1,
    )
    movies = _text(
        spark,
        _require(f"{path}/movies.dat", "ml-1m movies"),
        "::",
        ["item_id", "title", "genres"],
        encoding=LATIN1,
    )
    genres = F.split(F.col("genres"), r"\|")
    items = _movies(
        movies,
        F.try_element_at(genres, F.lit(1)),
        F.concat(F.lit("Movies > "), F.array_join(genres, " | ")),
    )
    raw_users = _text(
        spark,
        _require(f"{path}/users.dat", "ml-1m users"),
        "::",
        ["user_id", "gender", "age", "occupation", "zip"],
        encoding=LATIN1,
    )
    occupations = F.array(*[F.lit(o) for o in ML1M_OCCUPATIONS])
    occ_index = F.col("occupation").try_cast("int")
    occupation = F.when(
        occ_index.between(0, len(ML1M_OCCUPATIONS) - 1), F.try_element_at(occupations, occ_index + 1)
    ).otherwise(F.col("occupation"))
    users = _movie_users(raw_users, occupation)
    return {"behaviors": _ratings_as_reviews(ratings), "items": items, "users": users}


# -- Amazon Reviews 2023 ------------------------------------------------------------------------

AMAZON_REVIEW_SCHEMA = (
    "rating double, title string, text string, asin string, parent_asin string, user_id string, "
    f"timestamp string, helpful_vote long, verified_purchase boolean, `{MALFORMED}` string"
)
AMAZON_META_SCHEMA = (
    "main_category string, title string, store string, categories array<string>, price string, "
    f"parent_asin string, `{MALFORMED}` string"
)


def _jsonl(spark: SparkSession, path: str, schema: str) -> DataFrame:
    """One row per non-blank line. Spark's JSON reader would make several rows of a line holding
    an array, none of `[]`, keep only the first of two objects on a line, and keep bytes that are
    not UTF-8 as they are (unreadable text in the quarantine table). Here bytes that are not UTF-8
    become U+FFFD (the checks then name the encoding), and a line that is not exactly one JSON
    value is a malformed record: in brackets it must be an array of one element, and written
    twice in brackets one of two (JSON parsers stop at the end of the first value, so a line
    like `{...}]` passes the first test alone)."""
    line = "_line"
    lines = spark.read.text(path).select(
        F.make_valid_utf8(F.col("value")).alias(line), F.input_file_name().alias(SOURCE)
    )
    lines = lines.where(~F.col(line).rlike(r"^[ \t]*$"))
    parsed = F.from_json(line, schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": MALFORMED})
    one_value = (_array_length(F.col(line)) == 1) & (_array_length(F.col(line), F.lit(","), F.col(line)) == 2)
    df = lines.select(parsed.alias("r"), line, SOURCE).select("r.*", line, SOURCE)
    return df.withColumn(MALFORMED, F.when(one_value, F.col(MALFORMED)).otherwise(F.col(line))).drop(line)


def _array_length(*parts: Column) -> Column:
    """Elements of the JSON array `[parts]` (null when it does not parse)."""
    return F.json_array_length(F.concat(F.lit("["), *parts, F.lit("]")))


def amazon_reviews(spark: SparkSession, reviews: str, meta: str) -> dict[str, DataFrame]:
    """McAuley Lab's Amazon Reviews 2023: review JSONL (+ .gz) and item metadata JSONL."""
    r = _jsonl(spark, _require(reviews, "Amazon reviews"), AMAZON_REVIEW_SCHEMA)
    behaviors = r.select(
        "user_id",
        F.col("parent_asin").alias("item_id"),
        F.lit("review").alias("behavior"),
        F.lit(None).cast("string").alias("query"),
        F.col("timestamp").alias("ts"),
        "rating",
        MALFORMED,
        SOURCE,
    )
    m = _jsonl(spark, _require(meta, "Amazon item metadata"), AMAZON_META_SCHEMA)
    cats = F.filter(
        F.coalesce(F.col("categories"), F.array().cast("array<string>")), lambda c: F.trim(c) != ""
    )
    items = m.select(
        F.col("parent_asin").alias("item_id"),
        "title",
        F.coalesce(F.try_element_at(cats, F.lit(-1)), F.col("main_category")).alias("category"),
        F.when(F.size(cats) > 0, F.array_join(cats, " > "))
        .otherwise(F.col("main_category"))
        .alias("category_path"),
        F.col("store").alias("brand"),
        "price",
        MALFORMED,
        SOURCE,
    )
    return {"behaviors": behaviors, "items": items}


# -- Taobao UserBehavior ------------------------------------------------------------------------


def taobao(spark: SparkSession, path: str) -> dict[str, DataFrame]:
    """Taobao UserBehavior.csv (user, item, category, pv/buy/cart/fav, unix seconds; no header).
    The dataset has no titles: items get a descriptive placeholder naming their category id."""
    raw = _text(
        spark,
        _require(path, "Taobao UserBehavior file"),
        ",",
        ["user_id", "item_id", "category_id", "behavior_type", "ts"],
    )
    mapping = F.create_map(*[F.lit(x) for kv in TAOBAO_BEHAVIORS.items() for x in kv])
    behaviors = raw.select(
        "user_id",
        "item_id",
        F.coalesce(F.try_element_at(mapping, F.trim(F.col("behavior_type"))), F.col("behavior_type")).alias(
            "behavior"
        ),
        F.lit(None).cast("string").alias("query"),
        "ts",
        F.lit(None).cast("string").alias("rating"),
        LINE_ISSUE,
        MALFORMED,
        SOURCE,
    )
    valid = raw.where(
        F.col("item_id").isNotNull() & F.col("category_id").isNotNull() & F.col(MALFORMED).isNull()
    )
    items = (
        valid.groupBy("item_id")
        .agg(F.min("category_id").alias("category"), F.min(SOURCE).alias(SOURCE))
        .select(
            "item_id",
            F.concat(F.lit("item "), F.col("item_id"), F.lit(" of category "), F.col("category")).alias(
                "title"
            ),
            "category",
            F.concat(F.lit("taobao > "), F.col("category")).alias("category_path"),
            F.lit(None).cast("string").alias("brand"),
            F.lit(None).cast("string").alias("price"),
            F.lit(None).cast("string").alias(MALFORMED),
            SOURCE,
        )
    )
    return {"behaviors": behaviors, "items": items}
