"""Reliability drills: the faults a nightly batch job really meets, run for real and counted.

Each drill module has `run(workdir: Path, cases: int | None = None) -> list[DrillResult]`: it
builds its own world under `workdir`, injects its fault, and counts what happened. `cases=None`
is the full drill (`make drills`); tests pass a small number for the reduced form CI runs.
`bench.reliability` runs them all and writes bench/results/reliability.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class DrillResult:
    """What one drill tried and what came out. `rows_lost`, `duplicates`, `schema_breaks` and
    `leaks` must all be 0; `failures` lists anything else the drill found wrong (a crash, an
    unclear error, a table that moved), each as one sentence."""

    drill: str
    cases: int = 0
    rows_in: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    rows_lost: int = 0
    duplicates: int = 0
    schema_breaks: int = 0
    leaks: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not (self.rows_lost or self.duplicates or self.schema_breaks or self.leaks or self.failures)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}
