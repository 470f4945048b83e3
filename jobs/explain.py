"""Stage explain: why the user sees a recommended item. For each of a mined user's best tags its
first recalled item is explained in the pipeline's mode (V2: meta-prompting, a style guide and
then the line; V1: one prompt) and in the baselines beside it (single, template), each checked
by the rules of `recgpt.explain.rules` before anything is written.

    python -m jobs.explain run.dt=2025-10-28 [pipeline=v1_baseline] [explain.sample_users=1000]

Pairs go through the LLM-stage runner in staged waves; a rerun replaces the (dt, pipeline,
context_mode) partitions of item_explanations and explanation_failures, so it never duplicates.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from omegaconf import OmegaConf
from pyspark import StorageLevel
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from jobs.stage import StageContext, main_for, record_llm
from recgpt.config import plain
from recgpt.errors import RecGPTError
from recgpt.explain.settings import ExplainSettings
from recgpt.tables import EXPLANATION_FAILURES, ITEM_EXPLANATIONS, TAG_RECALL
from sparkio.staging import Staging
from udfs import llm
from udfs.explain import ExplainPlan, explain_inputs, explain_stage, explode_explained
from udfs.mining import catalog_brands
from udfs.mining_scope import variant_of
from udfs.waves import Waves

STAGE = "explain"
USES_LLM = True


def run(ctx: StageContext) -> None:
    cfg = ctx.cfg
    variant = variant_of(cfg)
    if not ctx.warehouse.exists(TAG_RECALL):
        raise RecGPTError(f"no tag_recall table yet: run `python -m jobs.recall run.dt={ctx.dt}` first")
    explain_cfg = plain(cfg.explain)
    settings = ExplainSettings.from_config(explain_cfg, str(cfg.pipeline.explanation))
    plan = ExplainPlan(explain_cfg, settings.mode, catalog_brands(ctx.warehouse, ctx.dt))
    stage = explain_stage(plan, OmegaConf.to_container(cfg.llm, resolve=True), variant)  # type: ignore[arg-type]

    of_variant = (F.col("pipeline") == variant["pipeline"]) & (
        F.col("context_mode") == variant["context_mode"]
    )
    sample = explain_cfg.get("sample_users")
    inputs = explain_inputs(
        ctx.spark,
        ctx.warehouse,
        ctx.dt,
        of_variant,
        int(explain_cfg["items_per_user"]),
        None if sample is None else int(sample),
        int(explain_cfg["seed"]),
        OmegaConf.to_container(cfg.calendar, resolve=True),  # type: ignore[arg-type]
        int(explain_cfg["recent_days"]),
    ).persist(StorageLevel.MEMORY_AND_DISK)
    pairs = inputs.count()
    waves = Waves(ctx.spark, Staging(str(cfg.storage.warehouse), STAGE, ctx.dt, variant), {}, False, STAGE)
    print(
        f"[{STAGE}] {variant['pipeline']}/{variant['context_mode']}: {pairs:,} (user, item) pairs, "
        f"modes {', '.join(settings.modes)}",
        file=sys.stderr,
        flush=True,
    )
    interval = float(cfg.llm.get("progress_interval_s", 30))
    with llm.Progress(ctx.spark, stage.name, pairs, interval) as progress:
        waves.run(
            inputs, pairs, int(explain_cfg["wave_rows"]), "key", lambda part: llm.run(part, stage, progress)
        )
    inputs.unpersist()
    made_by = {**variant, "prompt_version": settings.prompt_version}
    outcomes = waves.staged()
    if outcomes is None:
        outcomes = ctx.spark.createDataFrame([], from_arrow_schema(stage.output_schema()))
    written, failed = explode_explained(outcomes, made_by)
    where = {"dt": ctx.dt, **variant}
    for spec, data in ((ITEM_EXPLANATIONS, written), (EXPLANATION_FAILURES, failed)):
        result = ctx.warehouse.write(data, spec, mode="replace", lineage=ctx.lineage, where=where)
        ctx.report.wrote(spec.name, result.rows, result.version)
    # Also with no pairs: the ledger rows of an earlier run of the date are replaced by none.
    record_llm(ctx, outcomes, stage.name)
    waves.drop()
    report(ctx, variant, settings, pairs)


def report(ctx: StageContext, variant: dict[str, str], settings: ExplainSettings, pairs: int) -> None:
    """Pairs in, explanations written and failed per mode with the reasons, one sample line."""
    wh, where = (
        ctx.warehouse,
        (F.col("pipeline") == variant["pipeline"]) & (F.col("context_mode") == variant["context_mode"]),
    )
    written = wh.read(ITEM_EXPLANATIONS, dt=ctx.dt).where(where)
    failed = wh.read(EXPLANATION_FAILURES, dt=ctx.dt).where(where)
    ok = {r.explanation_mode: r["count"] for r in written.groupBy("explanation_mode").count().collect()}
    reasons: dict[str, dict[str, int]] = {}
    for r in failed.groupBy("explanation_mode", "reason").count().collect():
        reasons.setdefault(r.explanation_mode, {})[r.reason] = r["count"]
    r = ctx.report
    r.rows_in, r.rows_out = pairs, sum(ok.values())
    r.rows_quarantined = sum(sum(v.values()) for v in reasons.values())
    r.details["variant"] = f"pipeline={variant['pipeline']} context_mode={variant['context_mode']}"
    r.details["modes"] = "; ".join(
        f"{m}: {ok.get(m, 0):,}/{pairs:,} written" + (f" ({_counts(reasons[m])})" if m in reasons else "")
        for m in settings.modes
    )
    if "all" in reasons:
        r.details["bad_input"] = _counts(reasons["all"])
    sample = written.where(F.col("explanation_mode") == settings.mode).orderBy("user_id", "tag_rank").first()
    if sample is not None:
        r.details["sample"] = f"{sample.user_id} · {sample.tag} · {sample.item_id}: {sample.explanation}"


def _counts(counts: dict[str, Any]) -> str:
    return json.dumps(dict(sorted(counts.items(), key=lambda kv: -kv[1])))


main = main_for(STAGE, run)

if __name__ == "__main__":
    main()
