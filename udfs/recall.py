"""Tag-aware recall inside Spark: the catalog's vectors broadcast once, then a mapInArrow that
embeds a batch of users' tags with the item embedding model and keeps each tag's nearest items by
exact cosine (one matrix product per chunk of tags), skipping the items each user just bought.

Exact search holds the catalog matrix in every Python worker (4 bytes x dimension per item: 1.5 GB
for 1M MiniLM vectors). Past that, the same runner would query an approximate index instead: build
it (e.g. FAISS IVF-PQ or HNSW over the item_embeddings of the run date) once in embed_items, ship
the index file to the executors, and replace `_top_items` with the index's search; the rest of the
stage (inputs, exclusions, output rows) does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from recgpt.errors import RecGPTError
from recgpt.rundate import RunDate
from recgpt.tables import BEHAVIORS
from sparkio.warehouse import Warehouse
from udfs.embeddings import current_embeddings, embedder_for

RECALLED = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("tag_rank", pa.int32(), nullable=False),
        pa.field("tag", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
    ]
)


class Catalog:
    """Item ids and their unit vectors, as the runner's matrix product needs them."""

    def __init__(self, ids: list[str], vectors: np.ndarray) -> None:
        self.ids = np.asarray(ids, dtype=object)
        norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        self.vectors = (vectors / norms).astype(np.float32)
        self.index = {item: i for i, item in enumerate(ids)}


def catalog(wh: Warehouse, dt: RunDate, model: str) -> Catalog:
    """The catalog snapshot as of dt with each item's current vector; items without one (not
    embedded yet) cannot be recalled and make the stage fail, since embed_items runs first."""
    rows = current_embeddings(wh, dt, model).select("item_id", "embedding").collect()
    missing = [r["item_id"] for r in rows if r["embedding"] is None]
    if missing:
        raise RecGPTError(
            f"{len(missing):,} catalog items have no {model} vector as of {dt} (e.g. {missing[:3]}): "
            f"run `python -m jobs.embed_items run.dt={dt}` first"
        )
    if not rows:
        raise RecGPTError(f"the catalog as of {dt} is empty: nothing to recall")
    return Catalog([r["item_id"] for r in rows], np.asarray([r["embedding"] for r in rows], dtype=np.float32))


def recently_bought(wh: Warehouse, dt: RunDate, bought_days: int) -> DataFrame:
    """user_id, excluded: the items each user bought within `bought_days` before dt, which recall
    must not return."""
    since = dt.minus(bought_days)
    return (
        wh.read(BEHAVIORS, dt_from=since, dt_to=dt)
        .where(
            (F.col("behavior") == "purchase")
            & F.col("item_id").isNotNull()
            & (F.col("ts") < F.lit(dt.iso).cast("timestamp"))
            & (F.col("ts") >= F.lit(since.iso).cast("timestamp"))
        )
        .groupBy("user_id")
        .agg(F.array_sort(F.collect_set("item_id")).alias("excluded"))
    )


def recall_inputs(wh: Warehouse, tags: DataFrame, dt: RunDate, bought_days: int) -> DataFrame:
    """One row per user: the tags best first (rank, tag) and the items bought within
    `bought_days` before dt, which recall must not return."""
    per_user = tags.groupBy("user_id").agg(
        F.array_sort(F.collect_list(F.struct(F.col("rank").cast("int").alias("rank"), "tag"))).alias("tags")
    )
    return per_user.join(recently_bought(wh, dt, bought_days), "user_id", "left").select(
        "user_id", "tags", F.coalesce("excluded", F.array().cast("array<string>")).alias("excluded")
    )


def _top_items(
    cat: Catalog, queries: np.ndarray, excluded: list[list[int]], k: int, max_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best items per query row (best first), skipping each row's
    excluded indices; the score matrix is built a chunk of rows at a time to bound memory."""
    n_items = len(cat.ids)
    k = min(k, n_items)
    chunk = max(1, max_cells // max(n_items, 1))
    top = np.empty((len(queries), k), dtype=np.int64)
    best = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ cat.vectors.T
        for row, skip in enumerate(excluded[start : start + chunk]):
            if skip:
                scores[row, skip] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(scores, part, axis=1)
        # Best first; equal scores by item id so reruns return the same order.
        for row in range(len(part)):
            order = sorted(range(k), key=lambda j: (-part_scores[row, j], cat.ids[part[row, j]]))
            top[start + row] = part[row, order]
            best[start + row] = part_scores[row, order]
    return top, best


def recall_runner(
    broadcast: Any, embedding_cfg: Mapping[str, Any], items_per_tag: int, max_cells: int
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        cat: Catalog = broadcast.value
        embedder = embedder_for(embedding_cfg)
        for batch in batches:
            users = batch.to_pylist()
            rows = [(u["user_id"], t["rank"], t["tag"], u["excluded"]) for u in users for t in u["tags"]]
            if not rows:
                continue
            texts = sorted({tag for _, _, tag, _ in rows})
            vectors = embedder.encode(texts)
            position = {tag: i for i, tag in enumerate(texts)}
            queries = vectors[[position[tag] for _, _, tag, _ in rows]].astype(np.float32)
            excluded = [[cat.index[i] for i in skip if i in cat.index] for *_, skip in rows]
            top, best = _top_items(cat, queries, excluded, items_per_tag, max_cells)
            out: dict[str, list[Any]] = {name: [] for name in RECALLED.names}
            for (user_id, tag_rank, tag, _), indices, scores in zip(rows, top, best, strict=True):
                for rank, (index, score) in enumerate(zip(indices, scores, strict=True), start=1):
                    if not np.isfinite(score):
                        break  # only excluded items were left
                    out["user_id"].append(user_id)
                    out["tag_rank"].append(tag_rank)
                    out["tag"].append(tag)
                    out["rank"].append(rank)
                    out["item_id"].append(str(cat.ids[index]))
                    out["score"].append(round(float(score), 6))
            yield pa.RecordBatch.from_pydict(out, schema=RECALLED)

    return run


def recall_tags(
    inputs: DataFrame,
    cat: Catalog,
    embedding_cfg: Mapping[str, Any],
    items_per_tag: int,
    max_cells: int,
) -> DataFrame:
    """RECALLED rows for the users of `inputs` (recall_inputs); lazy."""
    broadcast = inputs.sparkSession.sparkContext.broadcast(cat)
    runner = recall_runner(broadcast, dict(embedding_cfg), items_per_tag, max_cells)
    return inputs.mapInArrow(runner, from_arrow_schema(RECALLED))
