"""The nightly intent-mining job as an Airflow DAG: one task per stage of the configured pipeline,
in pipeline order, for the logical date `ds`.

Each task runs `jobs.<stage>` with `run.dt={{ ds }}` and `run.run_id=<the Airflow run id>` as Hydra
overrides, so the `runs` table groups a DAG run's stages under Airflow's own run id, and a retry
or a backfill of a date replaces that date's partitions (every stage is idempotent per date).

The DAG reads conf/airflow/local.yaml (or the file named by RECGPT_AIRFLOW_CONFIG) with plain
YAML: the scheduler's environment needs Airflow and its Spark provider, not the project's stack.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any

import yaml
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, BaseOperator, TriggerRule

log = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parent.parent
CONFIG = Path(os.environ.get("RECGPT_AIRFLOW_CONFIG") or PROJECT / "conf" / "airflow" / "local.yaml")
# The exit code of a stage that had nothing to do for its date (recgpt.errors.SKIPPED_EXIT_CODE).
SKIPPED_EXIT_CODE = 99
# The data-quality gate that stops the chain right after ingest, before any model runs.
INGEST_GATE = "dq_ingest"


def load_config(path: Path = CONFIG) -> dict[str, Any]:
    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping of DAG settings")
    if cfg.get("launcher") not in ("local", "spark_submit"):
        raise ValueError(f"{path}: launcher must be local or spark_submit, not {cfg.get('launcher')!r}")
    return cfg


def project_path(value: str) -> str:
    """Paths in the DAG config are relative to the project; URIs (s3://...) pass through."""
    if "://" in value or os.path.isabs(value):
        return value
    return str(PROJECT / value)


def pipeline_stages(pipeline: str) -> list[str]:
    spec = yaml.safe_load((PROJECT / "conf" / "pipeline" / f"{pipeline}.yaml").read_text())
    stages = [str(s) for s in spec["stages"]]
    unknown = [s for s in stages if not (PROJECT / "jobs" / f"{s}.py").is_file()]
    if unknown:
        raise ValueError(f"pipeline {pipeline}: no entry point jobs/<stage>.py for {unknown}")
    return stages


def stage_arguments(cfg: dict[str, Any], dt: str, extra: list[str]) -> list[str]:
    """The Hydra overrides of one stage: the same for both launchers. The run id is quoted for
    Hydra (Airflow's ids hold ':' and '+')."""
    return [
        f"run.dt={dt}",
        'run.run_id="{{ run_id }}"',
        f"storage.warehouse={project_path(str(cfg['warehouse']))}",
        f"run.log_dir={project_path(str(cfg['log_dir']))}",
        *([f"run.lock.dir={project_path(str(cfg['lock_dir']))}"] if cfg.get("lock_dir") else []),
        *[str(o) for o in cfg.get("overrides") or []],
        *extra,
    ]


def alert(context: dict[str, Any]) -> None:
    """Failure callback: one message naming the failed stage, its date and try, and where to look:
    the Airflow task log, the stage's own log folder and the data-quality report."""
    cfg = load_config()
    ti = context["task_instance"]
    stage = ti.task_id
    job = "dq" if stage.startswith("dq") else stage
    ds = context.get("ds") or ""
    dt = ds  # the stage's run date: the evaluation tasks run for ds - lag_days
    lag = int((cfg.get("evaluate") or {}).get("lag_days") or 0)
    if ds and lag and stage in ("evaluate", "dq_evaluate"):
        dt = (_dt.date.fromisoformat(ds) - _dt.timedelta(days=lag)).isoformat()
    log_dir = project_path(str(cfg["log_dir"]))
    warehouse = project_path(str(cfg["warehouse"]))
    record = {
        "dag_id": ti.dag_id,
        "stage": stage,
        "ds": ds,
        "dt": dt,
        "run_id": context.get("run_id"),
        "try_number": ti.try_number,
        "airflow_log": getattr(ti, "log_url", None),
        "stage_log": f"{log_dir}/{job}/dt={dt}/",
        "dq_report": f"{warehouse}/_reports/dq/index.html",
        "runs_table": f"{warehouse}/runs",
        "error": str(context.get("exception") or "")[:2000],
        "at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    log.error(
        "recgpt: stage %s failed for dt=%s (run %s, try %s). Airflow log: %s · stage log: %s · "
        "data-quality report: %s · runs table: %s",
        stage,
        dt,
        record["run_id"],
        record["try_number"],
        record["airflow_log"],
        record["stage_log"],
        record["dq_report"],
        record["runs_table"],
    )
    if cfg.get("alerts_file"):
        path = Path(project_path(str(cfg["alerts_file"])))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as out:
            out.write(json.dumps(record) + "\n")


def stage_task(
    cfg: dict[str, Any], task_id: str, job: str, dt: str, extra: list[str], **kwargs: Any
) -> BaseOperator:
    """One stage as a task, launched as configured: a local process or spark-submit."""
    if cfg["launcher"] == "local":
        python = project_path(str(cfg["local"]["python"]))
        args = " ".join(shlex.quote(a) for a in stage_arguments(cfg, dt, extra))
        return BashOperator(
            task_id=task_id,
            bash_command=f"cd {shlex.quote(str(PROJECT))} && exec {shlex.quote(python)} -m jobs.{job} {args}",
            skip_on_exit_code=SKIPPED_EXIT_CODE,
            **kwargs,
        )
    submit = cfg["spark_submit"]
    env = {"PYTHONPATH": str(PROJECT), **(submit.get("env_vars") or {})}
    return SparkSubmitOperator(
        task_id=task_id,
        application=str(PROJECT / "jobs" / f"{job}.py"),
        application_args=stage_arguments(cfg, dt, [*(submit.get("overrides") or []), *extra]),
        conn_id=str(submit.get("conn_id") or "spark_default"),
        py_files=submit.get("py_files"),
        conf=dict(submit.get("conf") or {}),
        env_vars=env,
        name=f"recgpt-{job}-{{{{ ds }}}}",
        **kwargs,
    )


def build_dag(cfg: dict[str, Any]) -> DAG:
    stages = pipeline_stages(str(cfg["pipeline"]))
    lag = int((cfg.get("evaluate") or {}).get("lag_days") or 0)
    default_args = {
        "owner": "recgpt",
        "retries": int(cfg["retries"]),
        "retry_delay": _dt.timedelta(minutes=float(cfg["retry_delay_minutes"])),
        "retry_exponential_backoff": True,
        "max_retry_delay": _dt.timedelta(minutes=float(cfg["max_retry_delay_minutes"])),
        "execution_timeout": _dt.timedelta(minutes=float(cfg["execution_timeout_minutes"])),
        "on_failure_callback": alert,
    }
    dag = DAG(
        dag_id=str(cfg["dag_id"]),
        schedule=cfg.get("schedule"),
        start_date=_dt.datetime.fromisoformat(str(cfg["start_date"])).replace(tzinfo=_dt.UTC),
        catchup=bool(cfg.get("catchup", False)),
        max_active_runs=1,
        default_args=default_args,
        tags=["recgpt", str(cfg["pipeline"])],
        doc_md=__doc__,
    )
    with dag:
        tasks: list[BaseOperator] = []
        for stage in stages:
            if stage == "evaluate" and lag:
                # The held-out window of ds - lag has just ended: evaluate that date.
                evaluated = f"{{{{ macros.ds_add(ds, -{lag}) }}}}"
                tasks.append(stage_task(cfg, stage, stage, evaluated, ["eval.if_unmined=skip"]))
                tasks.append(stage_task(cfg, "dq_evaluate", "dq", evaluated, ["dq.stages=[evaluate]"]))
                continue
            # With lag, a skipped evaluation must not skip the date's own quality gate.
            rule = TriggerRule.NONE_FAILED if stage == "dq" and lag else TriggerRule.ALL_SUCCESS
            tasks.append(stage_task(cfg, stage, stage, "{{ ds }}", [], trigger_rule=rule))
            if stage == "ingest" and "dq" in stages:
                tasks.append(stage_task(cfg, INGEST_GATE, "dq", "{{ ds }}", ["dq.stages=[ingest]"]))
        for upstream, downstream in itertools.pairwise(tasks):
            upstream >> downstream
    return dag


dag = build_dag(load_config())
