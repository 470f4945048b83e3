"""compress: per-user V1 and hybrid contexts from real Spark over the synthetic world, token
counts from the model's own tokenizer, reruns without duplicates, and its quality checkpoint."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from jobs import compress, dq, ingest
from jobs.stage import execute, open_context
from recgpt.config import load_config
from recgpt.llm.request import EMBED_MARK
from recgpt.tables import BEHAVIORS, ITEMS, USER_CONTEXT

pytestmark = pytest.mark.slow

TINY = ["data.users=25", "data.items=150", "data.history_days=120", "data.holdout_days=3"]


def ctx_for(spark, tmp_path, stage, *extra):
    cfg = load_config([f"storage.warehouse={tmp_path / 'wh'}", "run.dt=2025-10-28", *TINY, *extra])
    return open_context(cfg, stage, spark)


def test_compress_writes_one_context_per_user_within_budget(spark, tmp_path):
    execute(ctx_for(spark, tmp_path, "ingest"), ingest.run)
    ctx = ctx_for(spark, tmp_path, "compress")
    report = execute(ctx, compress.run)
    wh = ctx.warehouse
    before = wh.read(BEHAVIORS).where(F.col("ts") < F.lit("2025-10-28").cast("timestamp"))
    users = before.select("user_id").distinct().count()
    assert report.rows_in == report.rows_out == users > 0

    rows = wh.read(USER_CONTEXT, dt="2025-10-28").toPandas().set_index("user_id")
    assert len(rows) == users
    active = rows[rows.events_kept > 0]
    assert (active.full_tokens > active.v1_tokens).all()
    assert (active.v1_tokens > active.hybrid_tokens).all()
    assert (rows.v1_tokens <= 1024).all() and (rows.hybrid_tokens <= 1024).all()
    for _, r in active.iterrows():
        assert r.hybrid_text.count(EMBED_MARK) == len(r.entity_ids)
        # Same buckets, unless the budget trimmed the (longer) V1 text more than the hybrid one.
        assert r.hybrid_dropped_buckets <= r.v1_dropped_buckets
        assert (
            r.v1_text.count("\n") + r.v1_dropped_buckets
            == r.hybrid_text.count("\n") + r.hybrid_dropped_buckets
        )
    # Plain clicks are not part of any context.
    clicks_only = before.groupBy("user_id").agg(
        F.max((F.col("behavior") != "click").cast("int")).alias("other")
    )
    assert clicks_only.where("other = 0").count() == len(rows[rows.events_kept == 0])

    # The token counts are the LLM tokenizer's own.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ctx.cfg.llm.model_path))
    sample = active.iloc[0]
    assert sample.v1_tokens == len(tok(sample.v1_text, add_special_tokens=False)["input_ids"])

    # A small budget trims the oldest buckets; a rerun replaces the date's rows.
    tight = execute(ctx_for(spark, tmp_path, "compress", "compress.token_budget=120"), compress.run)
    assert tight.rows_out == users
    trimmed = wh.read(USER_CONTEXT, dt="2025-10-28").toPandas()
    assert len(trimmed) == users and (trimmed.v1_tokens <= 120).all()
    assert (trimmed.v1_dropped_buckets > 0).any()

    checked = execute(ctx_for(spark, tmp_path, "dq", "compress.token_budget=120"), dq.run)
    assert "0 failed" in checked.details["dq"], checked.details


def test_users_split_across_arrow_batches_still_get_one_context(spark, tmp_path):
    """The compressor reads users a batch at a time; a user whose rows straddle two Arrow batches
    (or a whole batch) must still come out as one row, identical to an unsplit run. Titles
    attached by the workers from the broadcast catalog give the rows of a join in Spark."""
    from udfs.compress import compress_users

    ctx = ctx_for(spark, tmp_path, "ingest")
    execute(ctx, ingest.run)
    wh = ctx.warehouse
    cfg = dict(ctx.cfg.compress)
    behaviors, items = wh.read(BEHAVIORS), wh.read_snapshot(ITEMS, ctx.dt)
    path = str(ctx.cfg.llm.model_path)
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    try:
        spark.conf.set(key, "100000")
        whole = compress_users(behaviors, items, ctx.dt, cfg, path).toPandas()
        spark.conf.set(key, "7")  # every user with history spans several batches
        split = compress_users(behaviors, items, ctx.dt, cfg, path).toPandas()
        joined = compress_users(behaviors, items, ctx.dt, {**cfg, "broadcast_items": False}, path).toPandas()
    finally:
        spark.conf.set(key, before)
    assert cfg["broadcast_items"]
    assert split.user_id.is_unique and len(split) == len(whole) == len(joined)
    assert whole.events_kept.max() > 7
    cols = ["user_id", "events_kept", "full_tokens", "v1_text", "v1_tokens", "hybrid_text", "hybrid_tokens"]
    left = whole.sort_values("user_id")[cols].reset_index(drop=True)
    right = split.sort_values("user_id")[cols].reset_index(drop=True)
    assert left.equals(right)
    assert left.equals(joined.sort_values("user_id")[cols].reset_index(drop=True))


EDGE_ROWS = [
    # (user, ts, behaviour, item, query): repeats that Spark's trim and Python's strip judge
    # differently, a whitespace-only query, ties in time, a type outside the strength order,
    # items without a catalog title or with a title that cleans to nothing, old and future rows.
    ("edge-a", "2025-10-20 09:00:00", "search", None, "Wool Socks "),
    ("edge-a", "2025-10-20 09:05:00", "search", None, "wool socks\t"),
    ("edge-a", "2025-10-20 09:06:00", "search", None, "\t"),
    ("edge-a", "2025-10-20 09:07:00", "view", "i-untitled", None),
    ("edge-a", "2025-10-20 09:07:00", "cart", "i-untitled", None),
    ("edge-a", "2025-10-20 09:07:00", "share", "i-pipes", None),
    ("edge-a", "2025-10-21 10:00:00", "view", "i-pipes", None),
    ("edge-a", "2025-10-21 10:00:00", "share", "i-pipes", None),
    ("edge-a", "2019-01-01 10:00:00", "view", "i-pipes", None),
    ("edge-a", "2025-10-29 10:00:00", "view", "i-pipes", None),
    ("edge-b", "2025-10-01 08:00:00", "click", "i-pipes", None),
]


def test_columnar_compressor_matches_the_row_by_row_rule(spark, tmp_path):
    """The columnar compressor (vectorised dedup, cap, buckets and summed piece token counts)
    gives exactly the rows of the plain per-user rule, on the synthetic world plus hand-made edge
    cases, with budgets that drop buckets and trim the newest one, and a small cap."""
    import pyarrow as pa

    from udfs.compress import clustered_history, tokenizer_spec, user_compressor

    ctx = ctx_for(spark, tmp_path, "ingest")
    execute(ctx, ingest.run)
    wh = ctx.warehouse
    cols = ["user_id", "ts", "behavior", "item_id", "query"]
    edge = spark.createDataFrame(
        [(u, t, b, i, q) for u, t, b, i, q in EDGE_ROWS],
        "user_id string, ts string, behavior string, item_id string, query string",
    ).withColumn("ts", F.col("ts").cast("timestamp"))
    behaviors = wh.read(BEHAVIORS).select(*cols).unionByName(edge)
    items = wh.read_snapshot(ITEMS, ctx.dt).unionByName(
        spark.createDataFrame(
            [("i-pipes", "|||", "Pipe's, Tubes\n| ALL")], "item_id string, title string, category string"
        ),
        allowMissingColumns=True,
    )
    spec = tokenizer_spec(str(ctx.cfg.llm.model_path))
    base = {**dict(ctx.cfg.compress), "keep_behaviors": [*ctx.cfg.compress.keep_behaviors, "share"]}
    overrides_tried = (
        {},
        {"token_budget": 120, "top_categories": 2},
        {"token_budget": 12, "max_events_per_user": 5},
        {"top_categories": 0},
    )
    for overrides in overrides_tried:
        cfg = {**base, **overrides}
        rows = clustered_history(behaviors, items, ctx.dt, cfg).toArrow()
        batches = rows.to_batches(max_chunksize=50)

        def run(columnar: bool, cfg=cfg, batches=batches) -> list[dict]:
            out = user_compressor(ctx.dt, cfg, spec, columnar=columnar)(iter(batches))
            return sorted(pa.Table.from_batches(list(out)).to_pylist(), key=lambda row: row["user_id"])

        fast, plain = run(True), run(False)
        assert len(fast) == len(plain) == len({r["user_id"] for r in rows.to_pylist()})
        for a, b in zip(fast, plain, strict=True):
            assert a == b, (overrides, a["user_id"])
        edge_a = next(r for r in plain if r["user_id"] == "edge-a")
        # Before the run date: all but one; kept: one search (its repeat and the blank query go),
        # two behaviours on the untitled item and three on the one whose title cleans away.
        assert edge_a["events"] == 9 and edge_a["events_kept"] == min(6, cfg["max_events_per_user"])
        if not overrides:
            assert "(carted 1, searched 1, viewed 1, share 1) | " in edge_a["v1_text"]
            assert edge_a["v1_text"].count('search "Wool Socks"') == 1
            # Both forms open with the categories line; the untitled item has no category.
            for form in ("v1_text", "hybrid_text"):
                assert edge_a[form].startswith("categories: pipes tubes all 1\n"), edge_a[form]
        heads = sum(r["v1_text"].startswith("categories: ") for r in plain)
        assert (heads == 0) == (cfg["top_categories"] == 0 or cfg["token_budget"] < 20), (overrides, heads)


def test_token_counts_add_up_only_for_tokenizers_that_split_at_whitespace(tmp_path):
    import json

    from udfs.compress import TokenCounter, backend_for, tokenizer_spec

    spec = tokenizer_spec(str(load_config([]).llm.model_path))
    count = TokenCounter(backend_for(spec))
    assert count.splits_at_whitespace
    text = '2025-10-01 (viewed 2) | Trail boots; search "wool socks"\n2025-10-02 (bought 1) | ; '
    pieces = ["2025-10-01", " (viewed", " 2)", " |", " Trail", " boots;", " search", ' "wool', ' socks"']
    assert count(text) == sum(map(count, pieces)) + count("\n") + count("2025-10-02 (bought 1) | ; ")
    for change in (
        {"normalizer": {"type": "NFKC"}},
        {
            "pre_tokenizer": {
                "type": "ByteLevel",
                "add_prefix_space": True,
                "trim_offsets": True,
                "use_regex": True,
            }
        },
    ):
        other = TokenCounter(backend_for(json.dumps({**json.loads(spec), **change})))
        assert not other.splits_at_whitespace
