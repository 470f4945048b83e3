"""The synthetic world: deterministic by seed, independent of partitioning, with planted
personas that really drive behaviour and demand that follows seasons and festivals."""

from __future__ import annotations

import collections
import datetime as dt

import pyarrow.compute as pc
import pytest

from recgpt.calendar import Calendar
from recgpt.config import load_config
from recgpt.rundate import RunDate
from recgpt.synthetic import generator as gen
from recgpt.synthetic.world import CATEGORY_BY_NAME, PERSONA_BY_NAME
from recgpt.tables import BEHAVIOR_TYPES


@pytest.fixture(scope="module")
def world():
    cfg = load_config(["run.stage=test"])
    spec = gen.SyntheticSpec.from_config(cfg.data, RunDate.parse("2025-10-28"))
    spec = gen.SyntheticSpec(**{**spec.__dict__, "users": 60, "dirty_fraction": 0.0})
    calendar = Calendar.from_config(cfg.calendar)
    catalog = gen.make_catalog(spec)
    return spec, calendar, catalog, gen.CatalogIndex.build(catalog), gen.day_contexts(spec, calendar)


def test_same_seed_same_rows_regardless_of_partitioning(world):
    spec, _, _, index, contexts = world
    whole = gen.make_behaviors(spec, range(10), index, contexts)
    split = [gen.make_behaviors(spec, r, index, contexts) for r in (range(0, 4), range(4, 10))]
    assert whole.to_pylist() == split[0].to_pylist() + split[1].to_pylist()
    other_seed = gen.SyntheticSpec(**{**spec.__dict__, "seed": spec.seed + 1})
    assert gen.make_behaviors(other_seed, range(10), index, contexts).to_pylist() != whole.to_pylist()


def test_the_horizon_is_counted_in_days_from_the_run_date():
    # 60 days back from 2025-03-01 crosses a 28-day February and the year end; the held-out
    # window of 3 days includes the run date itself.
    spec = gen.SyntheticSpec(run_dt=RunDate.parse("2025-03-01"), history_days=60, holdout_days=3)
    assert (spec.start, spec.end) == (dt.date(2024, 12, 31), dt.date(2025, 3, 3))
    # Without a held-out window the last day generated is the day before the run date.
    bare = gen.SyntheticSpec(run_dt=RunDate.parse("2025-01-01"), history_days=1, holdout_days=0)
    assert (bare.start, bare.end) == (dt.date(2024, 12, 31), dt.date(2024, 12, 31))


def test_behaviour_stays_inside_the_horizon_and_uses_every_type(world):
    spec, _, _, index, contexts = world
    table = gen.make_behaviors(spec, range(60), index, contexts)
    assert set(table.column("behavior").to_pylist()) == set(BEHAVIOR_TYPES)
    ts = table.column("ts")
    assert pc.min(ts).as_py().date() >= spec.start
    assert pc.max(ts).as_py().date() <= spec.end
    # The held-out window after the run date has activity to evaluate against.
    run_start = dt.datetime.combine(spec.run_dt.day, dt.time(), tzinfo=dt.UTC)
    assert pc.sum(pc.greater_equal(ts, run_start)).as_py() > 0
    searches = table.filter(pc.equal(table.column("behavior"), "search"))
    assert searches.column("item_id").null_count == searches.num_rows
    assert searches.column("query").null_count == 0


def test_planted_personas_drive_what_users_browse(world):
    spec, _, catalog, index, contexts = world
    users, planted = gen.make_users(spec, range(60))
    item_cat = dict(
        zip(catalog.column("item_id").to_pylist(), catalog.column("category").to_pylist(), strict=True)
    )
    table = gen.make_behaviors(spec, range(60), index, contexts)
    by_user: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in table.select(["user_id", "item_id"]).to_pylist():
        if row["item_id"]:
            by_user[row["user_id"]][item_cat[row["item_id"]]] += 1
    planted_cats: dict[str, set[str]] = collections.defaultdict(set)
    for row in planted.to_pylist():
        planted_cats[row["user_id"]] |= set(PERSONA_BY_NAME[row["persona"]].categories)
    shares = [
        sum(c for k, c in counts.items() if k in planted_cats[u]) / sum(counts.values())
        for u, counts in by_user.items()
    ]
    # Apart from the noise sessions, users shop in their planted personas' categories.
    assert min(shares) > 0.6
    assert sum(shares) / len(shares) > 0.8
    weights = collections.defaultdict(float)
    for row in planted.to_pylist():
        weights[row["user_id"]] += row["weight"]
    assert all(abs(w - 1.0) < 1e-3 for w in weights.values())
    assert users.num_rows == 60


def test_demand_follows_season_and_festivals(world):
    spec, calendar, *_ = world
    coats = CATEGORY_BY_NAME["coats"]
    assert gen.demand_multiplier(coats, "winter", ()) > 4 * gen.demand_multiplier(coats, "summer", ())
    costumes = CATEGORY_BY_NAME["kids-costumes"]
    assert gen.demand_multiplier(costumes, "autumn", ("halloween",)) == 3 * gen.demand_multiplier(
        costumes, "autumn", ()
    )
    signals = gen.make_env_signals(spec, calendar).to_pylist()
    oct28 = {r["region"]: r for r in signals if r["dt"] == dt.date(2025, 10, 28)}
    assert oct28["north-cn"]["season"] == "autumn" and oct28["au-east"]["season"] == "spring"
    assert "halloween" in oct28["north-cn"]["festivals"]
    assert "kids-costumes" in oct28["north-cn"]["trends"]


def test_dirty_fraction_corrupts_about_that_share(world):
    spec, _, _, index, contexts = world
    dirty = gen.SyntheticSpec(**{**spec.__dict__, "dirty_fraction": 0.05})
    clean = gen.make_behaviors(spec, range(30), index, contexts)
    corrupted = gen.make_behaviors(dirty, range(30), index, contexts)
    changed = sum(a != b for a, b in zip(clean.to_pylist(), corrupted.to_pylist(), strict=True))
    assert clean.num_rows == corrupted.num_rows
    assert 0.02 * clean.num_rows < changed < 0.08 * clean.num_rows
