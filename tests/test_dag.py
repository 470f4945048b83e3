"""The Airflow DAG for real: Airflow 3 in its own environment (.venv-airflow, `make setup-airflow`)
parses dags/ and runs the stages with `airflow dags test` / `airflow tasks test`; the stages run in
the project's environment on a tiny synthetic world and write real Delta tables. The spark-submit
launcher is proven on a standalone cluster in tests/test_standalone_cluster.py."""

from __future__ import annotations

import itertools
import json
import subprocess

import pytest
import yaml
from deltalake import DeltaTable

from tests.conftest import ROOT
from tests.dag_support import (
    CHAIN_TABLES,
    DT,
    MINED_TABLES,
    TINY,
    airflow,
    dag_config,
    failure_report,
    table_counts,
)

PARSE = """
import json, sys
sys.path.insert(0, "dags")
import recgpt_nightly as m
dag = m.dag
tasks = {}
for t in dag.tasks:
    info = {"type": type(t).__name__, "upstream": sorted(t.upstream_task_ids), "retries": t.retries,
            "backoff": t.retry_exponential_backoff, "callback": bool(t.on_failure_callback),
            "trigger_rule": getattr(t.trigger_rule, "value", t.trigger_rule)}
    if type(t).__name__ == "BashOperator":
        info["command"] = t.bash_command
        info["skip"] = list(t.skip_on_exit_code)
    else:
        info["application"] = t.application
        info["args"] = t.application_args
        info["env"] = t.env_vars
    tasks[t.task_id] = info
print(json.dumps({"max_active_runs": dag.max_active_runs, "catchup": dag.catchup, "tasks": tasks}))
"""


def in_airflow(env, config, code: str) -> str:
    """Run `code` with the Airflow environment's Python and the DAG config `config`; its stdout."""
    proc = subprocess.run(
        [env["RECGPT_AIRFLOW_VENV"] + "/bin/python", "-c", code],
        cwd=ROOT,
        env={**env, "RECGPT_AIRFLOW_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def parse_dag(tmp_path, env, **settings) -> dict:
    out = in_airflow(env, dag_config(tmp_path, **settings), PARSE)
    return json.loads(out.strip().splitlines()[-1])


def test_dag_is_the_pipeline_chain_with_retries_for_both_launchers(tmp_path, airflow_env):
    local = parse_dag(tmp_path, airflow_env)
    stages = yaml.safe_load((ROOT / "conf" / "pipeline" / "v2.yaml").read_text())["stages"]
    order = ["ingest", "dq_ingest", *stages[1:]]
    assert list(local["tasks"]) == order
    assert local["max_active_runs"] == 1 and local["catchup"] is False
    for upstream, task in itertools.pairwise(order):
        assert local["tasks"][task]["upstream"] == [upstream]
    for info in local["tasks"].values():
        assert (
            info["type"] == "BashOperator" and info["retries"] == 2 and info["backoff"] and info["callback"]
        )
        assert info["skip"] == [99]
    mine = local["tasks"]["mine_intents"]["command"]
    assert "-m jobs.mine_intents 'run.dt={{ ds }}' 'run.run_id=\"{{ run_id }}\"'" in mine
    assert f"storage.warehouse={tmp_path / 'wh'}" in mine and TINY[0] in mine
    assert "-m jobs.dq" in local["tasks"]["dq_ingest"]["command"]
    assert "'dq.stages=[ingest]'" in local["tasks"]["dq_ingest"]["command"]

    # The cluster launcher: the same stages and the same Hydra arguments, through spark-submit.
    submit = parse_dag(tmp_path, airflow_env, launcher="spark_submit")
    assert list(submit["tasks"]) == order
    task = submit["tasks"]["mine_intents"]
    assert task["type"] == "SparkSubmitOperator"
    assert task["application"] == str(ROOT / "jobs" / "mine_intents.py")
    assert task["args"][:2] == ["run.dt={{ ds }}", 'run.run_id="{{ run_id }}"']
    assert "spark=submitted" in task["args"] and TINY[0] in task["args"]
    assert task["env"]["PYTHONPATH"] == str(ROOT)


def test_a_lagged_evaluation_scores_an_earlier_date_and_may_skip(tmp_path, airflow_env):
    dag = parse_dag(tmp_path, airflow_env, evaluate={"lag_days": 14})
    tasks = dag["tasks"]
    assert list(tasks)[-6:] == ["recall", "explain", "judge", "evaluate", "dq_evaluate", "dq"]
    assert "'run.dt={{ macros.ds_add(ds, -14) }}'" in tasks["evaluate"]["command"]
    assert "eval.if_unmined=skip" in tasks["evaluate"]["command"]
    assert "'dq.stages=[evaluate]'" in tasks["dq_evaluate"]["command"]
    # A skipped evaluation (nothing mined 14 days ago) must not skip the date's own quality gate.
    assert tasks["dq"]["trigger_rule"] == "none_failed"

    # A failure of the lagged evaluation points at the evaluated date's stage log.
    config = dag_config(tmp_path, evaluate={"lag_days": 14})
    call = (
        "import sys, types; sys.path.insert(0, 'dags'); import recgpt_nightly as m; "
        "ti = types.SimpleNamespace(task_id='evaluate', dag_id='d', try_number=1, log_url='u'); "
        f"m.alert({{'task_instance': ti, 'ds': '{DT}', 'run_id': 'r'}})"
    )
    in_airflow(airflow_env, config, call)
    alert = json.loads((tmp_path / "alerts.jsonl").read_text().splitlines()[-1])
    assert alert["ds"] == DT and alert["dt"] == "2025-10-14"
    assert alert["stage_log"] == f"{tmp_path / 'wh' / '_logs'}/evaluate/dt=2025-10-14/"

    # For real: nothing was mined for the evaluated date, so the task ends skipped, not failed.
    proc = airflow(airflow_env, config, tmp_path, "tasks", "test", "recgpt_nightly", "evaluate", DT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "evaluate skipped: nothing mined for dt=2025-10-14" in out
    assert "state=skipped" in out or "SKIPPED" in out.upper()
    runs = DeltaTable(str(tmp_path / "wh" / "runs")).to_pandas()
    assert runs[["stage", "status"]].values.tolist() == [["evaluate", "skipped"]]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_failed_stage_raises_an_alert_naming_it_and_its_logs(tmp_path, airflow_env):
    config = dag_config(
        tmp_path, retries=0, overrides=["data=canonical", f"data.path={tmp_path / 'missing'}"]
    )
    proc = airflow(airflow_env, config, tmp_path, "dags", "test", "recgpt_nightly", DT)
    assert proc.returncode != 0
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [a["stage"] for a in alerts] == ["ingest"]
    alert = alerts[0]
    assert alert["ds"] == alert["dt"] == DT and alert["run_id"].startswith("manual__")
    assert alert["stage_log"] == f"{tmp_path / 'wh' / '_logs'}/ingest/dt={DT}/"
    assert alert["dq_report"] == f"{tmp_path / 'wh'}/_reports/dq/index.html"
    assert "recgpt: stage ingest failed for dt=2025-10-28" in proc.stdout + proc.stderr
    # The chain stopped at the failed stage: nothing downstream ran.
    assert not (tmp_path / "wh" / "item_embeddings").exists()
    runs = DeltaTable(str(tmp_path / "wh" / "runs")).to_pandas()
    assert runs[["stage", "status"]].values.tolist() == [["ingest", "failed"]]
    assert runs.run_id[0] == alert["run_id"]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the nightly chain (run or waited for), then the DAG, a process per stage
def test_a_dag_rerun_of_a_done_date_writes_every_table_and_duplicates_nothing(dag_rerun):
    run = dag_rerun.dag.proc
    assert run.returncode == 0, failure_report(run)
    before = table_counts(dag_rerun.nightly.warehouse, CHAIN_TABLES)
    wh = dag_rerun.dag.warehouse
    runs = DeltaTable(str(wh / "runs")).to_pandas()
    assert runs.run_id.nunique() == 2 and set(runs.status) == {"success"}
    airflow_id = next(r for r in set(runs.run_id) if r.startswith("manual__"))
    stages = yaml.safe_load((ROOT / "conf" / "pipeline" / "v2.yaml").read_text())["stages"]
    # One row per task under Airflow's run id (dq twice: the ingest gate and the final gate).
    assert sorted(runs[runs.run_id == airflow_id].stage) == sorted([*stages, "dq"])

    # The same row counts wherever the LLM's answers do not decide them (the rerun's answers come
    # from the scripted engine, the first run's from the real model)...
    stable = [t for t in CHAIN_TABLES if t not in MINED_TABLES]
    assert table_counts(wh, stable) == {t: before[t] for t in stable}
    # ...and the LLM's tables were replaced, not appended to: only the rerun's rows remain.
    for table in MINED_TABLES:
        assert set(DeltaTable(str(wh / table)).to_pandas().run_id) == {airflow_id}, table
    tags = DeltaTable(str(wh / "user_intent_tags")).to_pandas()
    assert not tags.duplicated(["dt", "pipeline", "context_mode", "user_id", "rank"]).any()
    recalled = DeltaTable(str(wh / "tag_recall")).to_pandas()
    assert not recalled.duplicated(["pipeline", "context_mode", "user_id", "tag_rank", "rank"]).any()
    out = run.stdout + run.stderr
    assert "skipped: a compatible adaptor exists" in out
    # The rerun recomputed the date (every item embedded again, every user mined again) in place.
    assert f"{before['items']:,} embedded" in out
    contexts = DeltaTable(str(wh / "user_context")).to_pandas()
    failures = DeltaTable(str(wh / "mining_failures")).to_pandas()
    tagged, failed = set(tags.user_id), set(failures.user_id)
    assert tagged | failed == set(contexts[contexts.events_kept > 0].user_id) and not tagged & failed
    assert tagged and failed  # the scripted engine cuts some answers off: both paths ran
