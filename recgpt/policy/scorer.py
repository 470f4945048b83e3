"""The reward of a user's tag set, computed in one process for policy training: each tag recalls
its nearest catalog items by the recall embedding (as the recall stage does, skipping what the
user just bought), takes its category as evaluate does, and meets the reward window's categories;
the reward model's gate head gives the alignment; the same embeddings give the diversity.

The catalog matrix is held once (4 bytes x dimension per item), so this is for the training
sample of users a night, not the whole population; a user's inputs are plain values
(`UserTruth`), built from the warehouse by the training job.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from recgpt.judge.reward import RewardModel, tag_context
from recgpt.policy.rewards import Shaping, TagSetRewards, tag_set_rewards

Encode = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class UserTruth:
    """What a user's tags are rewarded against: the reward window's distinct categories, the
    persona and newest history titles (the reward model's context), and the items bought just
    before the training date (never recalled)."""

    user_id: str
    window_categories: frozenset[str]
    persona: str
    history: tuple[str, ...]
    excluded: frozenset[str] = field(default_factory=frozenset)


class TagRewarder:
    """Rewards of tag sets against a catalog: ids, their unit vectors and categories."""

    def __init__(
        self,
        item_ids: Sequence[str],
        vectors: np.ndarray,
        categories: Sequence[str | None],
        encode: Encode,
        reward_model: RewardModel,
        shaping: Shaping,
        category_items: int,
    ) -> None:
        if not (len(item_ids) == len(vectors) == len(categories)):
            raise ValueError("one vector and category per item")
        self.ids = list(item_ids)
        self.index = {item: i for i, item in enumerate(self.ids)}
        norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        self.vectors = (np.asarray(vectors, dtype=np.float32) / norms).astype(np.float32)
        self.categories = list(categories)
        self.encode, self.reward_model = encode, reward_model
        self.shaping, self.category_items = shaping, category_items

    def _unit(self, texts: Sequence[str]) -> np.ndarray:
        v = np.asarray(self.encode(list(texts)), dtype=np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    def recalled_categories(self, vectors: np.ndarray, excluded: Collection[str]) -> list[list[str | None]]:
        """Per tag vector, the categories of its `category_items` nearest items (best first; equal
        scores by item id), excluded items skipped."""
        scores = vectors @ self.vectors.T
        skip = [self.index[i] for i in excluded if i in self.index]
        if skip:
            scores[:, skip] = -np.inf
        k = min(self.category_items, len(self.ids) - len(skip))
        out: list[list[str | None]] = []
        for row in scores:
            nearest: Sequence[int] = np.argpartition(-row, k - 1)[:k].tolist() if k > 0 else []
            best = sorted(nearest, key=lambda j: (-row[j], self.ids[j]))
            out.append([self.categories[j] for j in best])
        return out

    def rewards(self, truth: UserTruth, tags: Sequence[str]) -> TagSetRewards:
        """The four rewards of `tags` (distinct, in order) for the user."""
        tags = list(dict.fromkeys(t for t in tags if t.strip()))
        if not tags:
            return tag_set_rewards([], [], truth.window_categories, [], np.zeros((0, 1)), self.shaping)
        vectors = self._unit(tags)
        context = tag_context(truth.persona, truth.history)
        alignment = self.reward_model.probability(["tag"] * len(tags), [context] * len(tags), tags)
        return tag_set_rewards(
            tags,
            self.recalled_categories(vectors, truth.excluded),
            truth.window_categories,
            [float(a) for a in alignment],
            vectors,
            self.shaping,
        )

    def reward(self, truth: UserTruth, tags: Sequence[str]) -> float:
        """The configured reward (CRS or SUM) of `tags` for the user."""
        return self.rewards(truth, tags).total(self.shaping)
