"""Stage train_reward: train the judge's reward model (recgpt/judge/reward.py) on the run date's
tag and explanation judgments of every judged variant, and save it as a versioned artifact.
Runs on the driver: the judged sample is small. On demand, not a step of the nightly chain:

    python -m jobs.train_reward run.dt=2025-10-28 [reward.loss=pointwise] [reward.steps=...]

Each judged tag is read against the persona it was mined for and the user's newest history
titles, each judged line against its interest and the item's facts: what the judge read, built
by the same functions as its inputs (`udfs.judge.newest_titles`, `udfs.explain.item_facts`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pyspark.sql import Row

from jobs.stage import StageContext, main_for
from recgpt.config import plain
from recgpt.errors import RecGPTError
from recgpt.explain.prompts import ItemFacts
from recgpt.judge import reward as R
from recgpt.tables import EXPLANATION_JUDGMENTS, ITEMS, TAG_JUDGMENTS, USER_CONTEXT
from udfs.embeddings import embedder_for
from udfs.explain import item_facts, pair_input
from udfs.judge import newest_titles

STAGE = "train_reward"
VARIANT = ("pipeline", "context_mode")


def judgments(ctx: StageContext) -> tuple[list[Row], list[Row]]:
    """The date's judged tags (user_id, tag, persona, grade, variant) and judged lines (user_id,
    tag, item_id, explanation, grade, variant), every variant; a RecGPTError when nothing was
    judged for the date."""
    wh, dt = ctx.warehouse, ctx.dt
    run_judge = f"run `python -m jobs.judge run.dt={dt}` first"
    if not wh.exists(TAG_JUDGMENTS):
        raise RecGPTError(f"no tag_judgments table yet: {run_judge}")
    tags = wh.read(TAG_JUDGMENTS, dt=dt).select("user_id", "tag", "persona", "grade", *VARIANT).collect()
    lines: list[Row] = []
    if wh.exists(EXPLANATION_JUDGMENTS):
        columns = ("user_id", "tag", "item_id", "explanation", "grade", *VARIANT)
        lines = wh.read(EXPLANATION_JUDGMENTS, dt=dt).select(*columns).collect()
    if not tags and not lines:
        raise RecGPTError(f"no judgments for {dt} in tag_judgments or explanation_judgments: {run_judge}")
    return tags, lines


def judged_inputs(
    ctx: StageContext, users: Iterable[str], item_ids: Iterable[str]
) -> tuple[dict[str, tuple[str, ...]], dict[str, ItemFacts]]:
    """The judged users' newest history titles and the judged items' facts, as of the date."""
    wh, dt, spark = ctx.warehouse, ctx.dt, ctx.spark
    items = wh.read_snapshot(ITEMS, dt)
    history: dict[str, tuple[str, ...]] = {}
    if wh.exists(USER_CONTEXT):
        judged = spark.createDataFrame([(u,) for u in sorted(set(users))], "user_id string")
        limit = int(ctx.cfg.judge.history_items)
        for r in newest_titles(wh, dt, items, judged, limit).collect():
            history[r.user_id] = tuple(r.history)
    explained = spark.createDataFrame([(i,) for i in sorted(set(item_ids))], "item_id string")
    facts = {}
    for r in item_facts(items).join(explained, "item_id", "left_semi").collect():
        if (item := _facts(r.asDict())) is not None:
            facts[item.item_id] = item
    return history, facts


def _facts(row: Mapping[str, Any]) -> ItemFacts | None:
    """An item's facts as the judge read them; None for an item without a title or category
    (the judge made its line an error row, so it has no grade)."""
    try:
        return pair_input({**row, "key": row["item_id"], "user_id": "", "tag": ""}).item
    except ValueError:
        return None


def reward_examples(
    tags: Iterable[Row],
    lines: Iterable[Row],
    history: Mapping[str, tuple[str, ...]],
    facts: Mapping[str, ItemFacts],
) -> tuple[list[R.RewardExample], int]:
    """The reward examples of the judgment rows, sorted (collected rows come in no fixed order:
    the same data must train the same head), and how many lines were left out for want of
    their item's facts."""
    examples = [
        R.tag_example(t.user_id, t.persona, history.get(t.user_id, ()), t.tag, t.grade, _variant(t))
        for t in tags
    ]
    missing = 0
    for x in lines:
        if (item := facts.get(x.item_id)) is None:
            missing += 1
            continue
        examples.append(R.explanation_example(x.user_id, x.tag, item, x.explanation, x.grade, _variant(x)))
    examples.sort(key=lambda e: (e.group, e.text, e.context, e.grade))
    return examples, missing


def _variant(row: Row) -> str:
    return f"{row.pipeline}/{row.context_mode}"


def run(ctx: StageContext) -> None:
    cfg = plain(ctx.cfg.reward)
    settings = R.RewardSettings.from_config(cfg)
    tags, lines = judgments(ctx)
    history, facts = judged_inputs(ctx, [r.user_id for r in [*tags, *lines]], [x.item_id for x in lines])
    examples, missing = reward_examples(tags, lines, history, facts)

    embedding = plain(ctx.cfg.embedding)
    embedder = embedder_for(embedding)
    fit = R.train_reward(examples, settings, embedder.encode)
    encoder = {"name": embedder.name, "config": embedding}
    meta = R.artifact_meta(examples, fit, encoder, settings, ctx.dt, ctx.lineage.run_id)
    folder = R.save(fit, str(cfg["artifacts_dir"]), meta)
    report(ctx, fit.metrics, folder.name, str(folder), len(tags) + len(lines), len(examples), missing)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report(
    ctx: StageContext, m: dict[str, Any], version: str, path: str, rows_in: int, rows_out: int, missing: int
) -> None:
    """Judgments in, examples out, the artifact and its held-out pairwise accuracies."""
    r = ctx.report
    r.rows_in, r.rows_out = rows_in, rows_out
    r.details["reward"] = {"version": version, "path": path, "loss": m["loss"]}
    train, held = m["train"], m["holdout"]
    r.details["training"] = (
        f"{train['examples']} examples in {train['groups']} lists of {train['users']} users "
        f"({train['pairs']} graded pairs), {m['steps']} steps per loss in {m['seconds']}s"
    )
    acc = m["holdout_pairwise_accuracy"]
    r.details["holdout"] = (
        f"pairwise accuracy listwise {_share(acc['listwise'])}, pointwise {_share(acc['pointwise'])}, "
        f"cosine {_share(acc['cosine'])} over {held['pairs']} pairs in {held['groups']} lists "
        f"of {held['users']} users"
    )
    r.details["holdout_pairwise_accuracy"] = acc
    if missing:
        r.details["unmatched"] = f"{missing} judged lines without their item's facts, left out"


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
