"""The judge's reward model: one scalar per tag or explanation in its context, trained on the
judge's grades so that within a user's list S ranks above A and B, and A above B; its score is
what reinforcement learning of the tag experts will later maximise.

Encoder and head: the project's own item-embedding model (`recgpt.embeddings.Embedder`), frozen,
embeds the context and the candidate; a small MLP reads [u, v, u*v, |u-v|, kind] of the two unit
vectors and gives the score. The encoder already places tags, titles and lines in the space the
judge's relevance dimensions measure in, and a head of a few thousand weights trains on CPU in
seconds from the few hundred judged rows of a night; fine-tuning the encoder would need far more
grades than a judged sample holds.

Two objectives on the same features, split, steps and seed: listwise (ListNet, the one the
artifact keeps by default) and pointwise (regression on the grade), so the benchmark can say
what ranking within lists buys. Saved as a versioned artifact like the entity adaptor: weights,
the training-data hash, the settings, the encoder and the held-out ranking accuracies.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recgpt.embeddings import Embedder, item_text
from recgpt.errors import ConfigError, RecGPTError
from recgpt.explain.prompts import ItemFacts
from recgpt.rundate import RunDate

WEIGHTS = "reward.safetensors"
GATE_WEIGHTS = "reward_gate.safetensors"
META = "reward.json"
KINDS: tuple[str, ...] = ("tag", "explanation")
GRADE_VALUE: dict[str, float] = {"S": 2.0, "A": 1.0, "B": 0.0}
LOSSES: tuple[str, ...] = ("listwise", "pointwise")
TRAIN_COMMAND = "python -m jobs.train_reward run.dt=YYYY-MM-DD"

# Texts in, one row per text out (unit rows or not: the features normalise them).
Encode = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class RewardSettings:
    """The `reward` settings that shape a trained head (with the data and the encoder, the
    artifact's version key)."""

    loss: str  # the objective the saved head is trained with: listwise or pointwise
    hidden: int
    steps: int  # full-batch Adam steps, per objective
    learning_rate: float
    weight_decay: float
    temperature: float  # ListNet: the grades' softmax is over grade value / temperature
    holdout_share: float  # share of users whose lists are held out (a seeded hash of the id)
    seed: int
    min_pairs: int  # fewer graded training pairs than this: refuse to train

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> RewardSettings:
        """Settings from the `reward` mapping (its other keys, artifacts_dir, are ignored)."""
        try:
            settings = cls(
                loss=str(cfg["loss"]),
                hidden=int(cfg["hidden"]),
                steps=int(cfg["steps"]),
                learning_rate=float(cfg["learning_rate"]),
                weight_decay=float(cfg["weight_decay"]),
                temperature=float(cfg["temperature"]),
                holdout_share=float(cfg["holdout_share"]),
                seed=int(cfg["seed"]),
                min_pairs=int(cfg["min_pairs"]),
            )
        except KeyError as exc:
            raise ConfigError(f"reward.{exc.args[0]} is not set") from exc
        if settings.loss not in LOSSES:
            raise ConfigError(f"reward.loss must be one of {', '.join(LOSSES)}, not {settings.loss!r}")
        if settings.hidden < 1 or settings.steps < 1:
            raise ConfigError("reward.hidden and reward.steps must be at least 1")
        if settings.temperature <= 0:
            raise ConfigError(f"reward.temperature must be above 0, not {settings.temperature}")
        if not 0.0 <= settings.holdout_share < 1.0:
            raise ConfigError(f"reward.holdout_share must be in [0, 1), not {settings.holdout_share}")
        return settings

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RewardExample:
    """One judged output: the candidate `text` (a tag, or an explanation line) in its `context`,
    and the judge's grade. Pairs are compared only within a `group`: one user's list of one
    kind in one variant."""

    group: str
    user_id: str
    kind: str  # tag | explanation
    context: str
    text: str
    grade: str  # S, A or B


def list_key(user_id: str, kind: str, variant: str = "") -> str:
    """The group of a user's outputs of one kind in one variant ("pipeline/context_mode")."""
    return f"{variant}|{user_id}|{kind}"


def tag_context(persona: str, history: Sequence[str]) -> str:
    """What a tag answers to: the persona it was mined for and the user's newest history
    titles, sorted (the judge's inputs hold them as a set; the encoder reads the first few
    hundred word pieces)."""
    return f"Persona: {persona or 'general shopper'}. History: {'; '.join(sorted(history))}"


def explanation_context(tag: str, item: ItemFacts) -> str:
    """What an explanation answers to: the interest and the item's facts, the item as the item
    embeddings read it (title | category path | brand) plus its price."""
    facts = item_text(item.title, item.category, item.category_path, item.brand)
    price = item.price_text()
    return f"Interest: {tag}. Item: {facts}" + (f" | price {price}" if price else "")


def tag_example(
    user_id: str, persona: str, history: Sequence[str], tag: str, grade: str, variant: str = ""
) -> RewardExample:
    return RewardExample(
        list_key(user_id, "tag", variant), user_id, "tag", tag_context(persona, history), tag, grade
    )


def explanation_example(
    user_id: str, tag: str, item: ItemFacts, line: str, grade: str, variant: str = ""
) -> RewardExample:
    return RewardExample(
        list_key(user_id, "explanation", variant),
        user_id,
        "explanation",
        explanation_context(tag, item),
        line,
        grade,
    )


def data_hash(examples: Sequence[RewardExample]) -> str:
    """The training data's identity, whatever order the rows were read in."""
    rows = sorted(json.dumps(asdict(e), sort_keys=True) for e in examples)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def held_out(user_id: str, share: float, seed: int) -> bool:
    """Whether the user's lists are held out: a seeded hash of the id below `share`, so every
    list of a user (every kind and variant) falls on the same side, for either objective."""
    digest = hashlib.sha256(f"{seed}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share


# -- features and the head ----------------------------------------------------------------------


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def features(
    kinds: Sequence[str], contexts: Sequence[str], texts: Sequence[str], encode: Encode
) -> tuple[np.ndarray, np.ndarray]:
    """Per example [u, v, u*v, |u-v|, kind] (u: the context's unit vector, v: the candidate's,
    kind 1 for an explanation), and the cosine u.v. Each distinct text is encoded once."""
    if not (len(kinds) == len(contexts) == len(texts)):
        raise ValueError("kinds, contexts and texts must be of one length")
    if unknown := sorted(set(kinds) - set(KINDS)):
        raise ValueError(f"unknown kinds {unknown}: a reward example is a {' or '.join(KINDS)}")
    distinct = sorted(set(contexts) | set(texts))
    rows = dict(zip(distinct, _unit(encode(distinct)), strict=True)) if distinct else {}
    if not rows:
        return np.zeros((0, 1), dtype=np.float32), np.zeros(0, dtype=np.float32)
    u = np.stack([rows[c] for c in contexts])
    v = np.stack([rows[t] for t in texts])
    kind = np.asarray([[float(k == "explanation")] for k in kinds], dtype=np.float32)
    return np.concatenate([u, v, u * v, np.abs(u - v), kind], axis=1), (u * v).sum(axis=1)


def feature_width(dimension: int) -> int:
    return 4 * dimension + 1


def build_head(in_dim: int, hidden: int) -> torch.nn.Module:
    """Linear -> ReLU -> Linear: one scalar per feature row."""
    return torch.nn.Sequential(
        torch.nn.Linear(in_dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1), torch.nn.Flatten(0)
    )


# -- objectives and the ranking figure ----------------------------------------------------------


@dataclass(frozen=True)
class GradedLists:
    """The groups with at least two distinct grades (a list of one grade says nothing about
    order), as padded rows of example positions."""

    index: torch.Tensor  # [lists, longest] example positions (0 on padding)
    mask: torch.Tensor  # [lists, longest] true on real entries
    target: torch.Tensor  # [lists, longest] softmax of grade value / temperature (0 on padding)

    @classmethod
    def of(cls, grades: Sequence[str], groups: Sequence[str], temperature: float) -> GradedLists:
        members: dict[str, list[int]] = defaultdict(list)
        for i, group in enumerate(groups):
            members[group].append(i)
        ranked = [m for m in members.values() if len({grades[i] for i in m}) > 1]
        longest = max((len(m) for m in ranked), default=1)
        index = torch.zeros(len(ranked), longest, dtype=torch.long)
        mask = torch.zeros(len(ranked), longest, dtype=torch.bool)
        values = torch.full((len(ranked), longest), float("-inf"))
        for row, m in enumerate(ranked):
            index[row, : len(m)] = torch.tensor(m)
            mask[row, : len(m)] = True
            values[row, : len(m)] = torch.tensor([GRADE_VALUE[grades[i]] / temperature for i in m])
        target = torch.softmax(values, dim=1) if ranked else values
        return cls(index, mask, target)


def listwise_loss(scores: torch.Tensor, lists: GradedLists) -> torch.Tensor:
    """ListNet: per graded list, the cross-entropy between the grades' softmax and the scores'
    softmax; the mean over lists (zero when no list has two grades)."""
    if lists.index.shape[0] == 0:
        return scores.sum() * 0.0
    rows = scores[lists.index].masked_fill(~lists.mask, float("-inf"))
    log_p = torch.log_softmax(rows, dim=1).masked_fill(~lists.mask, 0.0)
    return -(lists.target * log_p).sum(dim=1).mean()


def pointwise_loss(scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Each example regressed on its grade value (S 2, A 1, B 0), mean squared error. MSE rather
    than a binary cross-entropy: the grades are three ordered levels, and one regression target
    keeps S above A above B, where a binary target would have to merge two of them (S with A:
    defect or not; A with B: excellent or not) and lose one of the orders the lists hold."""
    return torch.nn.functional.mse_loss(scores, values)


def _graded_pairs(grades: Sequence[str], groups: Sequence[str]) -> Iterator[tuple[int, int]]:
    """(better, worse) positions of every pair within one group whose grades differ."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    for m in members.values():
        for i, j in itertools.combinations(m, 2):
            a, b = GRADE_VALUE[grades[i]], GRADE_VALUE[grades[j]]
            if a != b:
                yield (i, j) if a > b else (j, i)


def pairwise_accuracy(
    scores: Sequence[float] | np.ndarray, grades: Sequence[str], groups: Sequence[str]
) -> tuple[float | None, int]:
    """The share of pairs within one group (a user's list) with different grades that the
    scores order as the grades do (a tie counts half), and the number of such pairs; the share
    is None without a pair. Pairs across groups are never compared: the judge grades a list."""
    right, pairs = 0.0, 0
    for better, worse in _graded_pairs(grades, groups):
        pairs += 1
        a, b = float(scores[better]), float(scores[worse])
        right += 1.0 if a > b else 0.5 if a == b else 0.0
    return (right / pairs if pairs else None), pairs


# -- training -----------------------------------------------------------------------------------


@dataclass
class RewardFit:
    head: torch.nn.Module  # trained with the configured loss
    dimension: int  # the encoder's
    metrics: dict[str, Any] = field(default_factory=dict)
    # The pointwise head and the logistic map of its scores (`calibrate`): the absolute level
    # a threshold needs, which a listwise head (blind to a shift of a whole list) lacks.
    gate: torch.nn.Module | None = None
    calibration: dict[str, list[float]] = field(default_factory=dict)


def calibrate(scores: np.ndarray, grades: Sequence[str], kinds: Sequence[str]) -> dict[str, list[float]]:
    """Per kind, and over both ("all"), the slope and intercept of a logistic map from a score to
    the probability that the judge grades the candidate A or S: a scale on which a threshold
    means the same for every trained head (a listwise head's scores are only comparable within
    a list). A kind whose training rows hold one grade class only gets no map of its own."""
    from sklearn.linear_model import LogisticRegression

    good = np.array([GRADE_VALUE[g] >= GRADE_VALUE["A"] for g in grades])
    maps: dict[str, list[float]] = {}
    for kind in (*KINDS, "all"):
        keep = np.array([kind in ("all", k) for k in kinds], dtype=bool)
        if keep.sum() < 2 or good[keep].all() or not good[keep].any():
            continue
        model = LogisticRegression(C=1.0).fit(scores[keep].reshape(-1, 1), good[keep])
        maps[kind] = [round(float(model.coef_[0, 0]), 6), round(float(model.intercept_[0]), 6)]
    return maps


@contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread while the head trains or scores: its matrices are tiny, and torch's
    thread pool spins on every operation (200 steps took 3 s instead of 0.1 s on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(x: torch.Tensor, targets: Any, loss: str, settings: RewardSettings) -> tuple[torch.nn.Module, float]:
    """Full-batch Adam from the seed's initial weights: both objectives start from the same head."""
    torch.manual_seed(settings.seed)
    head = build_head(int(x.shape[1]), settings.hidden)
    optimizer = torch.optim.Adam(
        head.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    value = 0.0
    for _ in range(settings.steps):
        scores = head(x)
        objective = listwise_loss(scores, targets) if loss == "listwise" else pointwise_loss(scores, targets)
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        value = float(objective.detach())
    head.eval()
    return head, value


def _scores(head: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    if not len(x):
        return np.zeros(0, dtype=np.float32)
    with torch.no_grad():
        return head(x).numpy()


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _side(examples: Sequence[RewardExample]) -> dict[str, int]:
    return {
        "users": len({e.user_id for e in examples}),
        "groups": len({e.group for e in examples}),
        "examples": len(examples),
        "pairs": sum(1 for _ in _graded_pairs([e.grade for e in examples], [e.group for e in examples])),
    }


def train_reward(
    examples: Sequence[RewardExample],
    settings: RewardSettings,
    encode: Encode,
    holdout_users: Collection[str] | None = None,
) -> RewardFit:
    """Both objectives on the same features, split, steps and seed; returns the head of
    `settings.loss` and metrics: held-out pairwise accuracy of each objective and of the
    untrained cosine u.v, overall and per kind, with the pair, list and example counts.

    The held-out users are `holdout_users` when given (the benchmark's split), else those
    `held_out` picks. Raises RecGPTError when the training lists hold fewer than
    `settings.min_pairs` graded pairs."""
    if holdout_users is None:
        test = [held_out(e.user_id, settings.holdout_share, settings.seed) for e in examples]
    else:
        test = [e.user_id in holdout_users for e in examples]
    train_set = [e for e, t in zip(examples, test, strict=True) if not t]
    holdout = [e for e, t in zip(examples, test, strict=True) if t]
    sides = {"train": _side(train_set), "holdout": _side(holdout)}
    if sides["train"]["pairs"] < max(1, settings.min_pairs):
        raise RecGPTError(
            f"{sides['train']['pairs']} graded pairs to train the reward model on (reward.min_pairs is "
            f"{settings.min_pairs}): judge more users (judge.sample_users) or lower reward.min_pairs"
        )
    started = time.perf_counter()
    x_train, _ = features(
        [e.kind for e in train_set], [e.context for e in train_set], [e.text for e in train_set], encode
    )
    x_test, cosine = features(
        [e.kind for e in holdout], [e.context for e in holdout], [e.text for e in holdout], encode
    )
    grades, groups = [e.grade for e in train_set], [e.group for e in train_set]
    targets = {
        "listwise": GradedLists.of(grades, groups, settings.temperature),
        "pointwise": torch.tensor([GRADE_VALUE[g] for g in grades]),
    }
    heads, final_loss = {}, {}
    with _one_thread():
        for loss in LOSSES:
            heads[loss], final_loss[loss] = _fit(torch.as_tensor(x_train), targets[loss], loss, settings)
        train_scores = {loss: _scores(heads[loss], torch.as_tensor(x_train)) for loss in LOSSES}
        test_scores = {loss: _scores(heads[loss], torch.as_tensor(x_test)) for loss in LOSSES}
    test_grades, test_groups = [e.grade for e in holdout], [e.group for e in holdout]
    test_scores["cosine"] = cosine

    def accuracy(scores: np.ndarray, keep: Sequence[bool]) -> float | None:
        chosen = [i for i, k in enumerate(keep) if k]
        return _rounded(
            pairwise_accuracy(
                scores[chosen], [test_grades[i] for i in chosen], [test_groups[i] for i in chosen]
            )[0]
        )

    everyone = [True] * len(holdout)
    by_kind = {}
    for kind in KINDS:
        keep = [e.kind == kind for e in holdout]
        if any(keep):
            pairs = _side([e for e in holdout if e.kind == kind])["pairs"]
            by_kind[kind] = {"pairs": pairs, **{k: accuracy(s, keep) for k, s in test_scores.items()}}
    metrics = {
        "loss": settings.loss,
        "steps": settings.steps,
        "seconds": round(time.perf_counter() - started, 2),
        **sides,
        "holdout_pairwise_accuracy": {k: accuracy(s, everyone) for k, s in test_scores.items()},
        "holdout_by_kind": by_kind,
        "train_pairwise_accuracy": {
            loss: _rounded(pairwise_accuracy(train_scores[loss], grades, groups)[0]) for loss in LOSSES
        },
        "final_train_loss": {loss: round(v, 5) for loss, v in final_loss.items()},
    }
    dimension = (int(x_train.shape[1]) - 1) // 4
    calibration = calibrate(train_scores["pointwise"], grades, [e.kind for e in train_set])
    return RewardFit(heads[settings.loss], dimension, metrics, heads["pointwise"], calibration)


# -- the artifact -------------------------------------------------------------------------------


def artifact_meta(
    examples: Sequence[RewardExample],
    fit: RewardFit,
    encoder: Mapping[str, Any],
    settings: RewardSettings,
    dt: RunDate | str,
    run_id: str,
) -> dict[str, Any]:
    """The reward.json of a trained head: what it was trained on (data hash, the encoder's
    `name` and its `config`, the settings), its metrics, and the run date and run."""
    return {
        "data_hash": data_hash(examples),
        "examples": len(examples),
        "encoder": {
            "name": str(encoder["name"]),
            "dimension": fit.dimension,
            "config": dict(encoder["config"]),
        },
        "config": settings.as_dict(),
        "loss": settings.loss,
        "metrics": fit.metrics,
        "calibration": fit.calibration,
        "trained_for_dt": RunDate.parse(dt).iso,
        "run_id": run_id,
        "trained_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def version_of(meta: Mapping[str, Any]) -> str:
    """The artifact's version: a hash of the data, the settings and the encoder."""
    key = {
        "data_hash": meta["data_hash"],
        "config": meta["config"],
        "encoder": [meta["encoder"]["name"], meta["encoder"]["dimension"]],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def save(fit: RewardFit, root: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write root/<version>/reward.safetensors (the head of the configured loss),
    reward_gate.safetensors (the calibrated pointwise head) and reward.json."""
    from safetensors.torch import save_file

    version = version_of(meta)
    folder = Path(root) / version
    folder.mkdir(parents=True, exist_ok=True)
    heads = {WEIGHTS: fit.head, GATE_WEIGHTS: fit.gate}
    for name, head in heads.items():
        if head is not None:
            save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(folder / name))
    (folder / META).write_text(json.dumps({**meta, "version": version}, indent=2, default=str))
    return folder


class RewardModel:
    """A trained head with the encoder it was trained on: scores of candidates in contexts, and
    (with the calibrated gate head) the probability that the judge grades them A or S."""

    def __init__(
        self,
        head: torch.nn.Module,
        encode: Encode,
        meta: Mapping[str, Any],
        gate: torch.nn.Module | None = None,
    ) -> None:
        self.head, self.encode, self.meta, self.gate = head, encode, dict(meta), gate

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    def score(self, kinds: Sequence[str], contexts: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """One score per candidate, higher is better (comparable within a list)."""
        x, _ = features(kinds, contexts, texts, self.encode)
        with _one_thread():
            return _scores(self.head, torch.as_tensor(x))

    def probability(self, kinds: Sequence[str], contexts: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Per candidate, the probability that the judge grades it A or S: the gate head's score
        through its logistic map (`calibrate`), comparable across lists, users and nights."""
        maps = self.meta.get("calibration") or {}
        missing = sorted({k for k in kinds if k not in maps and "all" not in maps})
        if self.gate is None or missing:
            raise ConfigError(
                f"reward model {self.meta.get('version')} has no calibrated gate head"
                + (f" for {missing}" if missing else "")
                + " (trained before it existed, or on one grade class only): "
                + f"retrain it with `{TRAIN_COMMAND}`"
            )
        if not kinds:
            return np.zeros(0)
        x, _ = features(kinds, contexts, texts, self.encode)
        with _one_thread():
            scores = _scores(self.gate, torch.as_tensor(x)).astype(np.float64)
        slope, intercept = np.array([maps.get(k, maps.get("all")) for k in kinds], dtype=np.float64).T
        return 1.0 / (1.0 + np.exp(-(slope * scores + intercept)))


def load(folder: str | Path, encode: Encode | None = None) -> RewardModel:
    """The artifact in `folder`, scoring with `encode` or, when None, with the encoder it names
    (the embedding config it was trained with)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / META).is_file():
        raise ConfigError(
            f"{folder} is not a reward-model artifact (no {META}): `{TRAIN_COMMAND}` trains one"
        )
    meta = json.loads((folder / META).read_text())
    dimension = int(meta["encoder"]["dimension"])
    heads: dict[str, torch.nn.Module] = {}
    for name in (WEIGHTS, GATE_WEIGHTS):
        if (folder / name).is_file():
            heads[name] = build_head(feature_width(dimension), int(meta["config"]["hidden"]))
            heads[name].load_state_dict(load_file(str(folder / name)))
            heads[name].eval()
    if encode is None:
        encode = Embedder(meta["encoder"]["config"]).encode
    return RewardModel(heads[WEIGHTS], encode, meta, heads.get(GATE_WEIGHTS))


def latest(root: str | Path) -> Path | None:
    """The most recently trained artifact under root, if any."""
    folders = [p for p in Path(root).glob("*") if (p / META).is_file()]
    if not folders:
        return None
    return max(folders, key=lambda p: json.loads((p / META).read_text()).get("trained_at", ""))


def resolve(root: str | Path, pinned: str | None, embedding_model: str) -> Path:
    """The artifact a consumer scores with: `pinned` if set, else the newest under `root`; it
    must have been trained on `embedding_model`'s vectors."""
    root = Path(root)
    folder = root / str(pinned) if pinned else latest(root)
    if folder is None or not (folder / META).is_file():
        raise ConfigError(f"no reward model under {root}: `{TRAIN_COMMAND}` trains one")
    trained_on = json.loads((folder / META).read_text())["encoder"]["name"]
    if trained_on != embedding_model:
        raise ConfigError(
            f"reward model {folder.name} was trained on {trained_on} vectors, this run uses {embedding_model}"
        )
    return folder
