"""Progress lines for long loops on the driver: done/total, rate, elapsed and time left, at most
every `interval_s` seconds (and once at the end), so a long stage never looks stuck."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Ticker:
    """Counts a loop's progress; its lines go to `emit` (stderr when None)."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "items",
        interval_s: float = 30.0,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.interval_s = interval_s
        self.emit = emit or _stderr
        self.done = 0
        self.started = self.last = time.perf_counter()

    def line(self, note: str = "") -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.done / elapsed
        text = f"[{self.label}] {self.done:,}/{self.total:,} {self.unit} · {rate:,.2f}/s · {elapsed:,.0f}s"
        if 0 < self.done < self.total:
            text += f" · ~{(self.total - self.done) / rate:,.0f}s left"
        return f"{text} · {note}" if note else text

    def advance(self, n: int = 1, note: str = "") -> None:
        """Count `n` more done; print a line when the interval has passed or all are done."""
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.interval_s or self.done >= self.total:
            self.last = now
            self.emit(self.line(note))
