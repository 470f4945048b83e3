"""A Spark worker killed mid-stage (drill 1, reduced): compress on a standalone cluster (master +
2 workers on loopback) while one executor's Python worker is killed; Spark retries the task, the
stage's `runs` record says so, and user_context equals an uninterrupted local run's."""

from __future__ import annotations

import json

import pytest

from bench.drills import workers


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compress_gets_through_a_killed_python_worker_with_the_same_output(tmp_path):
    [result] = workers.run(tmp_path, cases=1)
    assert result.passed, result.failures
    assert result.details["killed"], "nothing was killed"
    assert result.rows_in == result.rows_written > 0 and result.rows_lost == result.duplicates == 0
    last = result.details["runs"][-1]
    assert last["status"] == "success"
    assert "failed task attempt" in json.loads(last["details"])["spark_retries"]
