# Nightly RecGPT-V2 intent-mining job. `make help` lists the targets.
SHELL := /bin/bash
PY_BOOT ?= python3.11
VENV ?= .venv
AIRFLOW_VENV ?= .venv-airflow
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DT ?= 2025-10-28
# make run's world: conf/profile/demo.yaml (minutes on 2 cores); PROFILE= runs the full defaults.
PROFILE ?= demo
ARGS ?=
PYTEST_ARGS ?=
# The suite's workers (tests/conftest.py groups the tests): 0 runs it in one process.
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder

.DEFAULT_GOAL := help
.PHONY: help setup setup-project setup-airflow airflow dag-test run ingest dq test test-fast lint bench-storage bench-engine bench-mining bench-compression bench-v2-vs-v1 bench-explanations bench-judge bench-models bench-rl bench-scale drills eval eval-movielens rollback clean-warehouse models-large

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# The stamp depends on pyproject.toml: a re-run with nothing changed only checks the model cache.
$(VENV)/.installed: pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh $(PY_BOOT) $(VENV)
	touch $@

$(AIRFLOW_VENV)/.installed: dags/requirements.txt scripts/setup_airflow.sh
	bash scripts/setup_airflow.sh $(PY_BOOT) $(AIRFLOW_VENV)
	touch $@

# The two environments install at once (most of an install is waiting on downloads and unpacking,
# not on the CPU); each one's output comes out whole when it is done.
setup:  ## create .venv and .venv-airflow, install everything, convert the bundled model once
	@$(MAKE) --no-print-directory -j2 --output-sync=target setup-project $(AIRFLOW_VENV)/.installed

# The project's environment, then what it needs beside its packages.
setup-project: $(VENV)/.installed
	$(PY) -m recgpt.llm.model_cache
	$(PY) -m sparkio.cds
	bash scripts/fetch_report_assets.sh .cache/report-assets

run: setup  ## run the nightly chain for DT (default $(DT)) on the embedded default (PROFILE=demo: 24 users; PROFILE= for the full world)
	$(PY) -m jobs.nightly run.dt=$(DT) $(if $(PROFILE),+profile=$(PROFILE)) $(ARGS)

ingest: setup  ## run only the ingest stage for DT
	$(PY) -m jobs.ingest run.dt=$(DT) $(ARGS)

dq: setup  ## run only the data-quality gate for DT (Data Docs in warehouse/_reports/dq/)
	$(PY) -m jobs.dq run.dt=$(DT) $(ARGS)

models-large: $(VENV)/.installed  ## the larger offline judge/teacher models (Qwen2.5-Coder 1.5B and 0.5B): download ~1.6 GB once, verify, convert; not part of setup
	$(PY) -m recgpt.llm.model_cache llm=qwen25_coder_1p5b_cpu
	$(PY) -m recgpt.llm.model_cache llm=qwen25_coder_0p5b_cpu

setup-airflow: $(AIRFLOW_VENV)/.installed  ## only the scheduler's environment: Airflow 3 + Spark provider in .venv-airflow

airflow: setup  ## the Airflow CLI on dags/ (AIRFLOW_HOME=.airflow): make airflow ARGS="dags test recgpt_nightly 2025-10-28"
	RECGPT_AIRFLOW_VENV=$(abspath $(AIRFLOW_VENV)) bash scripts/airflow.sh $(ARGS)

dag-test: setup  ## the DAG for real: `airflow dags test` rerunning a nightly chain's date (nothing duplicated), failure alert, lagged evaluation
	RECGPT_AIRFLOW_VENV=$(abspath $(AIRFLOW_VENV)) $(PY) -m pytest tests/test_dag.py $(PYTEST_ARGS)

test: setup  ## the whole test suite, slow end-to-end tests included (the DAG and notebooks too)
	RECGPT_AIRFLOW_VENV=$(abspath $(AIRFLOW_VENV)) $(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup  ## the suite without the slow end-to-end tests
	RECGPT_AIRFLOW_VENV=$(abspath $(AIRFLOW_VENV)) $(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

lint: setup  ## ruff on everything, mypy on the core package
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench-storage: setup  ## Delta write path vs bare Parquet write of 10M behaviours
	$(PY) -m bench.storage $(ARGS)

bench-engine: setup  ## raw vllm.LLM.generate vs the engine layer inside Spark, same 128 prompts
	$(PY) -m bench.engine $(ARGS)

bench-mining: setup  ## mine_intents on a small world: users/hour, chain LLM tok/s vs raw vLLM on the same requests, time split
	$(PY) -m bench.mining $(ARGS)

bench-compression: setup  ## context tokens full/V1/hybrid, entity probe, tag agreement, compress at 10M
	$(PY) -m bench.compression $(ARGS)

bench-explanations: setup  ## explain stage on the real model, synthetic + ml-100k: diversity (ROUGE-L), pass rate, cost per mode
	$(PY) -m bench.explanations $(ARGS)

bench-judge: setup models-large  ## the judge on a labelled set from the synthetic world's planted personas, judge models Qwen2.5-Coder-1.5B and the bundled 135M: accuracy and F1 per dimension vs always-pass, grade confusion; the reward model listwise vs pointwise on the judge's grades
	$(PY) -m bench.judge $(ARGS)

bench-models: setup models-large  ## the candidate miners (SmolLM2-135M, Qwen2.5-Coder 0.5B and 1.5B) as V2 miners on the same seeded users of ml-100k and synthetic data: HR@30 with its interval, tags per user, top-tag share, users/hour, model sha256s
	$(PY) -m bench.models $(ARGS)

bench-rl: setup models-large  ## trained Experts vs V1: per dataset, rft then GRPO(SUM) and GRPO(CRS) on a date 14 days before the evaluation date (judge Qwen2.5-Coder-1.5B), then V1, V2-base and V2 with each policy mined for the same seeded users there: HR@30 and exclusive recall with intervals, reward curves, training seconds (about an hour per dataset on 2 cores)
	$(PY) -m bench.rl $(ARGS)

bench-scale: setup  ## 10M and 100M behaviours through ingest, compress, covisit: seconds, rows, peak memory per stage
	$(PY) -m bench.scale $(ARGS)

bench-v2-vs-v1: setup  ## V2 (planner/experts/arbiter, hybrid) vs V1 routes (text): tokens, seconds, duplicates
	$(PY) -m bench.v2_vs_v1 $(ARGS)

drills: setup  ## reliability drills: killed worker/engine, concurrent runs, full disk, fuzzed input, hostile text
	$(PY) -m bench.reliability $(ARGS)

eval: setup  ## offline evaluation on synthetic data: V2 hybrid, V2 text and V1 on sampled users, intervals, baselines, HTML report
	$(PY) -m bench.evaluation --data synthetic $(ARGS)

eval-movielens: setup  ## the same on ml-100k split in time (../shared/datasets/ml-100k)
	$(PY) -m bench.evaluation --data movielens $(ARGS)

rollback: setup  ## undo a bad night: DT=YYYY-MM-DD [STAGE=mine_intents] [RUN_ID=...] back to the tables before that run
	@test -n "$(DT)" || (echo "usage: make rollback DT=YYYY-MM-DD [STAGE=...] [RUN_ID=...]" && exit 2)
	$(PY) -m jobs.rollback run.dt=$(DT) $(if $(STAGE),rollback.stage=$(STAGE)) $(if $(RUN_ID),rollback.run_id=$(RUN_ID)) $(ARGS)

clean-warehouse:  ## delete the local warehouse (all tables, reports and logs)
	rm -rf warehouse
