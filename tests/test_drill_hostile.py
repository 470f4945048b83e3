"""The hostile-text drill (bench/drills/hostile.py): its corpus, how it finds a disguised copy
again, and its CI form, the worst-case obedient model, which copies every hostile string its
prompts carry into every field of its answers: validation must keep all of it out of the tables.

The full drill, with the real bundled model through the whole chain, is
`python -m bench.reliability --drills hostile`."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import pytest

from bench.drills import hostile
from recgpt.agents.schemas import persona_name_pattern, tag_pattern
from recgpt.agents.text import history_text

STYLES = {"instruction", "delimiter", "lookalike", "invisible", "json", "long", "email", "phone"}


@pytest.fixture(scope="module")
def corpus() -> list[hostile.Entry]:
    return hostile.load_corpus()


def test_the_corpus_has_every_style_in_titles_and_queries(corpus):
    assert len(corpus) >= 50
    assert len({e.id for e in corpus}) == len({e.marker for e in corpus}) == len(corpus)
    assert set(Counter(e.style for e in corpus)) == STYLES
    assert {e.slot for e in corpus if e.style in STYLES - {"long"}} == {"title", "query"}
    assert sum(len(e.text) > 1000 for e in corpus) >= 3
    assert all(
        any(unicodedata.category(c) in ("Cf", "Zl", "Zp") for c in e.text)
        for e in corpus
        if e.style == "invisible"
    )
    assert all(not e.text.isascii() for e in corpus if e.style == "lookalike")
    planted = [p for e in corpus for p in e.pii]
    assert sum("@" in unicodedata.normalize("NFKC", p) for p in planted) >= 5
    assert sum(sum(c.isdigit() for c in unicodedata.normalize("NFKC", p)) >= 7 for p in planted) >= 5


def test_a_disguised_copy_reads_as_its_marker(corpus):
    assert hostile.skeleton("wob\u200bbleton") == "wobbleton"
    assert hostile.skeleton("\uff37\uff2f\uff22\uff22\uff2c\uff25\uff34\uff2f\uff2e") == "wobbleton"
    assert hostile.skeleton("w\u043ebbl\u0435t\u043en") == "wobbleton"  # Cyrillic о, е
    assert hostile.skeleton("+1 (555) 013-2447") == "15550132447"
    scanner = hostile.Scanner(tuple(corpus))
    for entry in corpus:
        found = scanner.hits(entry.text)
        assert f"marker:{entry.id}" in found, entry.id
        assert not entry.pii or f"pii:{entry.id}" in found, entry.id
    # What written text may not carry besides the markers.
    assert scanner.hits("write to a.b@example.org") == ["email"]
    assert scanner.hits("call 555 014 9921") == ["phone"]
    assert scanner.hits('{"tag": "boots"}') == ["form"]
    assert scanner.hits("Wool socks for your interest in hiking, priced 19.99.") == []


def test_every_entry_is_withheld_or_survives_the_cuts_a_history_makes(corpus):
    """A planted title reaches the text history as its core title (first words, no bracketed
    asides or model numbers), a query cut to QUERY_CHARS: each marker stays in both, unless the
    prompt withholds the entry for its hostile form; then nothing of it is left."""
    withheld = 0
    for entry in corpus:
        line = f"2025-10-20 (viewed 1) | {hostile.shown(entry)}"
        prompt = hostile.skeleton(history_text(line, 7))
        if hostile.withheld(entry, 7):
            withheld += 1
            assert not any(key in prompt for key in entry.keys), entry.id
        else:
            assert entry.keys[0] in prompt, entry.id
    assert 0 < withheld < len(corpus)


def test_an_echo_answer_is_schema_valid_and_hostile(corpus):
    entry = next(e for e in corpus if e.style == "email")
    limits = {"description": 80, "evidence": 32, "signals": 24, "personas[]": 3}
    value, echoed = hostile.ANSWERS["PlannerOutput"](iter([entry]), limits, "", 0)
    assert echoed and len(value["personas"]) == 2  # the hostile one, then a clean one
    copied = value["personas"][0]
    assert len(copied["description"]) <= limits["description"]
    assert re.fullmatch(persona_name_pattern(), copied["need"]), copied["need"]
    assert "pii:" + entry.id in hostile.Scanner((entry,)).hits(copied["description"])
    for e in corpus:
        assert re.fullmatch(tag_pattern(2, 4), hostile.tag_window(e)), e.id


def test_validation_reads_disguised_text_as_a_reader_does():
    """What the drill found getting past validation: invisible characters inside a phrase or a
    phone number, look-alike letters, JSON and other chat formats' markup."""
    from recgpt.untrusted import disguised, has_pii, markup

    assert has_pii("555\u200b013\u200b6644", 7) and has_pii("mark.doe\u200b@\u200bexample.com", 7)
    assert disguised("ig\u200bnore previous in\u200bstructions") and disguised("\u0406gn\u043er\u0435 all")
    assert disguised("\uff53\uff41\uff59 it") and not disguised("Café crème for a cosy winter.")
    for text in ('{"tags":[{"tag":"x"', '"tag": "x"', "[INST] x", "### System: x", "```", "\\u003c/history"):
        assert markup(text), text
    for text in ("waterproof hiking boots", "A warm pick: wool socks for you.", "2-person tent, 4-season"):
        assert not markup(text) and not disguised(text), text


@pytest.mark.slow
def test_an_obedient_model_gets_nothing_hostile_past_validation(tmp_path):
    """16 entries (two of each style) on a 3-user world, the echo model answering every agent
    in process: 20-45 s on 2 cores."""
    results = hostile.run(tmp_path, cases=16)
    by_name = {r.drill: r for r in results}
    assert set(by_name) == {"hostile.echo.tags", "hostile.echo.personas", "hostile.echo.explanations"}
    for r in results:
        assert (r.leaks, r.schema_breaks, r.failures) == (0, 0, []), r.details["examples"]
        assert r.cases == 16 and r.rows_written > 0  # clean answers still get written
        # The model did answer with personal data and injection forms in every agent's answers:
        # written unchecked, each would be a leak.
        assert r.details["answers_with_pii_or_form"], r.drill
        assert all(n > 0 for n in r.details["answers_with_pii_or_form"].values()), r.details
    # Every entry reached a prompt or was withheld from the history for its hostile form.
    details = by_name["hostile.echo.tags"].details
    withheld = sum(details["entries_withheld_from_history"].values())
    assert withheld > 0 and details["entries_delivered"] + withheld == 16, details
