"""The fuzzed-input drill in its reduced form (one generated file per loader and the few
whole-file cases marked for CI), a hand-made file through the real ingest, and the drill's own
checks against outcomes where a row went missing or a bad one got through."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.drills import fuzz

CASES = 120


@pytest.mark.slow
def test_the_reduced_drill_loses_nothing_and_crashes_nowhere(spark, tmp_path):
    results = fuzz.run(tmp_path, cases=CASES, spark=spark)
    by_name = {r.drill: r for r in results}
    loaders = [f"fuzz.{name}" for name in fuzz.LOADERS]
    assert list(by_name) == [*loaders, "fuzz.whole_files"]
    for r in results:
        assert r.failures == [], r.drill
        assert r.rows_lost == 0 and r.duplicates == 0 and r.passed, r.drill
    for name in loaders:
        r = by_name[name]
        assert r.cases >= CASES
        # Both ends of the pipe ran: good rows were written and bad ones quarantined.
        assert r.rows_written > 0 and r.rows_quarantined > 0
        assert r.rows_in == r.rows_written + r.rows_quarantined
        faults = sum(n for kind, n in r.details["kinds"].items() if kind != "good")
        assert faults >= CASES // 4, r.details["kinds"]
    assert by_name["fuzz.whole_files"].cases == sum(c.ci for c in fuzz.WHOLE_FILES)


def _taobao(kind: str, verdict: str, reason: str = "", **fields: str | bytes) -> fuzz.Record:
    good = {
        "user_id": fuzz.Slot.TAG,
        "item_id": "P1",
        "category_id": "C1",
        "behavior_type": "pv",
        "ts": "1511544070",
    }
    return fuzz.Record("behaviors", kind, verdict, good | fields, reason=reason)


HAND_MADE = (
    _taobao("good", fuzz.GOOD),
    _taobao("good, padded", fuzz.GOOD, behavior_type="  buy "),
    _taobao("unknown behavior", fuzz.BAD, "unknown behavior", behavior_type="clk"),
    _taobao("ts overflows", fuzz.BAD, "unparseable ts", ts="99999999999999"),
    _taobao("ts too early", fuzz.BAD, "ts before 1995-01-01", ts="-5"),
    _taobao("broken utf-8", fuzz.BAD, "invalid characters", item_id=b"P1\xff"),
    _taobao("unclosed quote", fuzz.BAD, "a quoted field is not closed", item_id='"P1'),
    _taobao("trailing empty field", fuzz.BAD, "more fields than the 5 expected", ts="1511544070,"),
)


@pytest.mark.slow
def test_hand_made_bad_records_land_in_quarantine_with_their_reason(spark, tmp_path):
    loader = fuzz.LOADERS["taobao"]()
    layout = loader.layouts[0]
    placed = fuzz.place(loader, layout, HAND_MADE)
    fuzz.write_files(tmp_path / "src", layout, placed)
    outcome = fuzz.ingest(spark, tmp_path / "wh", layout.overrides(tmp_path / "src"))
    tally = fuzz.Tally()
    fuzz.check_file(loader, layout, "hand-made", placed, tmp_path / "src", outcome, tally)
    assert outcome.error is None and tally.failures == []
    reasons = {p.record.kind: [] for p in placed}
    for q in outcome.quarantine:
        for p in placed:
            if p.tag and p.tag in q["raw"]:
                reasons[p.record.kind].append(q["reason"])
    for record in HAND_MADE:
        if record.verdict == fuzz.BAD:
            assert any(record.reason in r for r in reasons[record.kind]), (record.kind, reasons[record.kind])
    assert sorted(row["behavior"] for row in outcome.written["behaviors"]) == ["purchase", "view", "view"]


def _checked(placed: list[fuzz.Placed], src: Path, outcome: fuzz.Outcome) -> list[str]:
    loader = fuzz.LOADERS["taobao"]()
    tally = fuzz.Tally()
    fuzz.check_file(loader, loader.layouts[0], "f", placed, src, outcome, tally)
    return tally.failures


def test_the_drill_fails_when_a_row_is_lost_or_a_bad_one_gets_through(tmp_path):
    loader = fuzz.LOADERS["taobao"]()
    layout = loader.layouts[0]
    records = (
        _taobao("good", fuzz.GOOD),
        _taobao("unknown behavior", fuzz.BAD, "unknown behavior", behavior_type="x"),
    )
    placed = fuzz.place(loader, layout, records)
    fuzz.write_files(tmp_path, layout, placed)
    anchor, good, bad = (p.tag for p in placed)

    def outcome(written: list[str], quarantined: list[tuple[str, str]]) -> fuzz.Outcome:
        return fuzz.Outcome(
            written={"behaviors": [{"user_id": tag} for tag in written]},
            quarantine=[
                {"table_name": "behaviors", "raw": f"{tag},P1", "reason": r} for tag, r in quarantined
            ],
        )

    right = outcome([anchor, good], [(bad, "unknown behavior")])
    assert _checked(placed, tmp_path, right) == []
    through = _checked(placed, tmp_path, outcome([anchor, good, bad], []))
    assert any("'unknown behavior' built bad but written" in f for f in through)
    lost = _checked(placed, tmp_path, outcome([anchor], [(bad, "unknown behavior")]))
    assert any("3 rows in, 1 written + 1 quarantined" in f for f in lost)
    assert any("'good' built good written 0 times" in f for f in lost)
    wrong_reason = _checked(placed, tmp_path, outcome([anchor, good], [(bad, "missing ts")]))
    assert any("quarantined without 'unknown behavior'" in f for f in wrong_reason)
    stray = _checked(placed, tmp_path, outcome([anchor, good, "someone"], [(bad, "unknown behavior")]))
    assert any("written rows that match no generated record" in f for f in stray)


def test_rows_in_are_counted_from_the_bytes_as_spark_splits_lines(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b"h1,h2\r\na,b\rc,d\n\n  \n\x01\x02\ne,f")
    # CRLF, CR and LF end lines; blank and control-only lines hold no row; the header is not a row.
    assert fuzz.rows_in(path, json_lines=False, header=True) == 3
    path.write_bytes(b'{"a": 1}\n\t\n\x0b\n[]\n')
    assert fuzz.rows_in(path, json_lines=True, header=False) == 3
    assert fuzz.batch_sizes(1000) == [250] * 4 and fuzz.batch_sizes(120) == [120]
    assert fuzz.batch_sizes(251) == [126, 125]
