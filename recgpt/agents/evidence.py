"""Evidence of a final tag: the items of the user's own context it is most similar to, so every
tag written points at the behaviours behind it (`evidence_item_ids`) whatever the model cited.

Pure numpy on vectors the job already has (item embeddings, and the tag texts embedded by the
same model), so the grounding is deterministic and free of LLM calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ground(
    tag_vectors: np.ndarray,
    item_ids: Sequence[str],
    item_vectors: np.ndarray,
    top_k: int,
    min_cosine: float,
) -> list[list[str]]:
    """For each tag (a row of `tag_vectors`), the ids of at most `top_k` context items with
    cosine >= `min_cosine`, most similar first; equal similarities keep the context order. An id
    listed twice (an item seen in two time buckets) counts once. Vectors are normalised here, so
    unnormalised input cannot inflate a score."""
    tags = unit_rows(tag_vectors)
    if not len(item_ids):
        return [[] for _ in range(len(tags))]
    first: dict[str, int] = {}
    for position, item_id in enumerate(item_ids):
        first.setdefault(item_id, position)
    ids = list(first)
    items = unit_rows(np.asarray(item_vectors)[list(first.values())])
    scores = tags @ items.T
    out = []
    for row in scores:
        order = np.argsort(-row, kind="stable")[:top_k]
        out.append([ids[i] for i in order if row[i] >= min_cosine])
    return out


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as float64 for exact comparisons."""
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)
