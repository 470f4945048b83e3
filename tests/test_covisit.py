"""covisit: item-to-item co-visitation recall on hand-made behaviours whose pairs, neighbours and
ranks are known, written once per run date, and its quality checkpoint."""

from __future__ import annotations

import datetime as _dt
import re

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from omegaconf import OmegaConf
from pyspark.sql import functions as F

from jobs import covisit, dq
from jobs.stage import execute, open_context
from recgpt.config import load_config
from recgpt.errors import ConfigError, RecGPTError
from recgpt.quality import QualityGateError
from recgpt.rundate import RunDate
from recgpt.tables import BEHAVIORS, COVISIT_RECALL, ITEMS, USER_CONTEXT
from sparkio.warehouse import Lineage
from udfs.covisit import (
    CovisitSettings,
    bought_items,
    covisit_pairs,
    item_events,
    recall,
    seed_items,
    top_neighbors,
)

DT = RunDate.parse("2025-10-28")
BEHAVIOR_SCHEMA = "user_id string, item_id string, behavior string, query string, ts timestamp"


def at(day: str | RunDate, clock: str = "10:00") -> _dt.datetime:
    return _dt.datetime.fromisoformat(f"{day}T{clock}:00+00:00")


def settings(*overrides: str) -> CovisitSettings:
    cfg = OmegaConf.to_container(load_config(["run.stage=test", *overrides]).covisit, resolve=True)
    assert isinstance(cfg, dict)
    return CovisitSettings.from_config(cfg)


def behaviors_frame(spark, rows):
    """rows: (user, item, behaviour, ts) or (user, None, "search", ts, query)."""
    return spark.createDataFrame(
        [(r[0], r[1], r[2], r[4] if len(r) > 4 else None, r[3]) for r in rows], BEHAVIOR_SCHEMA
    )


# -- pairs and neighbours -------------------------------------------------------------------------

# Oldest first per user. Window: 2 positions, 7 days.
PAIR_WORLD = [
    # u1: A B C D; the click between B and C is not a kept behaviour and takes no position (so
    # B-D is 2 apart), the search names no item; D again on the run date is not history.
    ("u1", "A", "view", at("2025-10-01", "10:00")),
    ("u1", "B", "view", at("2025-10-01", "10:01")),
    ("u1", "F", "click", at("2025-10-01", "10:01")),
    ("u1", "C", "cart", at("2025-10-01", "10:02")),
    ("u1", None, "search", at("2025-10-01", "10:02"), "red shoes"),
    ("u1", "D", "view", at("2025-10-01", "10:03")),
    ("u1", "X", "view", at(DT, "09:00")),
    # u2: A B, then E ten days later (adjacent positions, but outside window_days); Z is older
    # than lookback_days.
    ("u2", "Z", "view", at("2025-08-01")),
    ("u2", "A", "view", at("2025-10-01", "10:00")),
    ("u2", "B", "view", at("2025-10-01", "10:05")),
    ("u2", "E", "view", at("2025-10-11", "10:00")),
    # u3: A viewed then carted the same day is one position; A again the next day makes B-A, the
    # same pair as A-B, which u3 counts once.
    ("u3", "A", "view", at("2025-10-01", "09:00")),
    ("u3", "A", "cart", at("2025-10-01", "09:30")),
    ("u3", "B", "view", at("2025-10-01", "10:00")),
    ("u3", "A", "view", at("2025-10-02", "10:00")),
]


def weights(pairs) -> dict[tuple[str, str], int]:
    return {(r.item_id, r.neighbor_id): int(r.weight) for r in pairs.collect()}


def symmetric(undirected: dict[str, int]) -> dict[tuple[str, str], int]:
    out = {}
    for pair, w in undirected.items():
        a, b = pair
        out[(a, b)] = out[(b, a)] = w
    return out


def test_pairs_count_each_user_once_within_the_window_and_neighbours_break_ties_by_id(spark):
    s = settings("covisit.window_events=2", "covisit.window_days=7", "covisit.lookback_days=60")
    events = item_events(behaviors_frame(spark, PAIR_WORLD), DT, s)
    # One position per (user, item, day), 1 = newest.
    u3 = [(r.item_id, r.pos) for r in events.where("user_id = 'u3'").orderBy("pos").collect()]
    assert u3 == [("A", 1), ("B", 2), ("A", 3)]

    pairs = covisit_pairs(events, s)
    # A-D are 3 positions apart, B-E and A-E 10 days; A-B: u1, u2 and u3 once.
    assert weights(pairs) == symmetric({"AB": 3, "AC": 1, "BC": 1, "BD": 1, "CD": 1})

    neighbors = top_neighbors(pairs, settings("covisit.neighbors_per_item=2"))
    lists: dict[str, list[str]] = {}
    for r in neighbors.orderBy("item_id", "weight", "neighbor_id").collect():
        lists.setdefault(r.item_id, []).append(r.neighbor_id)
    # B: A (3), then C and D tie at 1 and C wins by id; C: A, B and D tie.
    assert {k: sorted(v) for k, v in lists.items()} == {
        "A": ["B", "C"],
        "B": ["A", "C"],
        "C": ["A", "B"],
        "D": ["B", "C"],
    }


def test_the_behaviours_are_shuffled_once_by_user_and_then_only_the_distinct_pairs(spark, capsys):
    s = settings("covisit.window_events=2", "covisit.window_days=7", "covisit.lookback_days=60")
    covisit_pairs(item_events(behaviors_frame(spark, PAIR_WORLD), DT, s), s).explain()
    shuffles = re.findall(r"Exchange hashpartitioning\((.*?), \d+\)", capsys.readouterr().out)
    keys = sorted(re.sub(r"#\d+", "", k) for k in shuffles)
    # Per user: the day collapse, the numbering, the window and the distinct unordered pairs.
    assert keys == ["a, b", "user_id"], keys


def test_without_window_days_the_window_is_in_positions_only(spark):
    s = settings("covisit.window_events=2", "covisit.window_days=null", "covisit.lookback_days=60")
    assert s.window_days is None
    pairs = covisit_pairs(item_events(behaviors_frame(spark, PAIR_WORLD), DT, s), s)
    # u2's B-E and A-E now pair; Z stays out (lookback), so does anything at or after dt.
    assert weights(pairs) == symmetric({"AB": 3, "AC": 1, "BC": 1, "BD": 1, "CD": 1, "BE": 1, "AE": 1})


def test_bad_settings_fail_at_load_naming_the_key():
    with pytest.raises(ConfigError, match=r"covisit\.window_events must be at least 1"):
        settings("covisit.window_events=0")
    with pytest.raises(ConfigError, match=r"covisit\.seed_decay"):
        settings("covisit.seed_decay=0")
    with pytest.raises(ConfigError, match=r"covisit\.keep_behaviors.*unknown: like"):
        settings("covisit.keep_behaviors=[view,like]")
    # The defaults: the compress behaviours and the tag channel's purchase window.
    s = settings()
    assert s.keep_behaviors == ("purchase", "cart", "fav", "review", "view", "search")
    assert (s.window_events, s.window_days, s.neighbors_per_item, s.seed_items, s.top_k) == (
        5,
        7,
        50,
        20,
        100,
    )
    assert (s.seed_decay, s.bought_days, s.lookback_days) == (1.0, 30, 1095)


def test_the_read_starts_at_the_longer_of_the_lookback_and_the_purchase_window():
    dt = RunDate.parse("2025-03-01")
    # The purchase window is the longer one here: 30 days back over a 28-day February.
    assert settings("covisit.lookback_days=10").read_since(dt) == RunDate.parse("2025-01-30")
    # The default lookback: 1095 days back over 2024-02-29 is not three calendar years.
    assert settings().read_since(dt) == RunDate.parse("2022-03-02")


# -- the stage ------------------------------------------------------------------------------------

# Helper users each co-visit two items on 2025-10-20 (one session); pair weight = sessions.
SESSIONS = {
    ("s1", "x"): 3,
    ("s1", "b"): 2,
    ("s1", "s2"): 2,
    ("s1", "w"): 1,
    ("s1", "z"): 1,
    ("s2", "y"): 2,
    ("s2", "x"): 1,
    ("s2", "p"): 1,
    ("s2", "z"): 1,
}
# With neighbors_per_item=4 (ties by item id):
#   s1: x 3, b 2, s2 2, w 1 | z 1 cut        s2: s1 2, y 2, p 1, x 1 | z 1 cut
# The user "t" has seeds s2 (newest) and s1 (seed_items=2), so the candidates are
#   x 3+1 = 4, y 2, p 1, w 1, and b 2 (bought 20 days ago), s1 2 and s2 2 (seeds) excluded;
# top_k=3 keeps x, y and p (p before w on the tie).
EXPECTED_T = [(1, "x", 4.0), (2, "y", 2.0), (3, "p", 1.0)]
STAGE_ARGS = ["covisit.neighbors_per_item=4", "covisit.seed_items=2", "covisit.top_k=3"]


def stage_world() -> tuple[list[tuple], list[tuple[str, int]]]:
    rows: list[tuple] = [
        # "t": every step more than window_days from the next, so t itself co-visits nothing.
        ("t", "p", "purchase", at("2025-09-18")),  # 40 days before dt: may be recalled
        ("t", "b", "purchase", at("2025-10-08")),  # 20 days before dt: never recalled
        ("t", None, "search", at("2025-10-10"), "hiking socks"),
        ("t", "s1", "view", at("2025-10-18")),
        ("t", "s2", "view", at("2025-10-26")),
        ("t", "x", "purchase", at(DT, "09:00")),  # on the run date: not history, not excluded
        # A history of one item nobody else has: no candidates, no rows.
        ("lonely", "solo", "view", at("2025-10-25")),
        # Clicks only (events_kept = 0): no co-visits (else s1-z would outweigh w) and no rows.
        ("clicker", "s1", "click", at("2025-10-20", "10:00")),
        ("clicker", "z", "click", at("2025-10-20", "10:01")),
    ]
    n = 0
    for (a, b), sessions in SESSIONS.items():
        for _ in range(sessions):
            n += 1
            rows += [
                (f"h{n:02}", a, "view", at("2025-10-20", "10:00")),
                (f"h{n:02}", b, "view", at("2025-10-20", "10:05")),
            ]
    # After the run date (evaluation's window): must not count. Would make w s2's top neighbour.
    for k in range(3):
        rows += [
            (f"f{k}", "s2", "view", at("2025-10-29", "10:00")),
            (f"f{k}", "w", "view", at("2025-10-29", "10:05")),
        ]
    # compress's rows for dt: the helpers have no user_context row, so they get no recall.
    contexts = [("t", 4), ("lonely", 1), ("clicker", 0)]
    return rows, contexts


def write_world(spark, warehouse, delisted: frozenset[str] = frozenset()) -> None:
    """The stage's world; `delisted` items are absent from the catalog snapshot of dt."""
    rows, contexts = stage_world()
    lineage = Lineage.now(DT, "fixture")
    frame = behaviors_frame(spark, rows).selectExpr(
        "*", "CAST(NULL AS double) AS rating", "to_date(ts) AS dt"
    )
    warehouse.write(frame, BEHAVIORS, mode="append", lineage=lineage)
    listed = sorted({r[1] for r in rows if r[1] is not None} - delisted)
    items = spark.createDataFrame(
        [(i, f"item {i}", "things", None, None, None) for i in listed],
        "item_id string, title string, category string, category_path string, brand string, price double",
    ).withColumn("dt", F.to_date(F.lit(DT.iso)))
    warehouse.write(items, ITEMS, mode="append", lineage=lineage)
    fields = [f for f in USER_CONTEXT.schema if f.name not in ("dt", "run_id", "created_at")]
    table = pa.Table.from_pylist(
        [
            {
                "user_id": user,
                "events": max(kept, 2),
                "events_kept": kept,
                "buckets": 1,
                "full_tokens": 0,
                "v1_text": "",
                "v1_tokens": 0,
                "v1_dropped_buckets": 0,
                "hybrid_text": "",
                "entity_ids": [],
                "hybrid_tokens": 0,
                "hybrid_dropped_buckets": 0,
            }
            for user, kept in contexts
        ],
        schema=pa.schema(fields),
    )
    warehouse.write(spark.createDataFrame(table), USER_CONTEXT, mode="replace", lineage=lineage)


def ctx_for(spark, warehouse_dir, stage, *extra):
    cfg = load_config([f"storage.warehouse={warehouse_dir}", f"run.dt={DT}", *STAGE_ARGS, *extra])
    return open_context(cfg, stage, spark)


def recall_rows(warehouse_dir) -> list[tuple]:
    df = DeltaTable(f"{warehouse_dir}/covisit_recall").to_pandas()
    return sorted(
        (r.user_id, int(r["rank"]), r.item_id, float(r.score), str(r["dt"]), r.run_id)
        for _, r in df.iterrows()
    )


@pytest.fixture
def world(spark, warehouse, warehouse_dir):
    write_world(spark, warehouse)
    return warehouse_dir


def test_recall_ranks_the_seeds_neighbours_without_seeds_or_recent_purchases(spark):
    rows, contexts = stage_world()
    behaviors = behaviors_frame(spark, rows)
    users = spark.createDataFrame([(u,) for u, kept in contexts if kept > 0], "user_id string")

    def recalled(*extra: str, catalog=None) -> list[tuple]:
        s = settings(*STAGE_ARGS, *extra)
        events = item_events(behaviors, DT, s)
        neighbors = top_neighbors(covisit_pairs(events, s), s, catalog)
        out = recall(seed_items(events, users, s), neighbors, bought_items(behaviors, DT, s), s)
        return sorted((r.user_id, r.rank, r.item_id, r.score) for r in out.collect())

    # Only "t": the helpers are not among the users, "lonely" has no candidate.
    assert recalled() == [("t", *e) for e in EXPECTED_T]
    # Seeds weighted by recency: s2 (newest) 1, s1 0.5: x = 3 x 0.5 + 1, y 2, p 1, w 0.5.
    assert recalled("covisit.seed_decay=0.5") == [("t", 1, "x", 2.5), ("t", 2, "y", 2.0), ("t", 3, "p", 1.0)]
    # y delisted: never recalled, and its slot among s2's neighbours goes to z (s1 2, p, x, z 1),
    # so the candidates are x 4, then p, w and z at 1 (by id).
    items = {r[1] for r in rows if r[1] is not None}
    catalog = spark.createDataFrame([(i,) for i in sorted(items - {"y"})], "item_id string")
    assert recalled(catalog=catalog) == [("t", 1, "x", 4.0), ("t", 2, "p", 1.0), ("t", 3, "w", 1.0)]
    s = settings(*STAGE_ARGS)
    neighbors = top_neighbors(covisit_pairs(item_events(behaviors, DT, s), s), s, catalog)
    assert {r.neighbor_id for r in neighbors.where("item_id = 's2'").collect()} == {"s1", "p", "x", "z"}


@pytest.mark.slow
def test_stage_writes_the_recall_of_the_users_with_a_history(spark, world):
    ctx = ctx_for(spark, world, "covisit")
    report = execute(ctx, covisit.run)
    rows = recall_rows(world)
    # Only "t": the helpers have no context row, "lonely" no candidate, "clicker" no history.
    assert [(u, rank, item, score) for u, rank, item, score, _, _ in rows] == [("t", *e) for e in EXPECTED_T]
    assert {(d, run) for *_, d, run in rows} == {(DT.iso, ctx.lineage.run_id)}
    assert report.rows_out == 3
    assert report.details["users"] == "2 with a history, 1 recalled, 1 without co-visited candidates"
    assert report.details["items"].startswith("3.0 per recalled user")
    # 9 session pairs from helpers only (t's steps are days apart, clicks and the future excluded).
    assert report.details["pairs"].startswith(f"9 item pairs co-visited ({sum(SESSIONS.values())} ")


def test_items_delisted_by_the_run_dates_catalog_are_not_recalled(spark, warehouse, warehouse_dir):
    write_world(spark, warehouse, delisted=frozenset({"y"}))
    execute(ctx_for(spark, warehouse_dir, "covisit"), covisit.run)
    rows = recall_rows(warehouse_dir)
    assert [(u, rank, item, score) for u, rank, item, score, _, _ in rows] == [
        ("t", 1, "x", 4.0),
        ("t", 2, "p", 1.0),
        ("t", 3, "w", 1.0),
    ]


def test_rerun_for_the_same_date_replaces_its_rows(spark, world):
    first = execute(ctx_for(spark, world, "covisit"), covisit.run)
    before = [row[:4] for row in recall_rows(world)]
    second_ctx = ctx_for(spark, world, "covisit")
    second = execute(second_ctx, covisit.run)
    rows = recall_rows(world)
    # The date's rows replaced, not appended: the same rows, all from the second run.
    assert first.rows_out == second.rows_out == len(rows) == len(EXPECTED_T)
    assert [row[:4] for row in rows] == before
    assert {run for *_, run in rows} == {second_ctx.lineage.run_id}


def test_missing_user_context_is_a_clear_error(spark, warehouse_dir):
    with pytest.raises(RecGPTError, match=re.escape("run `python -m jobs.compress run.dt=2025-10-28` first")):
        execute(ctx_for(spark, warehouse_dir, "covisit"), covisit.run)


@pytest.mark.slow
def test_quality_checkpoint_passes_and_stops_on_a_duplicate_rank(spark, world):
    ctx = ctx_for(spark, world, "covisit")
    execute(ctx, covisit.run)
    checked = execute(ctx_for(spark, world, "dq", "dq.stages=[covisit]"), dq.run)
    assert "0 failed" in checked.details["dq"], checked.details
    results = DeltaTable(f"{world}/dq_results").to_pandas()
    assert set(results.table_name) == {"covisit_recall"} and len(results) >= 13

    # A second row at rank 1 under the same run: critical, the gate names it.
    written = ctx.warehouse.read(COVISIT_RECALL, dt=DT)
    dup = written.where("rank = 1").withColumn("item_id", F.lit("w"))
    ctx.warehouse.write(written.unionByName(dup), COVISIT_RECALL, mode="replace", lineage=ctx.lineage)
    with pytest.raises(QualityGateError) as err:
        execute(ctx_for(spark, world, "dq", "dq.stages=[covisit]"), dq.run)
    assert "covisit_recall.dt,user_id,rank: expect_compound_columns_to_be_unique" in str(err.value)
