"""Rewards of one user's tag set, for training the tag experts (RecGPT-V2's constrained reward
shaping), and the guard that keeps training windows out of evaluation windows.

Four rewards, each in [0, 1]:
- accuracy (R_acc): the share of the user's distinct categories in the reward window (the days
  after the training date) that the tags' categories recall; a tag's category is decided as the
  evaluate stage decides it (`recgpt.metrics.tag_category` over its recalled items);
- alignment (R_align): the mean, over the tags, of the judge's reward model's calibrated
  probability that the judge grades the tag A or S for the user's persona and history;
- diversity (R_div): the mean pairwise cosine distance of the tags' embeddings (0 for one tag);
- length (R_len): the mean over the tags of 1 inside the configured word range, falling linearly
  over `length_slack_words` words outside it, 0 beyond.

Constrained reward shaping (CRS) keeps accuracy as the one objective and makes the others gates:
R = R_acc * [R_align >= tau_align] * [R_div >= tau_div] * [R_len >= tau_len], so a tag set that
breaks one constraint earns nothing however accurate it is. The summed form (SUM), the paper's
ablation, adds the four with weights: a policy can then trade a constraint for accuracy.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from recgpt import metrics
from recgpt.agents.text import words
from recgpt.errors import ConfigError, RecGPTError
from recgpt.rundate import RunDate

MODES: tuple[str, ...] = ("crs", "sum")
REWARDS: tuple[str, ...] = ("acc", "align", "div", "len")


@dataclass(frozen=True)
class Shaping:
    """The `policy.reward` settings: how the four rewards make one."""

    mode: str  # crs or sum
    tau_align: float
    tau_div: float
    tau_len: float
    weights: Mapping[str, float]  # SUM only: acc, align, div, len
    min_words: int
    max_words: int
    length_slack_words: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Shaping:
        weights = {k: float(v) for k, v in dict(cfg["weights"]).items()}
        shaping = cls(
            mode=str(cfg["mode"]),
            tau_align=float(cfg["tau_align"]),
            tau_div=float(cfg["tau_div"]),
            tau_len=float(cfg["tau_len"]),
            weights=weights,
            min_words=int(cfg["min_words"]),
            max_words=int(cfg["max_words"]),
            length_slack_words=int(cfg["length_slack_words"]),
        )
        if shaping.mode not in MODES:
            raise ConfigError(f"policy.reward.mode is {shaping.mode!r}: one of {', '.join(MODES)}")
        if set(weights) != set(REWARDS):
            raise ConfigError(f"policy.reward.weights names {sorted(weights)}: exactly {list(REWARDS)}")
        if not 1 <= shaping.min_words <= shaping.max_words:
            raise ConfigError("policy.reward: need 1 <= min_words <= max_words")
        if shaping.length_slack_words < 0:
            raise ConfigError("policy.reward.length_slack_words must be >= 0")
        return shaping

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "weights": dict(self.weights)}


@dataclass(frozen=True)
class TagSetRewards:
    """The four rewards of one tag set."""

    acc: float
    align: float
    div: float
    len: float

    def gates(self, shaping: Shaping) -> dict[str, bool]:
        """Which constraints the set meets."""
        return {
            "align": self.align >= shaping.tau_align,
            "div": self.div >= shaping.tau_div,
            "len": self.len >= shaping.tau_len,
        }

    def crs(self, shaping: Shaping) -> float:
        return self.acc if all(self.gates(shaping).values()) else 0.0

    def summed(self, shaping: Shaping) -> float:
        return sum(shaping.weights[name] * getattr(self, name) for name in REWARDS)

    def total(self, shaping: Shaping) -> float:
        """The reward the policy is trained on, in the configured mode."""
        return self.crs(shaping) if shaping.mode == "crs" else self.summed(shaping)

    def as_dict(self) -> dict[str, float]:
        return {name: round(getattr(self, name), 6) for name in REWARDS}


def accuracy(tag_categories: Iterable[str | None], window_categories: Collection[str]) -> float:
    """R_acc: the share of the reward window's distinct categories among the tags' categories
    (0 when the window holds none: a user who did nothing gives no signal to learn from)."""
    wanted = set(window_categories)
    if not wanted:
        return 0.0
    return len(wanted & {c for c in tag_categories if c is not None}) / len(wanted)


def tag_categories(recalled: Sequence[Sequence[str | None]]) -> list[str | None]:
    """Per tag, its category as the evaluate stage decides it, from its recalled items' categories
    (best first)."""
    return [metrics.tag_category(categories) for categories in recalled]


def length(tag: str, min_words: int, max_words: int, slack: int) -> float:
    """R_len of one tag: 1 with min_words..max_words words; d words outside the range gives
    1 - d / (slack + 1) (so `slack` words outside still earn something); 0 beyond."""
    n = len(words(tag))
    outside = max(min_words - n, n - max_words, 0)
    return max(0.0, 1.0 - outside / (slack + 1))


def diversity(vectors: np.ndarray) -> float:
    """R_div: mean pairwise cosine distance of the tags' embeddings; 0 for fewer than two tags."""
    value = metrics.diversity(np.asarray(vectors, dtype=np.float64))
    return 0.0 if value is None else value


def tag_set_rewards(
    tags: Sequence[str],
    recalled_categories: Sequence[Sequence[str | None]],
    window_categories: Collection[str],
    alignment: Sequence[float],
    vectors: np.ndarray,
    shaping: Shaping,
) -> TagSetRewards:
    """The four rewards of one user's tags: each tag's recalled items' categories (best first),
    the reward window's categories, each tag's calibrated reward-model probability, and the
    tags' embeddings (rows in tag order). An empty tag set earns 0 everywhere."""
    if not tags:
        return TagSetRewards(0.0, 0.0, 0.0, 0.0)
    if not (len(recalled_categories) == len(alignment) == len(vectors) == len(tags)):
        raise ValueError("one recall list, alignment and embedding per tag")
    lengths = [length(t, shaping.min_words, shaping.max_words, shaping.length_slack_words) for t in tags]
    return TagSetRewards(
        acc=accuracy(tag_categories(recalled_categories), window_categories),
        align=float(np.mean(alignment)),
        div=diversity(vectors),
        len=float(np.mean(lengths)),
    )


# -- leakage ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Days [start, start + days): a reward window or an evaluation's held-out window."""

    start: _dt.date
    days: int

    @property
    def end(self) -> _dt.date:  # exclusive
        return self.start + _dt.timedelta(days=self.days)

    def __str__(self) -> str:
        return f"{self.start.isoformat()}..{(self.end - _dt.timedelta(days=1)).isoformat()}"


def reward_window(dt: RunDate | str, days: int) -> Window:
    """The days a training example at `dt` is rewarded on: dt .. dt + days - 1."""
    if days < 1:
        raise ConfigError(f"a reward window needs at least one day, not {days}")
    return Window(RunDate.parse(dt).day, days)


def check_no_leakage(training: Iterable[tuple[str, Window]], evaluation: Window) -> None:
    """Refuse training examples (user, reward window) that could have seen what `evaluation`
    scores: every reward window must end on or before the evaluation window's first day, so
    neither the rewards nor any history the policy read during training reach into it."""
    leaks = [(user, window) for user, window in training if window.end > evaluation.start]
    if leaks:
        user, window = leaks[0]
        raise RecGPTError(
            f"{len(leaks)} training example(s) reach into the evaluation window {evaluation}: "
            f"e.g. user {user!r} rewarded on {window}. Train on dates whose reward window ends by "
            f"{(evaluation.start - _dt.timedelta(days=1)).isoformat()}"
        )
