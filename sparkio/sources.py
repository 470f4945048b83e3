"""Input sources of the ingest stage, as raw DataFrames in (roughly) the canonical columns.

`synthetic` runs the generator; `canonical` reads a folder with behaviors/, items/, users/ and
env_signals/ (Parquet or CSV). Each row carries its source (file path or "synthetic") so a
quarantined row says where it came from. Loaders of public datasets plug in here as more sources.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recgpt.calendar import Calendar
from recgpt.errors import ConfigError, SourceError
from recgpt.rundate import RunDate
from recgpt.synthetic.generator import SyntheticSpec
from recgpt.tables import INPUT_TABLES, PLANTED_PERSONAS, REQUIRED_COLUMNS, REQUIRED_INPUTS, SOURCE, TableSpec
from sparkio import loaders
from sparkio.synthetic import synthetic_frames


@dataclass
class RawInputs:
    """Raw frames per input table; `extra` holds tables a source writes as they are (ground truth)."""

    tables: dict[str, DataFrame]
    extra: dict[TableSpec, DataFrame] = field(default_factory=dict)
    # How numeric timestamps are to be read (s, ms, us); None = text timestamps only.
    epoch_unit: str | None = None


def read_source(spark: SparkSession, cfg: Any, dt: RunDate) -> RawInputs:
    """The configured source (`cfg.data`); the synthetic one generates its world around `dt`."""
    kind = str(cfg.data.source)
    if kind == "synthetic":
        return _synthetic(spark, cfg, dt)
    if kind == "canonical":
        return read_canonical(spark, str(cfg.data.path), str(cfg.data.get("format", "parquet")))
    if kind == "movielens":
        return RawInputs(loaders.movielens(spark, str(cfg.data.path)), epoch_unit="s")
    if kind == "amazon":
        return RawInputs(
            loaders.amazon_reviews(spark, str(cfg.data.reviews), str(cfg.data.meta)), epoch_unit="ms"
        )
    if kind == "taobao":
        return RawInputs(loaders.taobao(spark, str(cfg.data.path)), epoch_unit="s")
    raise ConfigError(
        f"unknown data.source {kind!r}: expected synthetic, canonical, movielens, amazon or taobao"
    )


def _synthetic(spark: SparkSession, cfg: Any, dt: RunDate) -> RawInputs:
    """The synthetic world generated around `dt`, or around `data.anchor_dt` when set: one world
    for several run dates (a training date and a later evaluation date see the same users and the
    same behaviours), observed as of `ingest.until` of the run: what happens after that day has
    not happened yet, so it is not in the source (rows whose time did not parse stay, for ingest
    to quarantine)."""
    anchor = cfg.data.get("anchor_dt")
    world = RunDate.parse(anchor, "data.anchor_dt") if anchor else dt
    if world < dt:
        raise ConfigError(
            f"data.anchor_dt={world} is before run.dt={dt}: the anchored world ends before the run date"
        )
    spec = SyntheticSpec.from_config(cfg.data, world)
    frames = synthetic_frames(spark, spec, Calendar.from_config(cfg.calendar), int(cfg.data.partitions))
    tag = F.lit(f"synthetic(seed={spec.seed})")
    tables = {
        name: getattr(frames, name).withColumn(SOURCE, tag)
        for name in ("behaviors", "items", "users", "env_signals")
    }
    if anchor:
        cutoff = RunDate.parse(cfg.ingest.until, "ingest.until").plus(1).iso
        behaviors = tables["behaviors"]
        tables["behaviors"] = behaviors.where(
            F.col("ts").isNull() | (F.col("ts") < F.to_timestamp(F.lit(cutoff)))
        )
        tables["env_signals"] = tables["env_signals"].where(F.col("dt") < F.to_date(F.lit(cutoff)))
    return RawInputs(tables, extra={PLANTED_PERSONAS: frames.planted_personas})


def _find(path: str, table: str, fmt: str) -> str | None:
    for candidate in (os.path.join(path, table), os.path.join(path, f"{table}.{fmt}")):
        if os.path.exists(candidate):
            return candidate
    return None


def read_canonical(spark: SparkSession, path: str, fmt: str) -> RawInputs:
    if fmt not in ("parquet", "csv"):
        raise ConfigError(f"data.format must be parquet or csv, not {fmt!r}")
    if not os.path.isdir(path):
        raise SourceError(f"canonical source folder {path} does not exist")
    tables: dict[str, DataFrame] = {}
    for table in INPUT_TABLES:
        location = _find(path, table, fmt)
        if location is None:
            if table in REQUIRED_INPUTS:
                raise SourceError(f"{path}: no {table}/ folder or {table}.{fmt} file (required)")
            continue
        if os.path.isfile(location) and os.path.getsize(location) == 0:
            raise SourceError(f"{location} is an empty file")
        try:
            df = _read_files(spark, location, fmt)
        except SourceError:
            raise
        except Exception as exc:  # Spark's AnalysisException text names the problem
            raise SourceError(f"cannot read {location} as {fmt}: {str(exc).splitlines()[0]}") from exc
        missing = [c for c in REQUIRED_COLUMNS[table] if c not in df.columns]
        if missing:
            raise SourceError(
                f"{location}: {table} lacks required column(s) {missing}; it has {df.columns}"
                + (" (CSV needs a header row)" if fmt == "csv" else "")
            )
        tables[table] = df if SOURCE in df.columns else df.withColumn(SOURCE, F.input_file_name())
    return RawInputs(tables)


def _read_files(spark: SparkSession, location: str, fmt: str) -> DataFrame:
    if fmt == "parquet":
        return spark.read.parquet(location)
    # CSV: everything as text; the checks parse types and quarantine what does not parse.
    return loaders.read_delimited(spark, location, ",", columns=None, header=True)
