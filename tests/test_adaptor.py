"""The entity adaptor: trains against the frozen bundled LLM (loss goes down on held-out items),
saves and loads as a versioned artifact, and the train_adaptor stage runs on warehouse data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pyspark.sql import functions as F

from recgpt import adaptor as A
from recgpt.config import load_config
from recgpt.embeddings import Embedder

ITEMS = [
    ("Merino wool hiking socks", "Socks"),
    ("Waterproof trail running shoes", "Shoes"),
    ("Stainless steel pour-over kettle", "Kitchen"),
    ("Organic cotton baby onesie", "Baby"),
    ("Mechanical gaming keyboard", "Computers"),
    ("Vitamin C brightening serum", "Beauty"),
    ("Cast iron skillet 12 inch", "Kitchen"),
    ("Insulated down jacket", "Outerwear"),
    ("Bamboo cutting board set", "Kitchen"),
    ("Wireless noise cancelling headphones", "Audio"),
    ("Yoga mat with carrying strap", "Fitness"),
    ("Tomato seed starter kit", "Garden"),
    ("Kids waterproof rain boots", "Shoes"),
    ("Silk sleep pillowcase", "Bedding"),
    ("Ceramic pour-over coffee dripper", "Kitchen"),
    ("Trekking poles carbon", "Outdoor"),
]


@pytest.fixture(scope="module")
def setting():
    cfg = load_config(["run.stage=test"])
    vectors = Embedder(dict(cfg.embedding)).encode([t for t, _ in ITEMS])
    items = [{"embedding": v, "title": t, "category": c} for (t, c), v in zip(ITEMS, vectors, strict=True)]
    lm = A.FrozenLM(str(cfg.llm.model_path))
    return lm, A.self_perception_examples(items)


def test_training_the_adaptor_lowers_the_held_out_loss(setting):
    lm, examples = setting
    holdout, train_set = examples[:4], examples[4:]
    cfg = {"hidden": 256, "steps": 30, "batch_size": 8, "lr": 0.003, "seed": 0}
    result = A.train(lm, train_set, holdout, cfg)
    m = result.metrics
    assert m["train_loss_last"] < m["train_loss_first"]
    assert m["holdout_loss_after"]["self_perception"] < m["holdout_loss_before"]["self_perception"]
    # Slots come out at the scale of the LLM's own token embeddings.
    slots = A.entity_vectors(result.adaptor, np.stack([e.entities[0] for e in holdout]))
    assert slots.shape == (4, lm.hidden)
    assert np.allclose(np.linalg.norm(slots, axis=1), lm.token_norm, rtol=1e-3)


def test_artifact_round_trip_and_versioning(setting, tmp_path):
    lm, examples = setting
    adaptor = A.build_adaptor(384, 64, lm.hidden, lm.token_norm)
    meta = {
        "data_hash": A.data_hash(examples),
        "llm": "SmolLM2-135M-Instruct",
        "llm_hidden": lm.hidden,
        "embedding_model": "all-MiniLM-L6-v2",
        "embedding_dim": 384,
        "config": {"hidden": 64},
        "trained_at": "2025-10-28T00:00:00+00:00",
    }
    folder = A.save(adaptor, tmp_path, meta)
    loaded, loaded_meta = A.load(folder)
    x = np.stack([e.entities[0] for e in examples[:3]])
    np.testing.assert_allclose(A.entity_vectors(loaded, x), A.entity_vectors(adaptor, x), rtol=1e-6)
    assert loaded_meta["version"] == folder.name and A.latest(tmp_path) == folder
    # Same data and settings -> same version; other data -> another version.
    assert A.save(adaptor, tmp_path, meta) == folder
    other = A.save(adaptor, tmp_path, {**meta, "data_hash": A.data_hash(examples[1:])})
    assert other != folder
    assert json.loads((other / A.META).read_text())["data_hash"] != meta["data_hash"]
    with pytest.raises(Exception, match="not an adaptor artifact"):
        A.load(tmp_path / "missing")


@pytest.mark.slow
def test_train_adaptor_stage_saves_a_versioned_artifact_from_the_warehouse(spark, tmp_path):
    from jobs import compress, embed_items, ingest, train_adaptor
    from jobs.stage import execute, open_context

    small = [
        f"storage.warehouse={tmp_path / 'wh'}",
        "run.dt=2025-10-28",
        "data.users=12",
        "data.items=80",
        "data.history_days=40",
        "data.holdout_days=2",
        "adaptor.steps=6",
        "adaptor.batch_size=4",
        "adaptor.items=30",
        "adaptor.holdout_items=6",
        "adaptor.distill_users=3",
        "adaptor.holdout_users=1",
        "adaptor.distill_tokens=8",
    ]
    for stage, fn in (("ingest", ingest.run), ("embed_items", embed_items.run), ("compress", compress.run)):
        execute(open_context(load_config(small), stage, spark), fn)
    report = execute(open_context(load_config(small), "train_adaptor", spark), train_adaptor.run)

    folder = tmp_path / "wh" / "_artifacts" / "adaptor" / report.details["adaptor"]["version"]
    _weights, meta = A.load(folder)
    assert meta["llm"] == "SmolLM2-135M-Instruct" and meta["embedding_dim"] == 384
    assert meta["metrics"]["train_examples"] == report.rows_out == 24 + 3
    assert set(meta["metrics"]["holdout_loss_after"]) == {"self_perception", "distillation"}
    assert "distillation" in report.details["training"]
    # The run record names the artifact version it produced.
    from deltalake import DeltaTable

    runs = DeltaTable(str(tmp_path / "wh" / "runs")).to_pandas()
    details = json.loads(runs[runs.stage == "train_adaptor"].iloc[0].details)
    assert details["adaptor"]["version"] == folder.name


@pytest.mark.slow
def test_hybrid_requests_get_one_adaptor_block_per_entity_in_order(spark, setting, tmp_path):
    from recgpt.llm.request import EMBED_MARK, decode_block, encode_messages
    from udfs.hybrid import attach_entity_blocks, context_columns

    lm, examples = setting
    adaptor = A.build_adaptor(384, 64, lm.hidden, lm.token_norm)
    meta = {
        "data_hash": "x",
        "llm": "m",
        "llm_hidden": lm.hidden,
        "embedding_model": "e",
        "embedding_dim": 384,
    }
    folder = A.save(adaptor, tmp_path, {**meta, "config": {"hidden": 64}})
    vecs = {f"i{k}": examples[k].entities[0].tolist() for k in range(3)}
    vectors = spark.createDataFrame(list(vecs.items()), "item_id string, embedding array<float>")
    contexts = spark.createDataFrame(
        [
            ("u1", "t", f"2025-10-27 (viewed 2) | {EMBED_MARK}; {EMBED_MARK}", ["i2", "i0"]),
            ("u2", "t", f"2025-10-27 (viewed 1) | {EMBED_MARK}", ["i9"]),  # no vector for i9
            ("u3", "t", "2025-10-27 (searched 1) | search", []),
        ],
        "user_id string, v1_text string, hybrid_text string, entity_ids array<string>",
    )
    hybrid = context_columns(contexts, "hybrid").withColumn("key", F.col("user_id"))
    rows = {r["key"]: r for r in attach_entity_blocks(hybrid, vectors, str(folder)).collect()}
    blocks = [decode_block(b) for b in rows["u1"]["embeds"]]
    expected = A.entity_vectors(adaptor, np.asarray([vecs["i2"], vecs["i0"]], dtype=np.float32))
    assert [b.shape for b in blocks] == [(1, lm.hidden)] * 2
    np.testing.assert_allclose(np.vstack(blocks), expected, rtol=1e-5)
    assert rows["u2"]["embeds"] == [] and rows["u3"]["embeds"] == []
    # A missing vector surfaces as a bad request (marks != blocks), never as a shifted slot.
    from recgpt.llm.request import Sampling
    from udfs.llm import to_request

    message = encode_messages([{"role": "user", "content": rows["u2"]["context"]}])
    with pytest.raises(ValueError, match="1 embedding marks"):
        to_request({"key": "u2", "messages": message, "embeds": rows["u2"]["embeds"]}, None, Sampling())
    text = {r["user_id"]: r for r in context_columns(contexts, "text").collect()}
    assert text["u1"]["context"] == "t" and text["u1"]["entity_ids"] == []


def test_distillation_lines_stop_at_the_entity_cap_and_skip_a_too_busy_newest_day():
    from jobs.train_adaptor import newest_lines
    from recgpt.llm.request import EMBED_MARK

    v1 = "old | a; b\nmid | c\nnew | d; e"
    hybrid = f"old | {EMBED_MARK}; {EMBED_MARK}\nmid | {EMBED_MARK}\nnew | {EMBED_MARK}; {EMBED_MARK}"
    # Three buckets fit in five marks; four marks keep the two newest; one mark keeps none.
    assert newest_lines(v1, hybrid, 3, 5) == (v1, hybrid, 5)
    assert newest_lines(v1, hybrid, 3, 4) == ("mid | c\nnew | d; e", "\n".join(hybrid.splitlines()[1:]), 3)
    assert newest_lines(v1, hybrid, 1, 10) == ("new | d; e", hybrid.splitlines()[-1], 2)
    assert newest_lines(v1, hybrid, 3, 1) is None
