"""The entity adaptor: trains against the frozen bundled LLM (loss goes down on held-out items),
saves and loads as a versioned artifact, and the train_adaptor stage runs on warehouse data."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import replace

import numpy as np
import pytest

from recgpt import adaptor as A
from recgpt.config import load_config
from recgpt.embeddings import Embedder
from recgpt.llm.server import BACKGROUND_START
from tests.conftest import worker_cores

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
    # The worker's cores: nothing else of this worker runs beside a test (the stage keeps one
    # core for Spark).
    lm = A.FrozenLM(str(cfg.llm.model_path), threads=worker_cores())
    return lm, A.self_perception_examples(items)


def test_training_the_adaptor_lowers_the_held_out_loss(setting):
    lm, examples = setting
    holdout, train_set = examples[:4], examples[4:]
    # Ten steps take the held-out loss from 5.97 to 5.44 here (a step is ~4 s on one core).
    cfg = {"hidden": 256, "steps": 10, "batch_size": 8, "lr": 0.003, "seed": 0}
    result = A.train(lm, train_set, holdout, cfg)
    m = result.metrics
    assert m["train_loss_last"] < m["train_loss_first"]
    assert m["holdout_loss_after"]["self_perception"] < m["holdout_loss_before"]["self_perception"]
    # Slots come out at the scale of the LLM's own token embeddings.
    slots = A.entity_vectors(result.adaptor, np.stack([e.entities[0] for e in holdout]))
    assert slots.shape == (4, lm.hidden)
    assert np.allclose(np.linalg.norm(slots, axis=1), lm.token_norm, rtol=1e-3)


def test_alignment_sends_unseen_items_slots_toward_their_titles_words(setting):
    lm, examples = setting
    holdout, train_set = examples[:4], examples[4:]
    adaptor = A.build_adaptor(384, 256, lm.hidden, lm.token_norm)
    m = A.align(lm, adaptor, train_set, holdout, steps=200, lr=0.003, seed=0)
    # Held-out items the regression never saw: their slots turn toward their own titles' tokens.
    assert m["holdout_distance_after"] < m["holdout_distance_before"] - 0.1
    slots = A.entity_vectors(adaptor, np.stack([e.entities[0] for e in holdout]))
    own = np.stack([lm.anchor(e.anchor).numpy() for e in holdout])
    cos = (slots / np.linalg.norm(slots, axis=1)[:, None]) @ (own / np.linalg.norm(own, axis=1)[:, None]).T
    assert np.all(np.diag(cos) > 0.5)
    # Nothing to align (no anchors, or no steps): the adaptor is left as it was.
    assert A.align(lm, adaptor, [replace(e, anchor="") for e in train_set], holdout, 200, 0.003, 0) == {}


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
def test_train_adaptor_stage_saves_a_versioned_artifact_from_the_warehouse(nightly_run):
    from deltalake import DeltaTable

    from tests.dag_support import QUICK_ADAPTOR, failure_report

    assert nightly_run.proc.returncode == 0, failure_report(nightly_run.proc)
    runs = DeltaTable(str(nightly_run.warehouse / "runs")).to_pandas()
    row = runs[runs.stage == "train_adaptor"].iloc[0]
    details = json.loads(row.details)
    # The run record names the artifact version it produced, and the artifact is that version.
    folder = nightly_run.warehouse / "_artifacts" / "adaptor" / details["adaptor"]["version"]
    _weights, meta = A.load(folder)
    assert details["adaptor"]["trained"] and meta["version"] == folder.name
    assert meta["llm"] == "SmolLM2-135M-Instruct" and meta["embedding_dim"] == 384
    # Self-perception items (a quarter held out) and distillation users (some held out).
    settings = dict(o.split("=") for o in QUICK_ADAPTOR)
    items, holdout_users = int(settings["adaptor.items"]), int(settings["adaptor.holdout_users"])
    distilled = meta["metrics"]["train_examples"] - (items - items // 4)
    assert meta["metrics"]["train_examples"] == row.rows_out and distilled >= 1
    assert row.rows_in == items + distilled + holdout_users
    assert set(meta["metrics"]["holdout_loss_after"]) == {"self_perception", "distillation"}
    assert "distillation" in details["training"]


def test_distillation_lines_stop_at_the_entity_cap_and_skip_a_too_busy_newest_day():
    from recgpt.adaptor import newest_lines
    from recgpt.llm.request import EMBED_MARK

    v1 = "old | a; b\nmid | c\nnew | d; e"
    hybrid = f"old | {EMBED_MARK}; {EMBED_MARK}\nmid | {EMBED_MARK}\nnew | {EMBED_MARK}; {EMBED_MARK}"
    # Three buckets fit in five marks; four marks keep the two newest; one mark keeps none.
    assert newest_lines(v1, hybrid, 3, 5) == (v1, hybrid, 5)
    assert newest_lines(v1, hybrid, 3, 4) == ("mid | c\nnew | d; e", "\n".join(hybrid.splitlines()[1:]), 3)
    assert newest_lines(v1, hybrid, 1, 10) == ("new | d; e", hybrid.splitlines()[-1], 2)
    assert newest_lines(v1, hybrid, 3, 1) is None


def test_distillation_users_are_drawn_in_seeded_order_up_to_the_number_wanted():
    import random

    from recgpt.llm.request import EMBED_MARK

    def context(user, lines):
        v1 = "\n".join(f"day{i} | {' '.join(ids)}" for i, ids in enumerate(lines))
        hybrid = "\n".join(f"day{i} | " + "; ".join(EMBED_MARK for _ in ids) for i, ids in enumerate(lines))
        return {
            "user_id": user,
            "v1_text": v1,
            "hybrid_text": hybrid,
            "entity_ids": [i for ids in lines for i in ids],
        }

    contexts = [
        context("u1", [["a", "b"], ["c"]]),
        context("u2", [["d", "e", "f"]]),  # its newest (only) day holds 3 > 2 items: passed over
        context("u3", [["g"], ["h", "i"]]),
    ]
    # random.Random(7) shuffles three rows into the order 2, 0, 1: u3, u1, u2.
    users = A.distillation_users(contexts, random.Random(7), wanted=5, buckets=2, max_marks=2)
    assert [u.user_id for u in users] == ["u3", "u1"]
    # Both of u1's days would hold 3 items: only the newest (c) is kept, with its one entity.
    assert users[1] == A.DistillationUser("u1", "day1 | c", f"day1 | {EMBED_MARK}", ["c"])
    assert users[0] == A.DistillationUser(
        "u3", "day1 | h i", f"day1 | {EMBED_MARK}; {EMBED_MARK}", ["h", "i"]
    )
    # One wanted: the first user of the shuffled order that fits.
    first = A.distillation_users(contexts, random.Random(7), wanted=1, buckets=2, max_marks=2)
    assert [u.user_id for u in first] == ["u3"]


def test_an_artifact_is_kept_only_for_the_same_llm_and_embedding_model(tmp_path):
    assert not A.compatible(None, "llm", "emb")
    (tmp_path / A.META).write_text(json.dumps({"llm": "llm", "embedding_model": "emb"}))
    assert A.compatible(tmp_path, "llm", "emb")
    assert not A.compatible(tmp_path, "llm", "other-emb")
    assert not A.compatible(tmp_path, "other-llm", "emb")


def test_trained_on_names_the_held_out_items_and_users_first():
    assert A.trained_on(["i1", "i2", "i3"], 1, ["u1", "u2"], 1) == {
        "self_perception": {"holdout": ["i1"], "train": ["i2", "i3"]},
        "distillation": {"holdout": ["u1"], "train": ["u2"]},
    }


def test_distillation_examples_teach_the_hybrid_prompt_the_text_prompts_answer():
    from recgpt.llm.request import EMBED_MARK

    class Teacher:  # stands in for the frozen LLM: one fixed answer, the prompts it was asked
        def __init__(self):
            self.seen = []

        def generate(self, prompts, max_new_tokens, progress=None):
            self.seen.append((prompts, max_new_tokens))
            return ["hiking gear"] * len(prompts)

    users = [
        A.DistillationUser("u1", "10-27 | boots; tent", f"10-27 | {EMBED_MARK}; {EMBED_MARK}", ["b1", "t1"]),
        A.DistillationUser("u2", "10-27 | mat", f"10-27 | {EMBED_MARK}", ["y9"]),  # y9 has no vector
    ]
    teacher = Teacher()
    examples, ids = A.distillation_examples(teacher, users, {"b1": [1.0, 2.0], "t1": [3.0, 4.0]}, 8)
    assert ids == ["u1"] and len(examples) == 1
    (example,) = examples
    assert example.kind == "distillation" and example.target == "hiking gear"
    assert example.messages[0]["content"] == (
        f"Shopping history (oldest first):\n10-27 | {EMBED_MARK}; {EMBED_MARK}\n\n"
        "In a few words, what is this shopper interested in right now?"
    )
    assert example.entities.dtype == np.float32
    np.testing.assert_array_equal(example.entities, [[1.0, 2.0], [3.0, 4.0]])
    # The teacher answered the text form of the same lines, with the configured answer length.
    assert teacher.seen == [([A.distill_messages("10-27 | boots; tent")], 8)]


def test_training_leaves_a_core_to_an_engine_server_starting_beside_it(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert A.default_threads() == 4
    release = threading.Event()
    start = threading.Thread(target=release.wait, name=BACKGROUND_START, daemon=True)
    start.start()
    try:
        assert A.default_threads() == 3
    finally:
        release.set()
        start.join()
    assert A.default_threads() == 4
