"""Whole-chain runs from tests: the nightly chain as `make run` runs it, and the Airflow DAG (a DAG
config for a tiny synthetic world in a temporary warehouse, and the Airflow CLI of .venv-airflow
with its own AIRFLOW_HOME)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from deltalake import DeltaTable

from tests.conftest import ROOT

DT = "2025-10-28"
# The tiny world and quick adaptor of the whole-chain tests (tests/test_nightly.py, the DAG):
# small enough for two chains in one test; the mining needs an adaptor, not a good one. Mining
# on the real model is most of the chain's time (about 10 s a user here).
TINY = [
    "data.users=8",
    "data.items=300",
    "data.history_days=90",
    "data.holdout_days=7",
    "mine.partitions=2",
    "explain.items_per_user=2",  # every mode still runs; fewer calls on the real model
    # One call per Expert, with all M tags: the rounds of one-tag calls run on the real model in
    # tests/test_mining.py (and on the scripted engine there); here they would add batches of
    # calls to every chain.
    "pipeline.agents.expert_rounds=1",
    "pipeline.agents.expert_call_tags=null",
    # Eight users share a few tags by chance (the scripted engine draws from a dozen): the run-wide
    # rule on generic tags would fail a different few in every world. It runs in
    # tests/test_generic_tags.py and in tests/test_mine_intents.py with its own settings.
    "pipeline.agents.validation.generic_max_share=null",
    # One shuffle partition: a stage process on local[1] runs every partition of every shuffle in
    # turn, each a task with its own Python worker round trip (the DAG's rerun ~7% sooner). `++`
    # adds the keys to Spark configs that lack them (spark=submitted).
    "++spark.conf={spark.sql.shuffle.partitions:1,spark.default.parallelism:1}",
]
QUICK_ADAPTOR = [
    "adaptor.steps=4",
    "adaptor.batch_size=4",  # a step on 16 sequences is ~9 s on one core; the mining needs any adaptor
    "adaptor.items=48",
    "adaptor.distill_users=4",
    "adaptor.holdout_users=2",
    "adaptor.distill_buckets=1",  # short distillation sequences: a step over long ones is ~10 s
    "adaptor.distill_max_entities=12",
    "adaptor.align_steps=200",  # the alignment still runs (~1 s on 48 items instead of ~10 s)
    "adaptor.threads=1",  # the other pytest worker has the other core
]

# Every table the chain writes for a date: a first run leaves rows in each.
CHAIN_TABLES = (
    "behaviors",
    "items",
    "users",
    "env_signals",
    "quarantine",
    "planted_personas",
    "item_embeddings",
    "user_context",
    "covisit_recall",
    "user_personas",
    "user_intent_tags",
    "llm_calls",
    "tag_recall",
    "item_explanations",
    "tag_judgments",
    "explanation_judgments",
    "eval_metrics",
    "dq_results",
)
# The tables of the LLM's outputs: a rerun of the date replaces them, so every row then carries
# the rerun's run id.
MINED_TABLES = (
    "user_personas",
    "user_intent_tags",
    "mining_failures",
    "llm_calls",
    "tag_recall",
    "item_explanations",
    "tag_judgments",
    "explanation_judgments",
)


def airflow_venv() -> Path:
    return Path(os.environ.get("RECGPT_AIRFLOW_VENV") or ROOT / ".venv-airflow")


def nightly(tmp_path: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """`python -m jobs.nightly` for DT on the tiny world in tmp_path/wh, plus `extra` overrides."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.nightly",
            f"run.dt={DT}",
            f"storage.warehouse={tmp_path / 'wh'}",
            *TINY,
            *QUICK_ADAPTOR,
            *extra,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )


def scripted(url: str) -> list[str]:
    """Overrides that send every LLM call of a stage to the scripted engine at `url`, whose tags
    come from a fixed vocabulary: free tag words (no catalog cores)."""
    return [
        "llm.placement=remote",
        f"llm.http.base_url={url}",
        "llm.retry.attempts=1",
        "pipeline.agents.tag.grounding.source=null",
    ]


def dag_config(tmp_path: Path, extra: Iterable[str] = (), **settings: Any) -> Path:
    """conf/airflow/local.yaml pointed at tmp_path/wh with the tiny world plus the `extra` Hydra
    overrides, then `settings` (which may replace the overrides altogether)."""
    cfg = yaml.safe_load((ROOT / "conf" / "airflow" / "local.yaml").read_text())
    cfg.update(
        warehouse=str(tmp_path / "wh"),
        log_dir=str(tmp_path / "wh" / "_logs"),
        alerts_file=str(tmp_path / "alerts.jsonl"),
        overrides=[*TINY, *QUICK_ADAPTOR, *extra],
    )
    cfg.update(settings)
    path = tmp_path / f"dag-{len(list(tmp_path.glob('dag-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def airflow(env: dict[str, str], config: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`airflow <args>` on dags/ with the DAG config `config` and AIRFLOW_HOME under tmp_path."""
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "airflow.sh"), *args],
        cwd=ROOT,
        env={**env, "AIRFLOW_HOME": str(tmp_path / "airflow-home"), "RECGPT_AIRFLOW_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=2400,
    )


def table_counts(wh: Path, tables: Iterable[str]) -> dict[str, int]:
    return {t: len(DeltaTable(str(wh / t)).to_pandas()) for t in tables}


# Log lines of a dying JVM or a killed worker: printed long before the Python traceback that
# ends a failed run's stderr, and the only place that says why Spark went away.
_FATAL = re.compile(r"OutOfMemoryError|\d\d:\d\d:\d\d (ERROR|FATAL) |Killed|hs_err_pid|SIGKILL")


def failure_report(proc: subprocess.CompletedProcess[str], tail: int = 4000) -> str:
    """A failed run for an assertion message: its fatal JVM/worker lines, then the end of stderr."""
    fatal = [line for line in proc.stderr.splitlines() if _FATAL.search(line)]
    head = "\n".join(fatal[:30])
    return f"{head}\n[...]\n{proc.stdout[-1500:]}\n{proc.stderr[-tail:]}"
