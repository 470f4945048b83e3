"""Spark side of the synthetic generator: users are spread over tasks with mapInArrow; each task
generates its users from their own seeds, so the output does not depend on the partitioning."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

from recgpt.calendar import Calendar
from recgpt.synthetic import generator as gen


@dataclass(frozen=True)
class SyntheticFrames:
    behaviors: DataFrame
    items: DataFrame
    users: DataFrame
    env_signals: DataFrame
    planted_personas: DataFrame


def _user_ids(spark: SparkSession, spec: gen.SyntheticSpec, partitions: int) -> DataFrame:
    n = partitions or max(2, -(-spec.users // 2000))
    return spark.range(0, spec.users, numPartitions=n)


def synthetic_frames(
    spark: SparkSession, spec: gen.SyntheticSpec, calendar: Calendar, partitions: int = 0
) -> SyntheticFrames:
    catalog = gen.make_catalog(spec)
    index = gen.CatalogIndex.build(catalog)
    contexts = gen.day_contexts(spec, calendar)
    ids = _user_ids(spark, spec, partitions)

    def behaviors(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            table = gen.make_behaviors(spec, batch.column("id").to_pylist(), index, contexts)
            yield from table.to_batches(max_chunksize=50_000)

    def users(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield from gen.make_users(spec, batch.column("id").to_pylist())[0].to_batches()

    def planted(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield from gen.make_users(spec, batch.column("id").to_pylist())[1].to_batches()

    users_schema, planted_schema = (t.schema for t in gen.make_users(spec, []))
    return SyntheticFrames(
        behaviors=ids.mapInArrow(behaviors, from_arrow_schema(gen.BEHAVIOR_SCHEMA)),
        items=spark.createDataFrame(catalog),
        users=ids.mapInArrow(users, from_arrow_schema(users_schema)),
        env_signals=spark.createDataFrame(gen.make_env_signals(spec, calendar)),
        planted_personas=ids.mapInArrow(planted, from_arrow_schema(planted_schema)),
    )
