"""The production hybrid input path of mine_intents: each entity mark of a user's history gets the
adaptor's slot of its own item, in mark order; an item without a vector makes the user an error
row, never a prompt whose later marks read their neighbours' slots."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from recgpt import adaptor as A
from recgpt.config import load_config
from recgpt.llm.engine import Engine, RetryPolicy
from recgpt.llm.render import PromptRenderer
from recgpt.llm.request import EMBED_MARK
from tests.llm_support import ScriptedBackend, llm_config
from udfs import llm
from udfs.mining import MiningPlan, mining_stage, user_input, vectors_in_mark_order

DIM, HIDDEN = 8, 576


def vector(seed: int) -> list[float]:
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32).tolist()


ITEM_VECTORS = {"i0": vector(0), "i1": vector(1), "i2": vector(2)}


def context_row(user: str, ids: list[str], vectors: list[list[float] | None]) -> dict:
    marks = "; ".join([EMBED_MARK] * len(ids))
    return {
        "user_id": user,
        "history": f"2025-10-27 (viewed {len(ids)}) | {marks}",
        "entity_ids": ids,
        "vectors": vectors,
        "age": 30,
        "gender": "f",
        "region": "north",
        "occupation": "nurse",
        "season": "autumn",
        "weather": "cool",
        "festivals": [],
        "trends": [],
        "bought_titles": [],
    }


@pytest.fixture(scope="module")
def adaptor():
    return A.build_adaptor(DIM, 16, HIDDEN, 1.0)


def test_vectors_follow_the_marks_order_with_a_null_for_a_missing_item(spark):
    contexts = spark.createDataFrame(
        [("u1", ["i2", "i0", "i2"]), ("u2", ["i1", "i9"]), ("u3", [])],
        "user_id string, entity_ids array<string>",
    )
    vectors = spark.createDataFrame(list(ITEM_VECTORS.items()), "item_id string, embedding array<float>")
    got = {r.user_id: r.vectors for r in vectors_in_mark_order(contexts, vectors).collect()}
    assert set(got) == {"u1", "u2"}  # no entities, no row (mining_inputs fills an empty list)
    np.testing.assert_allclose(
        got["u1"], [ITEM_VECTORS["i2"], ITEM_VECTORS["i0"], ITEM_VECTORS["i2"]], rtol=1e-6
    )
    assert got["u2"][1] is None
    np.testing.assert_allclose(got["u2"][0], ITEM_VECTORS["i1"], rtol=1e-6)


def test_one_slot_per_mark_in_order_and_a_missing_vector_is_an_error(adaptor):
    ids = ["i2", "i0", "i2"]
    row = context_row("u1", ids, [ITEM_VECTORS[i] for i in ids])
    user = user_input(row, "hybrid", adaptor, core_words=6)
    expected = A.entity_vectors(adaptor, np.asarray([ITEM_VECTORS[i] for i in ids], dtype=np.float32))
    assert [e.shape for e in user.embeds] == [(1, HIDDEN)] * 3
    np.testing.assert_allclose(np.vstack(user.embeds), expected, rtol=1e-6)
    assert user.item_ids == tuple(ids)  # grounding reads the same items

    missing = context_row("u2", ["i1", "i9"], [ITEM_VECTORS["i1"], None])
    with pytest.raises(ValueError, match="1 of 2 context items have no embedding"):
        user_input(missing, "hybrid", adaptor, core_words=6)
    # The text form has no slots: the same user mines, only without evidence grounding.
    text = user_input({**missing, "history": "2025-10-27 (viewed 2) | boots; socks"}, "text", adaptor, 6)
    assert text.embeds == () and text.item_ids == () and text.item_vectors is None


def test_through_the_runner_slots_reach_the_prompt_in_order_and_a_bad_user_is_an_error_row(adaptor, tmp_path):
    cfg = load_config(["run.stage=test"])
    folder = A.save(
        adaptor,
        tmp_path,
        {
            "data_hash": "x",
            "llm": "m",
            "llm_hidden": HIDDEN,
            "embedding_model": "e",
            "embedding_dim": DIM,
            "config": {"hidden": 16},
        },
    )
    plan = MiningPlan(
        pipeline="v2",
        mode="hybrid",
        agents=OmegaConf.to_container(cfg.pipeline.agents, resolve=True),
        embedding=OmegaConf.to_container(cfg.embedding, resolve=True),
        brands=[],
        adaptor_folder=str(folder),
        core_words=6,
    )
    stage = mining_stage(plan, llm_config(), {"batch_users": 8})
    # No persona: the general persona's Expert follows, reading the hybrid history too.
    backend = ScriptedBackend(['{"personas": []}', '{"tags": []}'])
    lm = llm_config()
    engine = Engine(
        backend, PromptRenderer(lm["model_path"], int(lm["max_model_len"])), RetryPolicy(attempts=1)
    )
    rows = [
        context_row("u1", ["i2", "i0"], [ITEM_VECTORS["i2"], ITEM_VECTORS["i0"]]),
        context_row("u2", ["i1", "i9"], [ITEM_VECTORS["i1"], None]),
    ]
    out = {r["key"]: r for r in llm.run_rows(rows, stage, stage.build(engine), engine.model, "e")}

    assert out["u2"]["error"] == "bad_request: 1 of 2 context items have no embedding"
    assert out["u2"]["calls"] == [] and out["u2"]["tags"] is None
    # u1 reached the planner, then the general persona's Expert; both prompts' embedding rows hold
    # the two slots, i2's before i0's.
    assert [c["step"] for c in out["u1"]["calls"]] == ["planner", "expert"]
    assert len(backend.calls) == 2
    slots = A.entity_vectors(adaptor, np.asarray([ITEM_VECTORS["i2"], ITEM_VECTORS["i0"]], dtype=np.float32))
    for call in backend.calls:
        prompt = call.rendered.embeds.float().numpy()
        positions = [int(np.argmin(np.abs(prompt - slot).sum(axis=1))) for slot in slots]
        for slot, pos in zip(slots, positions, strict=True):
            np.testing.assert_allclose(prompt[pos], slot, atol=1e-2)  # bf16/fp32 rounding of the prompt rows
        assert positions[0] < positions[1]
