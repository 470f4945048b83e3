"""The entity adaptor: a 2-layer MLP that maps an item's text embedding into the LLM's
input-embedding space, so one `[entity]` slot stands for a whole title in hybrid prompts.

Trained with the LLM frozen in two phases. Alignment first (seconds, no LLM pass): each
self-perception item's slot regresses, by cosine, onto the mean input embedding of the tokens of
"title | category", so every slot starts where the model already reads that item's words. Then the generative
objectives: self-perception (from a single entity slot the model reproduces the item's title and
category) and distillation (from a hybrid context the model reproduces what it answers for the same
context in text). Saved as a versioned artifact: weights, the training-data hash, metrics and
the models it belongs to.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recgpt.errors import ConfigError
from recgpt.llm.request import EMBED_MARK
from recgpt.progress import Ticker
from recgpt.rundate import RunDate

WEIGHTS = "adaptor.safetensors"
META = "adaptor.json"
EXAMPLES = "examples.json"

PROBE_PROMPT = f"Item: {EMBED_MARK}\nWhat is this item? Answer as: title | category"
DISTILL_INSTRUCTION = "In a few words, what is this shopper interested in right now?"
# The settings that shape an artifact: with the data hash and the models, its version key.
TRAINING_SETTINGS = (
    "hidden",
    "steps",
    "batch_size",
    "lr",
    "seed",
    "distill_buckets",
    "distill_max_entities",
    "distill_tokens",
    "distill_share",
    "align_steps",
    "align_lr",
)


def build_adaptor(in_dim: int, hidden: int, out_dim: int, target_norm: float | None = None) -> Any:
    import torch

    class EntityAdaptor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(in_dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, out_dim)
            )
            # Every slot at the typical norm of the LLM's token embeddings: the frozen model sees
            # vectors of a familiar scale and the MLP learns only their direction.
            self.register_buffer("scale", torch.tensor(float(target_norm or 1.0)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.net(x)
            return y * (self.scale / (y.norm(dim=-1, keepdim=True) + 1e-6))

    return EntityAdaptor()


@dataclass
class Example:
    """One training sequence: chat messages whose marks take `entities` (item embeddings, in
    order) and the answer the frozen model must produce."""

    messages: tuple[Mapping[str, str], ...]
    entities: np.ndarray  # [k, embedding_dim]
    target: str
    kind: str  # self_perception | distillation
    # The text whose tokens' mean input embedding the single slot is aligned with (self-perception:
    # its target, the item's core title and category); "" for examples that take no part in it.
    anchor: str = ""


def data_hash(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([list(e.messages), e.target, e.kind, e.anchor], sort_keys=True).encode())
        h.update(np.ascontiguousarray(e.entities, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def self_perception_examples(items: Sequence[Mapping[str, Any]]) -> list[Example]:
    """From one entity slot, the item's core title and category."""
    examples = []
    for it in items:
        target = f"{it['title']} | {it['category']}"
        vector = np.asarray([it["embedding"]], dtype=np.float32)
        examples.append(
            Example(({"role": "user", "content": PROBE_PROMPT},), vector, target, "self_perception", target)
        )
    return examples


def distill_messages(history: str) -> tuple[dict[str, str], ...]:
    """The distillation prompt: a user's newest history lines (text or hybrid form) and the one
    question whose text-form answer the hybrid form must reproduce."""
    return (
        {"role": "user", "content": f"Shopping history (oldest first):\n{history}\n\n{DISTILL_INSTRUCTION}"},
    )


def newest_lines(v1_text: str, hybrid_text: str, buckets: int, max_marks: int) -> tuple[str, str, int] | None:
    """The newest lines of both forms (the same buckets): at most `buckets` of them, and no more
    than fit in `max_marks` entity marks, so a distillation sequence stays short whatever the
    user's history (one busy day can hold hundreds of items). Returns the two texts and the marks
    they hold; None when even the newest line holds more than `max_marks`."""
    v1, hybrid = v1_text.splitlines(), hybrid_text.splitlines()
    kept = marks = 0
    while kept < min(buckets, len(hybrid)):
        line_marks = hybrid[-(kept + 1)].count(EMBED_MARK)
        if marks + line_marks > max_marks:
            break
        marks += line_marks
        kept += 1
    if kept == 0:
        return None
    return "\n".join(v1[-kept:]), "\n".join(hybrid[-kept:]), marks


@dataclass(frozen=True)
class DistillationUser:
    """A user chosen for distillation: the newest lines of their context in text form (the
    teacher's prompt) and hybrid form (the student's), and the items behind the hybrid marks."""

    user_id: str
    text: str
    hybrid: str
    entity_ids: list[str]


def distillation_users(
    contexts: Sequence[Mapping[str, Any]], rng: random.Random, wanted: int, buckets: int, max_marks: int
) -> list[DistillationUser]:
    """Up to `wanted` users in the order `rng` shuffles `contexts` into (rows of user_id, v1_text,
    hybrid_text, entity_ids), each cut to its newest lines (`newest_lines`); a user whose newest
    bucket alone holds more than `max_marks` entities is passed over."""
    rows = list(contexts)
    rng.shuffle(rows)
    chosen: list[DistillationUser] = []
    for r in rows:
        if len(chosen) == wanted:
            break
        lines = newest_lines(r["v1_text"], r["hybrid_text"], buckets, max_marks)
        if lines is None:
            continue  # the newest bucket alone is longer than a training sequence may be
        text, hybrid, marks = lines
        ids = list(r["entity_ids"])
        chosen.append(
            DistillationUser(str(r["user_id"]), text, hybrid, ids[len(ids) - marks :] if marks else [])
        )
    return chosen


@dataclass
class TrainResult:
    adaptor: Any
    metrics: dict[str, Any] = field(default_factory=dict)


def default_threads() -> int:
    """Torch threads for training on the driver: every core, but one while this process starts
    an engine server beside the training (the chain does, before its first LLM stage). The stage
    otherwise trains alone (Spark idles meanwhile): a step took 3.4 s on two threads against 6.6 s
    on one, on 2 cores. Torch's threads spin on each operation, so two busy pools on the same
    cores slow each other down many times over (15x slower generation was measured)."""
    from recgpt.llm.server import starting_in_background

    cores = os.cpu_count() or 1
    return max(1, cores - 1) if starting_in_background() else cores


class FrozenLM:
    """The LLM (transformers, fp32, frozen) used to train the adaptor: chat template, input
    embeddings of text pieces, and the loss of a target given spliced embeddings."""

    def __init__(self, model_path: str, threads: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.threads = threads  # None: `default_threads()`, looked at again before each forward pass
        self.pace()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_path)
        self.model: Any = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        table: Any = self.model.get_input_embeddings().weight
        self.table = table
        self.hidden = int(table.shape[1])
        self.token_norm = float(table.norm(dim=-1).mean())

    def pace(self) -> None:
        """Torch's thread count for the next batch: the configured one, or `default_threads()`."""
        import torch

        wanted = self.threads or default_threads()
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def anchor(self, text: str) -> Any:
        """The mean input embedding of `text`'s tokens: where the alignment sends a slot."""
        import torch

        with torch.no_grad():
            return self.table[torch.tensor(self.ids(text))].mean(dim=0)

    def prompt(self, messages: Sequence[Mapping[str, str]]) -> str:
        return str(
            self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        )

    def sequence(self, example: Example, adaptor: Any) -> tuple[Any, list[int]]:
        """Input embeddings [n, hidden] of prompt + target, and labels (-100 on the prompt)."""
        import torch

        pieces = self.prompt(example.messages).split(EMBED_MARK)
        if len(pieces) != len(example.entities) + 1:
            raise ValueError(f"{len(pieces) - 1} marks for {len(example.entities)} entities")
        slots = (
            adaptor(torch.as_tensor(example.entities, dtype=torch.float32)) if len(example.entities) else None
        )
        parts, labels = [], []
        for i, piece in enumerate(pieces):
            ids = self.ids(piece)
            if ids:
                parts.append(self.table[torch.tensor(ids)])
                labels += [-100] * len(ids)
            if slots is not None and i < len(example.entities):
                parts.append(slots[i : i + 1])
                labels.append(-100)
        target = [*self.ids(example.target), int(self.tokenizer.eos_token_id)]
        parts.append(self.table[torch.tensor(target)])
        labels += target
        return torch.cat(parts, dim=0), labels

    def loss(self, examples: Sequence[Example], adaptor: Any) -> Any:
        import torch

        self.pace()
        seqs = [self.sequence(e, adaptor) for e in examples]
        width = max(s.shape[0] for s, _ in seqs)
        embeds = torch.zeros(len(seqs), width, self.hidden)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        for row, (seq, lab) in enumerate(seqs):
            embeds[row, : seq.shape[0]] = seq
            mask[row, : seq.shape[0]] = 1
            labels[row, : len(lab)] = torch.tensor(lab)
        return self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    def generate(
        self,
        prompts: Sequence[Sequence[Mapping[str, str]]],
        max_new_tokens: int,
        batch: int = 8,
        progress: Callable[[str], None] | None = None,
    ) -> list[str]:
        """The frozen model's greedy answers to text prompts (the distillation teacher), `batch`
        prompts per forward pass, left-padded: one call per prompt spent most of its time in
        per-token overhead on CPU."""
        import torch

        pad = self.tokenizer.pad_token_id
        pad = int(self.tokenizer.eos_token_id if pad is None else pad)
        answers: list[str] = []
        ticker = Ticker("adaptor teacher", len(prompts), "answers", emit=progress)
        for start in range(0, len(prompts), batch):
            self.pace()
            encoded = [self.ids(self.prompt(m)) for m in prompts[start : start + batch]]
            width = max(len(ids) for ids in encoded)
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
            with torch.no_grad():
                out = self.model.generate(
                    ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
                )
            answers += [
                str(self.tokenizer.decode(row[width:], skip_special_tokens=True)).strip() for row in out
            ]
            ticker.advance(len(encoded))
        return answers


def align(
    lm: FrozenLM,
    adaptor: Any,
    train_set: Sequence[Example],
    holdout: Sequence[Example],
    steps: int,
    lr: float,
    seed: int,
) -> dict[str, Any]:
    """Cosine regression of each anchored example's slot onto its anchor's mean token embedding
    (`FrozenLM.anchor`), in batches of 128 with AdamW. From random slots, 200 self-perception steps
    left the held-out loss at 4.60; from slots aligned with the titles, the same steps reached
    3.16: the model already reads an aligned slot as those words. Returns the held-out cosine distance
    before and after, and the seconds it took."""
    import torch

    def pairs(examples: Sequence[Example]) -> tuple[Any, Any]:
        anchored = [e for e in examples if e.anchor and len(e.entities) == 1]
        if not anchored:
            return torch.zeros(0, 1), torch.zeros(0, lm.hidden)
        x = torch.as_tensor(np.stack([e.entities[0] for e in anchored]), dtype=torch.float32)
        return x, torch.stack([lm.anchor(e.anchor) for e in anchored])

    x, y = pairs(train_set)
    hx, hy = pairs(holdout)
    if steps <= 0 or not len(x):
        return {}

    def distance(a: Any, b: Any) -> float:
        with torch.no_grad():
            return round(float(1 - torch.nn.functional.cosine_similarity(adaptor(a), b).mean()), 4)

    before = distance(hx, hy) if len(hx) else None
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(adaptor.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (min(128, len(x)),), generator=generator)
        loss = 1 - torch.nn.functional.cosine_similarity(adaptor(x[batch]), y[batch]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 1),
        "holdout_distance_before": before,
        "holdout_distance_after": distance(hx, hy) if len(hx) else None,
    }


def train(
    lm: FrozenLM,
    train_set: Sequence[Example],
    holdout: Sequence[Example],
    cfg: Mapping[str, Any],
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """AdamW on the adaptor only: the alignment (`align`, `align_steps` of them), then `steps`
    generative steps; reports held-out loss per objective before and after."""
    import torch

    if not train_set:
        raise ConfigError("no training examples for the entity adaptor")
    dim = int(train_set[0].entities.shape[1])
    torch.manual_seed(int(cfg.get("seed", 0)))
    adaptor = build_adaptor(dim, int(cfg["hidden"]), lm.hidden, lm.token_norm)
    optimizer = torch.optim.AdamW(adaptor.parameters(), lr=float(cfg["lr"]), weight_decay=0.0)
    steps, batch = int(cfg["steps"]), int(cfg["batch_size"])
    rng = random.Random(int(cfg.get("seed", 0)))

    def evaluate() -> dict[str, float]:
        out = {}
        with torch.no_grad():
            for kind in sorted({e.kind for e in holdout}):
                subset = [e for e in holdout if e.kind == kind]
                losses = [
                    float(lm.loss(subset[i : i + batch], adaptor)) for i in range(0, len(subset), batch)
                ]
                out[kind] = round(sum(losses) / len(losses), 4)
        return out

    before = evaluate()
    started = time.perf_counter()
    align_steps, align_lr = int(cfg.get("align_steps", 0)), float(cfg.get("align_lr", 0.003))
    aligned = align(lm, adaptor, train_set, holdout, align_steps, align_lr, int(cfg.get("seed", 0)))
    losses: list[float] = []
    # One objective per step: batches of one kind pad to similar lengths (self-perception
    # sequences are short, distillation ones long), and distillation gets its share of steps
    # however few its examples are.
    pools = {kind: [e for e in train_set if e.kind == kind] for kind in sorted({e.kind for e in train_set})}
    others = [k for k in pools if k != "distillation"]
    share = float(cfg.get("distill_share", 0.25)) if others and "distillation" in pools else 0.0
    ticker = Ticker("adaptor training", steps, "steps", emit=progress)
    for _ in range(steps):
        kind = "distillation" if (not others or rng.random() < share) else others[0]
        pool = pools[kind]
        sample = rng.sample(pool, min(batch, len(pool)))
        loss = lm.loss(sample, adaptor)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        recent = losses[-10:]
        ticker.advance(note=f"train loss {sum(recent) / len(recent):.3f}")
    after = evaluate()
    metrics = {
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 1),
        "train_loss_first": round(losses[0], 4),
        "train_loss_last": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "holdout_loss_before": before,
        "holdout_loss_after": after,
        "alignment": aligned,
        "train_examples": len(train_set),
        "holdout_examples": len(holdout),
        "perplexity_after": {k: round(math.exp(min(v, 50)), 2) for k, v in after.items()},
    }
    return TrainResult(adaptor, metrics)


def distillation_examples(
    lm: FrozenLM,
    users: Sequence[DistillationUser],
    vectors: Mapping[str, Any],
    max_new_tokens: int,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Example], list[str]]:
    """One distillation example per user whose items all have a vector in `vectors` (item id ->
    embedding): the hybrid prompt with those embeddings, and as the target what the frozen `lm`
    answers to the text prompt. Returns the examples and, in the same order, their users."""
    usable = [u for u in users if all(i in vectors for i in u.entity_ids)]  # else: no vector yet
    teachers = lm.generate([distill_messages(u.text) for u in usable], max_new_tokens, progress=progress)
    examples: list[Example] = []
    for user, teacher in zip(usable, teachers, strict=True):
        ids = user.entity_ids
        entities = np.asarray([vectors[i] for i in ids], dtype=np.float32).reshape(len(ids), -1)
        examples.append(Example(distill_messages(user.hybrid), entities, teacher, "distillation"))
    user_ids = [u.user_id for u in usable]
    return examples, user_ids


def artifact_meta(
    train_set: Sequence[Example],
    result: TrainResult,
    lm_hidden: int,
    models: Mapping[str, str],
    cfg: Mapping[str, Any],
    dt: RunDate,
    run_id: str,
) -> dict[str, Any]:
    """The adaptor.json of a trained artifact: what it was trained on (data hash, `models`: the
    `llm` and `embedding_model` names, TRAINING_SETTINGS of `cfg`), its metrics, and the run
    date and run that trained it."""
    return {
        "data_hash": data_hash(train_set),
        "llm": models["llm"],
        "llm_hidden": lm_hidden,
        "embedding_model": models["embedding_model"],
        "embedding_dim": int(train_set[0].entities.shape[1]),
        "config": {k: cfg[k] for k in TRAINING_SETTINGS},
        "metrics": result.metrics,
        "trained_for_dt": dt.iso,
        "run_id": run_id,
        "trained_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def trained_on(
    item_ids: Sequence[str], holdout_items: int, user_ids: Sequence[str], holdout_users: int
) -> dict[str, dict[str, list[str]]]:
    """Which items (self-perception) and users (distillation) trained an artifact and which were
    held out (the first ones): evaluations probe items it has never seen."""
    return {
        "self_perception": {
            "holdout": list(item_ids[:holdout_items]),
            "train": list(item_ids[holdout_items:]),
        },
        "distillation": {"holdout": list(user_ids[:holdout_users]), "train": list(user_ids[holdout_users:])},
    }


def compatible(folder: Path | None, llm: str, embedding_model: str) -> bool:
    """Whether `folder` holds an artifact trained for this LLM and embedding model (the nightly
    chain keeps it instead of training again)."""
    if folder is None:
        return False
    meta = json.loads((folder / META).read_text())
    return bool(meta.get("llm") == llm and meta.get("embedding_model") == embedding_model)


def save(
    adaptor: Any, root: str | Path, meta: Mapping[str, Any], examples: Mapping[str, Any] | None = None
) -> Path:
    """Write weights + metadata under root/<version>/ (version from data hash and settings), and
    the ids of the items and users it was trained and held out on."""
    from safetensors.torch import save_file

    key = json.dumps({k: meta[k] for k in ("data_hash", "llm", "embedding_model", "config")}, sort_keys=True)
    version = hashlib.sha256(key.encode()).hexdigest()[:12]
    folder = Path(root) / version
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in adaptor.state_dict().items()}, str(folder / WEIGHTS))
    (folder / META).write_text(json.dumps({**meta, "version": version}, indent=2, default=str))
    if examples is not None:
        (folder / EXAMPLES).write_text(json.dumps(examples))
    return folder


def examples_of(folder: str | Path) -> dict[str, Any]:
    """The training and held-out ids recorded with an artifact (empty if none were)."""
    path = Path(folder) / EXAMPLES
    return json.loads(path.read_text()) if path.is_file() else {}


def load(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / META).is_file():
        raise ConfigError(
            f"{folder} is not an adaptor artifact (no {META}); run `python -m jobs.train_adaptor`"
        )
    meta = json.loads((folder / META).read_text())
    state = load_file(str(folder / WEIGHTS))
    adaptor = build_adaptor(
        int(meta["embedding_dim"]), int(meta["config"]["hidden"]), int(meta["llm_hidden"])
    )
    adaptor.load_state_dict(state)
    adaptor.eval()
    return adaptor, meta


def latest(root: str | Path) -> Path | None:
    """The most recently trained artifact under root, if any."""
    folders = [p for p in Path(root).glob("*") if (p / META).is_file()]
    if not folders:
        return None
    return max(folders, key=lambda p: json.loads((p / META).read_text()).get("trained_at", ""))


def resolve(root: str | Path, pinned: str | None, expected: Mapping[str, str], dt: Any) -> Path:
    """The artifact a hybrid run uses: `pinned` if set, else the newest under `root`; it must have
    been trained for the `expected` models (`llm`, `embedding_model`)."""
    root = Path(root)
    folder = root / str(pinned) if pinned else latest(root)
    if folder is None or not (folder / META).is_file():
        raise ConfigError(
            f"context.mode=hybrid needs an entity adaptor under {root}: run `python -m jobs.train_adaptor "
            f"run.dt={dt}` first (or mine with context.mode=text)"
        )
    meta = json.loads((folder / META).read_text())
    found = {k: meta.get(k) for k in expected}
    if found != dict(expected):
        raise ConfigError(f"adaptor {folder.name} was trained for {found}, this run uses {dict(expected)}")
    return folder


def entity_vectors(adaptor: Any, embeddings: np.ndarray) -> np.ndarray:
    """Entity slot vectors [k, llm_hidden] for item embeddings [k, dim] (inference)."""
    import torch

    with torch.no_grad():
        return adaptor(torch.as_tensor(np.asarray(embeddings, dtype=np.float32))).numpy()
