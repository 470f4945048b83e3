from __future__ import annotations

import datetime as dt

import pytest

from recgpt.calendar import Calendar, season_of
from recgpt.config import config_hash, load_config
from recgpt.errors import ConfigError


def test_seasons_flip_by_hemisphere():
    assert season_of(dt.date(2025, 1, 15), "north") == "winter"
    assert season_of(dt.date(2025, 1, 15), "south") == "summer"
    assert season_of(dt.date(2025, 10, 28), "south") == "spring"
    with pytest.raises(ConfigError):
        season_of(dt.date(2025, 1, 1), "east")


def test_festivals_respect_lead_days_regions_and_lunar_dates():
    cal = Calendar.from_config(load_config(["run.stage=t"]).calendar)
    assert "halloween" in cal.festivals_on(dt.date(2025, 10, 17), "us-west")
    assert "halloween" not in cal.festivals_on(dt.date(2025, 10, 16), "us-west")
    assert "halloween" not in cal.festivals_on(dt.date(2025, 11, 1), "us-west")
    assert "mid-autumn" in cal.festivals_on(dt.date(2025, 10, 1), "north-cn")
    assert "mid-autumn" not in cal.festivals_on(dt.date(2025, 10, 1), "us-west")
    # Christmas lead window crosses into the new year's calendar lookups.
    assert "new-year" in cal.festivals_on(dt.date(2025, 12, 28), "au-east")


def test_unknown_festival_region_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown regions"):
        Calendar.from_config(
            {
                "regions": {"a": {"hemisphere": "north"}},
                "festivals": [{"name": "x", "month_day": "01-01", "regions": ["b"]}],
            }
        )


def test_synthetic_ingest_runs_through_the_holdout_window():
    cfg = load_config(["run.stage=t", "run.dt=2025-10-28"])
    assert cfg.ingest.until == "2025-11-11"
    # date_add counts calendar days, over the year end too.
    assert load_config(["run.stage=t", "run.dt=2025-12-20"]).ingest.until == "2026-01-03"
    assert load_config(["run.stage=t", "data=canonical", "data.path=x"]).ingest.until == cfg.run.dt


def test_config_hash_ignores_run_id_but_not_settings():
    a = load_config(["run.stage=t", "run.run_id=a"])
    b = load_config(["run.stage=t", "run.run_id=b"])
    c = load_config(["run.stage=t", "data.users=999"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_gpu_cluster_config_extends_the_cluster_template_with_one_gpu_per_executor():
    cfg = load_config(["spark=cluster_gpu", "llm=vllm_gpu"])
    conf = cfg.spark.conf
    assert cfg.spark.master == load_config(["spark=cluster"]).spark.master
    assert conf["spark.executor.resource.gpu.amount"] == 1
    assert 0 < conf["spark.task.resource.gpu.amount"] < 1, "several tasks feed one engine"
    assert conf["spark.sql.extensions"].startswith("io.delta")
    assert cfg.llm.placement == "executor_server" and cfg.llm.kv_cache_gib is None
    assert cfg.llm.tensor_parallel_size >= 1 and 0 < cfg.llm.gpu_memory_utilization <= 1


def test_the_demo_profile_is_small_and_keeps_its_adaptor_apart():
    full, demo = load_config([]), load_config(["+profile=demo"])
    assert demo.data.users < full.data.users and demo.adaptor.steps < full.adaptor.steps
    # A full run after the demo must train its own adaptor, not reuse the demo's quick one.
    assert demo.adaptor.artifacts_dir != full.adaptor.artifacts_dir
    assert demo.storage.warehouse == full.storage.warehouse
