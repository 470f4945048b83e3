#!/usr/bin/env bash
# The Airflow CLI on this project's DAGs: `scripts/airflow.sh dags test recgpt_nightly 2025-10-28`.
# AIRFLOW_HOME defaults to .airflow/ (SQLite metadata store, created on first use); the DAG reads
# conf/airflow/local.yaml unless RECGPT_AIRFLOW_CONFIG names another file.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${RECGPT_AIRFLOW_VENV:-$root/.venv-airflow}"
if [ ! -x "$venv/bin/airflow" ]; then
  echo "no Airflow environment at $venv: run \`make setup-airflow\`" >&2
  exit 2
fi
export AIRFLOW_HOME="${AIRFLOW_HOME:-$root/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$root/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
mkdir -p "$AIRFLOW_HOME"
if [ ! -f "$AIRFLOW_HOME/.migrated" ]; then
  "$venv/bin/airflow" db migrate >"$AIRFLOW_HOME/migrate.log" 2>&1 || {
    cat "$AIRFLOW_HOME/migrate.log" >&2
    exit 1
  }
  touch "$AIRFLOW_HOME/.migrated"
fi
exec "$venv/bin/airflow" "$@"
