"""Progress lines of long driver loops: rate and time left while running, one line at the end."""

from __future__ import annotations

from recgpt.progress import Ticker


def test_lines_come_at_most_every_interval_and_once_at_the_end():
    lines: list[str] = []
    quiet = Ticker("train", 4, "steps", interval_s=3600, emit=lines.append)
    for _ in range(4):
        quiet.advance(note="loss 1.0")
    assert len(lines) == 1 and lines[0].startswith("[train] 4/4 steps · ") and lines[0].endswith("· loss 1.0")
    assert "left" not in lines[0]

    lines.clear()
    chatty = Ticker("teacher", 10, "answers", interval_s=0, emit=lines.append)
    chatty.advance(4)
    assert lines[-1].startswith("[teacher] 4/10 answers · ") and "s left" in lines[-1]
    chatty.advance(6)
    assert len(lines) == 2 and lines[-1].startswith("[teacher] 10/10 answers")
