#!/usr/bin/env bash
# Creates the Airflow virtualenv (Airflow 3 and its Spark provider, pinned in dags/requirements.txt),
# kept apart from the project's .venv: Airflow's dependency pins must not move the job's stack.
set -euo pipefail
boot=${1:-python3.11}
venv=${2:-.venv-airflow}
if [ ! -x "$venv/bin/python" ]; then
  "$boot" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r dags/requirements.txt
