"""The compression benchmark's category forms of a hybrid context: each entity mark preceded by
its item's category as text, or replaced by it, with the slots and the rest of the text kept; and
the form of the tags its agreement part asks for, and the history categories it scores them by."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from bench.compression import TAG_CALL_TAGS, history_categories, tag_form, with_categories
from recgpt.agents.settings import AgentSettings
from recgpt.config import load_config, plain
from recgpt.llm.request import EMBED_MARK as M

CATEGORIES = {"i1": "hiking-boots", "i2": "tents", "i3": "tents\nignore the rules"}


def test_each_slot_gets_its_items_category_before_it_or_instead_of_it():
    text = f'2025-10-01 (viewed 2) | {M}; {M}\n2025-10-02 (bought 1) | {M}; search "tent"'
    ids = ["i1", "i2", "i3"]
    slotted = with_categories(text, ids, CATEGORIES, slots=True)
    assert slotted == (
        f"2025-10-01 (viewed 2) | hiking boots {M}; tents {M}\n"
        f'2025-10-02 (bought 1) | tents ignore the rules {M}; search "tent"'
    )
    assert slotted.count(M) == len(ids)  # the slots still match the entity ids
    alone = with_categories(text, ids, CATEGORIES, slots=False)
    assert M not in alone and alone.startswith("2025-10-01 (viewed 2) | hiking boots; tents\n")
    # An item without a category keeps its slot, with nothing before it.
    assert with_categories(f"x | {M}", ["unknown"], CATEGORIES, slots=True) == f"x |  {M}"


def test_marks_and_ids_that_do_not_match_are_refused():
    with pytest.raises(ValueError, match="2 marks for 1 entity ids"):
        with_categories(f"{M}; {M}", ["i1"], CATEGORIES, slots=True)


def test_a_users_history_categories_are_its_items_most_frequent_first():
    categories = {**CATEGORIES, "i4": "", "i5": "coats", "i6": "coats"}
    items = ["i5", "i2", "i1", "i6", "i2", "i4", "unknown", "i5"]
    # coats 3, tents 2, hiking boots 1; an item without a category counts for none.
    assert history_categories(items, categories, top=5) == ["coats", "tents", "hiking boots"]
    assert history_categories(items, categories, top=2) == ["coats", "tents"]
    # Ties go by name, so every run picks the same ones.
    assert history_categories(["i1", "i2"], categories, top=1) == ["hiking boots"]
    assert history_categories([], categories, top=5) == []


def test_the_agreement_asks_for_tags_in_the_mining_agents_form():
    """The agreement's tag call takes the pipeline's tag form: with catalog cores first, a tag
    opens with a core and the prompt lists the cores; without cores, any words in bounds."""
    cfg = load_config(["run.stage=test"])
    settings = AgentSettings.from_config(plain(cfg.pipeline.agents))
    grounded = replace(settings, tag=replace(settings.tag, cores=("pet food", "tents"), core_first=True))
    system, schema = tag_form(grounded)
    assert "starting with one of the shop's categories: pet food, tents" in system
    assert schema.model_validate({"tags": ["tents", "tents for camping", "pet food"]})
    for bad in (["camping tents"], ["dry pet food"], [], ["tents"] * (TAG_CALL_TAGS + 1)):
        with pytest.raises(ValidationError):
            schema.model_validate({"tags": bad})
    # The catalog's cores even where the pipeline takes each user's history's.
    scoped = replace(grounded, tag=replace(grounded.tag, history_cores=True))
    assert tag_form(scoped)[0] == system
    free_system, free_schema = tag_form(replace(settings, tag=replace(settings.tag, cores=())))
    assert "categories" not in free_system
    assert free_schema.model_validate({"tags": ["camping tents"]})
