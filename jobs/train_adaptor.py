"""Stage train_adaptor: train the entity adaptor (item embedding -> one LLM input slot) with the
LLM frozen, on self-perception and distillation examples from the warehouse, and save it as a
versioned artifact. Runs on the driver: the data is small and the model is shared.

    python -m jobs.train_adaptor run.dt=2025-10-28 [adaptor.train=always] [adaptor.steps=...]

In the nightly chain it trains only when no adaptor for the configured LLM and embedding model
exists yet (`adaptor.train: missing`); `adaptor.train=always` retrains.
"""

from __future__ import annotations

import random
from typing import Any

from pyspark.sql import DataFrame

from jobs.stage import StageContext, main_for
from recgpt import adaptor as A
from recgpt.config import plain
from recgpt.errors import RecGPTError
from udfs.adaptor_data import distillation_contexts, item_vectors, self_perception_items, vectors_of

STAGE = "train_adaptor"


def distillation(
    ctx: StageContext, lm: A.FrozenLM, vectors: DataFrame, cfg: dict[str, Any]
) -> tuple[list[A.Example], list[str]]:
    """Distillation examples of users of the run date chosen in a seeded order, and their ids."""
    users = A.distillation_users(
        distillation_contexts(ctx.warehouse, ctx.dt),
        random.Random(int(cfg["seed"])),
        int(cfg["distill_users"]) + int(cfg["holdout_users"]),
        int(cfg["distill_buckets"]),
        int(cfg["distill_max_entities"]),
    )
    by_id = vectors_of(vectors, {i for u in users for i in u.entity_ids})
    return A.distillation_examples(lm, users, by_id, int(cfg["distill_tokens"]))


def run(ctx: StageContext) -> None:
    cfg = plain(ctx.cfg.adaptor)
    when = str(cfg.get("train", "missing"))
    if when not in ("missing", "always"):
        raise RecGPTError(f"adaptor.train must be missing or always, not {when!r}")
    models = {"llm": str(ctx.cfg.llm.model_name), "embedding_model": str(ctx.cfg.embedding.model_name)}
    current = A.latest(str(cfg["artifacts_dir"]))
    if when == "missing" and A.compatible(current, models["llm"], models["embedding_model"]):
        assert current is not None
        ctx.report.rows_in = ctx.report.rows_out = 0
        ctx.report.details["adaptor"] = {"version": current.name, "path": str(current), "trained": False}
        ctx.report.details["training"] = (
            "skipped: a compatible adaptor exists (adaptor.train=always retrains)"
        )
        return

    vectors = item_vectors(ctx.warehouse, ctx.dt, models["embedding_model"])
    words = int(ctx.cfg.compress.core_title_words)
    items = self_perception_items(ctx.warehouse, vectors, ctx.dt, int(cfg["items"]), int(cfg["seed"]), words)
    if not items:
        raise RecGPTError(f"no item embeddings as of {ctx.dt}: run `python -m jobs.embed_items` first")
    sp = A.self_perception_examples(items)
    holdout_n, holdout_users = min(int(cfg["holdout_items"]), len(sp) // 4), int(cfg["holdout_users"])
    lm = A.FrozenLM(str(ctx.cfg.llm.model_path), threads=cfg.get("threads"))
    distill, distill_users = distillation(ctx, lm, vectors, cfg)
    sp_train, dist_train = sp[holdout_n:], distill[holdout_users:]
    train_set, holdout = sp_train + dist_train, sp[:holdout_n] + distill[:holdout_users]

    result = A.train(lm, train_set, holdout, cfg)
    meta = A.artifact_meta(train_set, result, lm.hidden, models, cfg, ctx.dt, ctx.lineage.run_id)
    examples = A.trained_on([it["item_id"] for it in items], holdout_n, distill_users, holdout_users)
    folder = A.save(result.adaptor, str(cfg["artifacts_dir"]), meta, examples)

    r, m = ctx.report, result.metrics
    r.rows_in, r.rows_out = len(train_set) + len(holdout), len(train_set)
    r.details["adaptor"] = {"version": folder.name, "path": str(folder), "trained": True}
    r.details["training"] = (
        f"{len(sp_train)} self-perception + {len(dist_train)} distillation examples, {m['steps']} steps in "
        f"{m['seconds']}s; held-out loss {m['holdout_loss_before']} -> {m['holdout_loss_after']}"
    )


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
