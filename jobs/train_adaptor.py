"""Stage train_adaptor: train the entity adaptor (item embedding -> one LLM input slot) with the
LLM frozen, on self-perception and distillation examples from the warehouse, and save it as a
versioned artifact. Runs on the driver: the data is small and the model is shared.

    python -m jobs.train_adaptor run.dt=2025-10-28 [adaptor.train=always] [adaptor.steps=...]

In the nightly chain it trains only when no adaptor for the configured LLM and embedding model
exists yet (`adaptor.train: missing`); `adaptor.train=always` retrains.
"""

from __future__ import annotations

import datetime as _dt
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from pyspark.sql import functions as F

from jobs.stage import StageContext, main_for
from recgpt import adaptor as A
from recgpt.context import core_title
from recgpt.errors import RecGPTError
from recgpt.llm.request import EMBED_MARK
from recgpt.tables import USER_CONTEXT
from udfs.embeddings import current_embeddings

STAGE = "train_adaptor"

DISTILL_INSTRUCTION = "In a few words, what is this shopper interested in right now?"


def distill_messages(history: str) -> tuple[dict[str, str], ...]:
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


def compatible(folder: Path | None, llm: str, embedding_model: str) -> bool:
    if folder is None:
        return False
    meta = json.loads((folder / A.META).read_text())
    return bool(meta.get("llm") == llm and meta.get("embedding_model") == embedding_model)


def run(ctx: StageContext) -> None:
    cfg = OmegaConf.to_container(ctx.cfg.adaptor, resolve=True)
    assert isinstance(cfg, dict)
    when = str(cfg.get("train", "missing"))
    if when not in ("missing", "always"):
        raise RecGPTError(f"adaptor.train must be missing or always, not {when!r}")
    current = A.latest(str(cfg["artifacts_dir"]))
    if when == "missing" and compatible(
        current, str(ctx.cfg.llm.model_name), str(ctx.cfg.embedding.model_name)
    ):
        assert current is not None
        ctx.report.rows_in = ctx.report.rows_out = 0
        ctx.report.details["adaptor"] = {"version": current.name, "path": str(current), "trained": False}
        ctx.report.details["training"] = (
            "skipped: a compatible adaptor exists (adaptor.train=always retrains)"
        )
        return
    rng = random.Random(int(cfg["seed"]))
    wh = ctx.warehouse
    emb_model = str(ctx.cfg.embedding.model_name)

    vectors = current_embeddings(wh, ctx.dt, emb_model).where(F.col("embedding").isNotNull())
    items = vectors.join(wh.read_snapshot("items", ctx.dt).select("item_id", "title", "category"), "item_id")
    # A seeded hash order picks the same items whatever the partitioning, without collecting the
    # catalog to the driver.
    picked = (
        items.orderBy(F.xxhash64("item_id", F.lit(int(cfg["seed"]))), "item_id")
        .limit(int(cfg["items"]))
        .toPandas()
    )
    if picked.empty:
        raise RecGPTError(f"no item embeddings as of {ctx.dt}: run `python -m jobs.embed_items` first")
    sp = A.self_perception_examples(
        [
            {
                "embedding": r.embedding,
                "title": core_title(r.title, int(ctx.cfg.compress.core_title_words)),
                "category": r.category,
            }
            for r in picked.itertuples()
        ]
    )
    holdout_n = min(int(cfg["holdout_items"]), len(sp) // 4)
    sp_hold, sp_train = sp[:holdout_n], sp[holdout_n:]

    lm = A.FrozenLM(str(ctx.cfg.llm.model_path), threads=cfg.get("threads"))
    distill: list[A.Example] = []
    distill_users: list[str] = []
    if wh.exists(USER_CONTEXT):
        contexts = (
            wh.read(USER_CONTEXT, dt=ctx.dt)
            .where(F.col("events_kept") > 0)
            .select("user_id", "v1_text", "hybrid_text", "entity_ids")
            .orderBy("user_id")
            .toPandas()
        )
        rows = list(contexts.itertuples())
        rng.shuffle(rows)
        chosen = []
        wanted_users = int(cfg["distill_users"]) + int(cfg["holdout_users"])
        for r in rows:
            if len(chosen) == wanted_users:
                break
            lines = newest_lines(
                r.v1_text, r.hybrid_text, int(cfg["distill_buckets"]), int(cfg["distill_max_entities"])
            )
            if lines is None:
                continue  # the newest bucket alone is longer than a training sequence may be
            text, hybrid, marks = lines
            chosen.append(
                (r.user_id, text, hybrid, list(r.entity_ids)[len(r.entity_ids) - marks :] if marks else [])
            )
        needed = sorted({i for *_, ids in chosen for i in ids})
        wanted = ctx.spark.createDataFrame([(i,) for i in needed], "item_id string")
        by_id = (
            {}
            if not needed
            else dict(
                vectors.join(wanted, "item_id")
                .select("item_id", "embedding")
                .toPandas()
                .itertuples(index=False)
            )
        )
        for user_id, text, hybrid, ids in chosen:
            if any(i not in by_id for i in ids):
                continue  # an item without a vector (should not happen after embed_items)
            teacher = lm.generate(distill_messages(text), int(cfg["distill_tokens"]))
            entities = np.asarray([by_id[i] for i in ids], dtype=np.float32).reshape(len(ids), -1)
            distill.append(A.Example(distill_messages(hybrid), entities, teacher, "distillation"))
            distill_users.append(user_id)
    dist_hold = distill[: int(cfg["holdout_users"])]
    dist_train = distill[int(cfg["holdout_users"]) :]

    train_set, holdout = sp_train + dist_train, sp_hold + dist_hold
    result = A.train(lm, train_set, holdout, cfg, progress=lambda m: print(m, file=sys.stderr, flush=True))
    meta: dict[str, Any] = {
        "data_hash": A.data_hash(train_set),
        "llm": str(ctx.cfg.llm.model_name),
        "llm_hidden": lm.hidden,
        "embedding_model": emb_model,
        "embedding_dim": int(train_set[0].entities.shape[1]),
        "config": {
            k: cfg[k]
            for k in (
                "hidden",
                "steps",
                "batch_size",
                "lr",
                "seed",
                "distill_buckets",
                "distill_max_entities",
                "distill_tokens",
                "distill_share",
            )
        },
        "metrics": result.metrics,
        "trained_for_dt": ctx.dt,
        "run_id": ctx.lineage.run_id,
        "trained_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    # Which items and users trained it: evaluations probe items it has never seen.
    item_ids = [str(i) for i in picked.item_id]
    examples = {
        "self_perception": {"holdout": item_ids[:holdout_n], "train": item_ids[holdout_n:]},
        "distillation": {
            "holdout": distill_users[: int(cfg["holdout_users"])],
            "train": distill_users[int(cfg["holdout_users"]) :],
        },
    }
    folder = A.save(result.adaptor, str(cfg["artifacts_dir"]), meta, examples)

    r = ctx.report
    r.rows_in = len(train_set) + len(holdout)
    r.rows_out = len(train_set)
    r.details["adaptor"] = {"version": folder.name, "path": str(folder), "trained": True}
    m = result.metrics
    r.details["training"] = (
        f"{len(sp_train)} self-perception + {len(dist_train)} distillation examples, {m['steps']} steps in "
        f"{m['seconds']}s; held-out loss {m['holdout_loss_before']} -> {m['holdout_loss_after']}"
    )


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
