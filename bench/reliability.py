"""Reliability drills, all of them: a killed Spark worker, a killed engine, two runs of one date,
a full disk mid-commit, fuzzed input for every loader and hostile text through the real model.
Prints one row per drill and writes bench/results/reliability.json.

    make drills
    python -m bench.reliability --drills fuzz,disk [--cases 50] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.drills import DrillResult
from bench.machine import RESULTS, write_result

# Drill name -> module under bench.drills, in the order they run.
DRILLS = {
    "workers": "bench.drills.workers",
    "engine": "bench.drills.engine",
    "concurrent": "bench.drills.concurrent",
    "disk": "bench.drills.disk",
    "fuzz": "bench.drills.fuzz",
    "hostile": "bench.drills.hostile",
}
COLUMNS = (
    "cases",
    "rows_in",
    "rows_written",
    "rows_quarantined",
    "rows_lost",
    "duplicates",
    "schema_breaks",
    "leaks",
    "seconds",
)


def run_drills(names: list[str], workdir: Path, cases: int | None) -> list[DrillResult]:
    results: list[DrillResult] = []
    for name in names:
        module = importlib.import_module(DRILLS[name])
        started = time.perf_counter()
        try:
            found = module.run(workdir / name, cases=cases)
        except Exception as exc:  # a drill that crashes is a failed drill, and the others still run
            found = [DrillResult(name, failures=[f"the drill crashed: {type(exc).__name__}: {exc}"])]
        for result in found:
            if not result.seconds:
                result.seconds = round(time.perf_counter() - started, 1)
            print(_row(result), flush=True)
        results.extend(found)
    return results


def merged(results: list[DrillResult], names: list[str], cases: int | None) -> dict[str, Any]:
    """The result file with this run's drills replacing their earlier rows; drills not run this
    time keep their latest rows, each dated, so one file holds the latest figure of every drill."""
    today = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    rows = [{**r.as_dict(), "date": today, "cases_asked": cases or "full"} for r in results]
    path = RESULTS / "reliability.json"
    earlier = json.loads(path.read_text()).get("drills", []) if path.exists() else []
    kept = [r for r in earlier if r["drill"].split(".")[0] not in names]
    order = list(DRILLS)
    drills = sorted(kept + rows, key=lambda r: (order.index(r["drill"].split(".")[0]), r["drill"]))
    return {"drills": drills, "passed": all(r["passed"] for r in drills)}


def _row(r: DrillResult) -> str:
    figures = "  ".join(f"{c}={getattr(r, c)}" for c in COLUMNS)
    verdict = "PASS" if r.passed else "FAIL: " + "; ".join(r.failures or ["lost/duplicated/leaked rows"])
    return f"{r.drill:<28} {figures}  {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--drills", default=",".join(DRILLS), help="comma-separated subset of " + ", ".join(DRILLS)
    )
    parser.add_argument("--cases", type=int, default=None, help="cases per drill (default: the full drill)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.drills.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DRILLS))
    if unknown:
        parser.error(f"unknown drill(s) {unknown}: choose from {list(DRILLS)}")
    with tempfile.TemporaryDirectory(prefix="drills-") as tmp:
        workdir = args.workdir or Path(tmp)
        results = run_drills(names, workdir, args.cases)
    path = write_result("reliability", merged(results, names, args.cases))
    print(f"wrote {path}")
    if not all(r.passed for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
