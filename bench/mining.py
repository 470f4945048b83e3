"""Mining benchmark: the real mine_intents stage (V2 planner -> experts -> arbiter, hybrid context,
the real vLLM engine) on a small synthetic world — users per hour on this machine, the chain's LLM
tokens/s against plain `vllm.LLM.generate` on exactly the same requests, and where the stage's wall
time goes besides generation.

    make bench-mining [ARGS="--users 24"]
    python -m bench.mining --users 8 --warehouse /tmp/mining-world   # prepared once, reused after

How, and why so:
- The world is the demo profile (conf/profile/demo.yaml: quick adaptor, eager engine, one task per
  core) with `--users` users, prepared by `jobs.nightly` limited to the stages mining reads
  (ingest, embed_items, compress, train_adaptor; covisit feeds recall, not mining). A
  `--warehouse` that already holds user_context and the demo adaptor is reused as it is, so a
  prepared world is not rebuilt for every measurement.
- The stage runs as its entry point runs it (jobs.stage `open_context` + `execute` of
  jobs.mine_intents `run`), but in this process, so light wrappers can time its phases (plan,
  inputs, waves, tables, ledger, report) without a line changed in the job. Its engine is the real
  one: a vLLM server started by the stage's first task, in a state dir of this run's own (never a
  server of another job on the machine), stopped when the stage is done.
- The requests: `llm.capture_requests` (recgpt/llm/capture.py) appends every call the engine
  layer sends — token ids or the hybrid input embeddings, sampling settings, output schema — with
  its batch and timing, one file per Spark task. Rebuilding prompts from the tables instead would
  miss the repair rounds and the context truncation. Serializing costs a little time per batch;
  it is measured and shown as its own line of the split.
- Raw vLLM replays the capture in a separate process once the stage's Spark (JVM included) and
  engine are gone, so nothing else of this run holds the cores: `vllm.LLM` with the same engine
  args, and batch k of every task of a wave in ONE `generate` call (tasks hold different users, so
  their k-th batches are independent; batch k+1 of a task carries answers to batch k, so it
  waits). That is every task moving through the steps in lockstep, without HTTP, Spark or the
  agents' own work. The chain's tasks do not wait for each other, so one task's Experts may share
  the engine with another's planner repairs: a ratio above 1 says the step barriers, not the
  engine layer, set the pace. `engine_concurrency` shows how full the engine was (mean requests
  in flight, seconds with a single request: a step waiting for its slowest answer).
- Tokens/s: generated (and prompt + generated) tokens of the `llm_calls` ledger over the waves'
  wall time minus the engine start (the stage's LLM throughput as the night sees it); also over
  the time at least one request was in flight. Raw: the same over the summed `generate` time.
- The split: every instant of the stage is given to one thing. Outside the waves, the wrapped
  phases. Inside, by precedence: engine start (the server's start log), a request in flight
  (capture), the capture's own serialization, agent work between a task's requests (parsing,
  validation, MiniLM embeddings, rendering the next step), task setup before its first request
  (embedder, adaptor, validation context, users prepared, first prompts rendered), and the rest
  before the first or after the last engine call (Spark job start, input exchange, post-arbiter
  checks and grounding, outcome rows, staging write). The largest line that is not generation is
  named in the results.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STAGE = "mine_intents"
# The stages whose tables mine_intents reads (users, behaviours, items, env signals; embeddings;
# user_context; the adaptor artifact).
PREP_STAGES = "[ingest,embed_items,compress,train_adaptor]"
Interval = tuple[float, float]


# -- the world ------------------------------------------------------------------------------------


def world_overrides(users: int, warehouse: Path, state: Path, extra: Iterable[str]) -> list[str]:
    return [
        "+profile=demo",
        f"data.users={users}",
        f"storage.warehouse={warehouse}",
        f"llm.server.state_dir={state}",
        *extra,
    ]


def world_ready(warehouse: Path, adaptor_dir: str) -> bool:
    adaptors = Path(adaptor_dir)
    return (
        (warehouse / "user_context" / "_delta_log").is_dir() and adaptors.is_dir() and any(adaptors.iterdir())
    )


def prepare_world(dt: str, overrides: list[str], log: Path) -> float:
    """The chain up to mining, as `make run` runs it; seconds taken."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "jobs.nightly",
                f"run.dt={dt}",
                f"pipeline.stages={PREP_STAGES}",
                *overrides,
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise SystemExit(f"preparing the world failed (exit {proc.returncode}), log {log}:\n{tail}")
    return time.perf_counter() - started


# -- the stage, timed ------------------------------------------------------------------------------


class PhaseClock:
    """Wall-clock spans (epoch seconds) of named functions while installed; driver side only."""

    def __init__(self) -> None:
        self.spans: dict[str, list[Interval]] = {}
        self._installed: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                self.spans.setdefault(name, []).append((started, time.time()))

        setattr(owner, attr, timed)
        self._installed.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._installed):
            setattr(owner, attr, original)
        self._installed.clear()

    def seconds(self, name: str) -> float:
        return sum(b - a for a, b in self.spans.get(name, []))

    def window(self, name: str) -> Interval:
        spans = self.spans[name]
        return spans[0][0], spans[-1][1]


def run_stage(cfg: Any, clock: PhaseClock) -> dict[str, Any]:
    """mine_intents as its entry point runs it, phases timed; the ledger and the users mined."""
    from pyspark.sql import functions as F

    from bench.engine import PeakRSS
    from jobs import mine_intents
    from jobs.stage import execute, open_context
    from recgpt.tables import LLM_CALLS
    from udfs.waves import Waves

    started = time.time()
    ctx = open_context(cfg, STAGE)
    session_s = time.time() - started
    for name in (
        "plan_for",
        "scoped_inputs",
        "open_waves",
        "mine_waves",
        "write_tables",
        "record_llm",
        "report",
    ):
        clock.wrap(mine_intents, name, name)
    clock.wrap(Waves, "run", "waves")
    clock.wrap(mine_intents, "run", "run")
    try:
        with PeakRSS() as rss:
            started = time.time()
            execute(ctx, mine_intents.run)
            clock.spans["stage"] = [(started, time.time())]
        clock.restore()
        stage_name = f"{STAGE}.{cfg.pipeline.name}.{cfg.context.mode}"
        ledger = [
            r.asDict()
            for r in ctx.warehouse.read(LLM_CALLS, dt=ctx.dt)
            .where((F.col("stage") == stage_name) & (F.col("run_id") == ctx.lineage.run_id))
            .select(
                "request_key",
                "prompt_tokens",
                "cached_prompt_tokens",
                "generated_tokens",
                "attempts",
                "error",
            )
            .collect()
        ]
        report = ctx.report
        return {
            "session_s": session_s,
            "ledger": ledger,
            "tagged": report.rows_out or 0,
            "failed": report.rows_quarantined or 0,
            "peak_pss_mb": rss.mb,
        }
    finally:
        clock.restore()
        from recgpt.config import plain
        from recgpt.llm.server import stop_server

        stop_server(plain(cfg.llm))
        ctx.spark.stop()
        stop_jvm()


def stop_jvm() -> None:
    """End this process's Spark JVM (spark.stop() leaves it idle, holding ~2 GB) before the raw
    baseline runs: its gateway exits when its stdin closes."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    if gateway is None or proc is None:
        return
    gateway.shutdown()
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=30)
    SparkContext._gateway = None
    SparkContext._jvm = None


# -- the capture ---------------------------------------------------------------------------------


def load_tasks(folder: Path, with_prompts: bool = False) -> list[dict[str, Any]]:
    """The captured calls of each Spark task: its wave (Spark stage id), partition and records
    (without the prompts unless asked: hybrid ones are large)."""
    tasks = []
    for path in sorted(folder.glob("*.jsonl")):
        match = re.match(r"stage(\d+)-part(\d+)-attempt(\d+)", path.stem)
        records = []
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if not with_prompts:
                    record.pop("embeds", None)
                    record.pop("token_ids", None)
                records.append(record)
        tasks.append(
            {
                "file": path.name,
                "wave": int(match.group(1)) if match else -1,
                "part": int(match.group(2)) if match else 0,
                "records": records,
            }
        )
    return tasks


def replay_groups(tasks: list[dict[str, Any]]) -> list[tuple[int, int, list[dict[str, Any]]]]:
    """(wave, k, calls): batch k of every task of a wave, waves and k in order."""
    groups = []
    for wave in sorted({t["wave"] for t in tasks}):
        mine = sorted((t for t in tasks if t["wave"] == wave), key=lambda t: t["part"])
        batches = max((r["batch"] for t in mine for r in t["records"]), default=-1) + 1
        for k in range(batches):
            calls = [
                r for t in mine for r in sorted(t["records"], key=lambda r: r["index"]) if r["batch"] == k
            ]
            if calls:
                groups.append((wave, k, calls))
    return groups


def merged(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(i for i in intervals if i[1] > i[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def attribute(
    window: Interval, layers: list[tuple[str, list[Interval]]], rest: Callable[[float], str]
) -> dict[str, float]:
    """Seconds of `window` per label: each instant goes to the first layer covering it, else to
    `rest(instant)`."""
    layers = [(label, merged(spans)) for label, spans in layers]
    cuts = sorted(
        {
            window[0],
            window[1],
            *(x for _, spans in layers for s in spans for x in s if window[0] < x < window[1]),
        }
    )
    seconds: dict[str, float] = {label: 0.0 for label, _ in layers}
    for a, b in itertools.pairwise(cuts):
        mid = (a + b) / 2
        label = next((lab for lab, spans in layers if any(s <= mid < e for s, e in spans)), None) or rest(mid)
        seconds[label] = seconds.get(label, 0.0) + (b - a)
    return seconds


def waves_split(
    window: Interval, tasks: list[dict[str, Any]], starts: list[dict[str, Any]]
) -> dict[str, float]:
    """The LLM waves' wall time, attributed (see the module docstring)."""
    engine = [(s["at"] - s["start_seconds"], s["at"]) for s in starts]
    flight, capture, between, setup = [], [], [], []
    for task in tasks:
        batches: dict[int, dict[str, Any]] = {}
        for r in task["records"]:
            batches.setdefault(r["batch"], r)
        if not batches:
            continue
        ordered = [batches[k] for k in sorted(batches)]
        flight += [(b["sent_at"], b["done_at"]) for b in ordered]
        capture += [(b["sent_at"] - b["capture_s"], b["sent_at"]) for b in ordered]
        first = ordered[0]["sent_at"] - ordered[0]["capture_s"]
        between.append((first, ordered[-1]["done_at"]))
        setup.append((ordered[0]["created_at"], first))
    calls = [x for span in flight for x in span]
    first_call, last_call = (min(calls), max(calls)) if calls else (window[1], window[1])

    def rest(instant: float) -> str:
        if instant < first_call:
            return "waves: before the first engine call (Spark job start, input exchange, workers)"
        if instant >= last_call:
            return (
                "waves: after the last engine call (arbiter checks, grounding, outcome rows, staging write)"
            )
        return "waves: between tasks or waves (Spark)"

    return attribute(
        window,
        [
            ("engine start (vLLM server)", engine),
            ("LLM requests in flight", flight),
            ("request capture (benchmark only)", capture),
            ("agent work between requests (parse, validate, embed, render)", between),
            ("task setup before its first request (embedder, adaptor, prepare, render)", setup),
        ],
        rest,
    )


def concurrency(tasks: list[dict[str, Any]]) -> dict[str, float]:
    """How full the engine was while it had work: mean requests in flight (each from its batch's
    send to its own latency) and the seconds with exactly one request running (a step's tail)."""
    events = []
    for task in tasks:
        for r in task["records"]:
            events += [(r["sent_at"], 1), (r["sent_at"] + (r.get("latency_ms") or 0.0) / 1000, -1)]
    busy = alone = weighted = 0.0
    running, last = 0, None
    for at, step in sorted(events):
        if last is not None and running:
            busy += at - last
            weighted += (at - last) * running
            alone += (at - last) if running == 1 else 0.0
        running, last = running + step, at
    return {
        "mean_requests_in_flight": round(weighted / busy, 2) if busy else 0.0,
        "seconds_with_one_request": round(alone, 1),
        "seconds_with_any_request": round(busy, 1),
    }


def stage_split(
    clock: PhaseClock, tasks: list[dict[str, Any]], starts: list[dict[str, Any]]
) -> dict[str, float]:
    """The stage's wall time in named parts that add up to it."""
    s = clock.seconds
    parts = {
        "plan: adaptor lookup, catalog brands": s("plan_for"),
        "mining inputs: joins, persist, count": s("scoped_inputs"),
        "open the wave staging": s("open_waves"),
        "users to do: anti-join, persist, count": s("mine_waves") - s("waves"),
        **waves_split(clock.window("waves"), tasks, starts),
        "write user tables (Delta)": s("write_tables") - s("record_llm"),
        "ledger + LLM summary (llm_calls)": s("record_llm"),
        "report: user counts, sample": s("report"),
    }
    named = ("plan_for", "scoped_inputs", "open_waves", "mine_waves", "write_tables", "report")
    parts["drop staging, unpersist"] = s("run") - sum(s(n) for n in named)
    parts["runs record + summary"] = s("stage") - s("run")
    return {k: round(v, 2) for k, v in parts.items()}


# -- raw vLLM on the same requests -----------------------------------------------------------------


def raw_vllm(state: Path) -> None:
    """Baseline: the captured requests replayed on plain vllm.LLM, same engine args (internal)."""
    import torch
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from bench.engine import PeakRSS
    from recgpt.llm.capture import decode_embeds
    from recgpt.llm.vllm_offline import engine_args

    cfg = json.loads((state / "llm.json").read_text())
    compact = bool(cfg.get("compact_json", True))
    groups = replay_groups(load_tasks(state / "capture", with_prompts=True))

    def prompt(r: dict[str, Any]) -> Any:
        if "token_ids" in r:
            return {"prompt_token_ids": r["token_ids"]}
        return {"prompt_embeds": torch.from_numpy(decode_embeds(r)).to(getattr(torch, r["embeds_dtype"]))}

    def params(r: dict[str, Any]) -> Any:
        schema = r["schema"]
        return SamplingParams(
            max_tokens=r["max_tokens"],
            temperature=r["temperature"],
            top_p=r["top_p"],
            seed=r["seed"],
            stop=r["stop"] or None,
            presence_penalty=r.get("presence_penalty", 0.0),
            frequency_penalty=r.get("frequency_penalty", 0.0),
            logit_bias={int(t): b for t, b in r["logit_bias"].items()} if r.get("logit_bias") else None,
            bad_words=r.get("bad_words") or None,
            structured_outputs=StructuredOutputsParams(json=schema, disable_any_whitespace=compact)
            if schema
            else None,
        )

    batches, same = [], 0
    with PeakRSS() as rss:
        started = time.perf_counter()
        llm = LLM(**engine_args(cfg))
        start_s = time.perf_counter() - started
        for wave, k, calls in groups:
            prompts: list[Any] = [prompt(r) for r in calls]
            sampling = [params(r) for r in calls]
            started = time.perf_counter()
            outputs = llm.generate(prompts, sampling, use_tqdm=False)
            seconds = time.perf_counter() - started
            same += sum(o.outputs[0].text == r["text"] for o, r in zip(outputs, calls, strict=True))
            batches.append(
                {
                    "wave": wave,
                    "batch": k,
                    "requests": len(calls),
                    "seconds": round(seconds, 3),
                    "prompt_tokens": sum(r["n_tokens"] for r in calls),
                    "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
                }
            )
    (state / "raw.json").write_text(
        json.dumps({"start_s": start_s, "batches": batches, "identical": same, "peak_pss_mb": rss.mb})
    )


def run_raw(state: Path) -> dict[str, Any]:
    env = {**os.environ, "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    subprocess.run([sys.executable, "-m", "bench.mining", "--raw", str(state)], check=True, cwd=ROOT, env=env)
    return dict(json.loads((state / "raw.json").read_text()))


# -- figures -------------------------------------------------------------------------------------


def per_hour(users: int, seconds: float) -> float:
    return round(users * 3600 / seconds, 1) if seconds > 0 else 0.0


def rate(tokens: int, seconds: float) -> float:
    return round(tokens / seconds, 1) if seconds > 0 else 0.0


def ledger_figures(ledger: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    def total(rows: list[dict[str, Any]], key: str) -> int:
        return int(sum(r[key] or 0 for r in rows))

    steps: dict[str, list[dict[str, Any]]] = {}
    for r in ledger:
        steps.setdefault(str(r["request_key"]).split(":")[1], []).append(r)
    return {
        "requests": len(ledger),
        "engine_calls": sum(len(t["records"]) for t in tasks),  # repair rounds included
        "repairs": int(sum(max((r["attempts"] or 1) - 1, 0) for r in ledger)),
        "errors": sum(r["error"] is not None for r in ledger),
        "prompt_tokens": total(ledger, "prompt_tokens"),
        "cached_prompt_tokens": total(ledger, "cached_prompt_tokens"),
        "generated_tokens": total(ledger, "generated_tokens"),
        "by_step": {
            step: {
                "requests": len(rows),
                "prompt_tokens": total(rows, "prompt_tokens"),
                "generated_tokens": total(rows, "generated_tokens"),
            }
            for step, rows in sorted(steps.items())
        },
    }


def summary_lines(f: dict[str, Any]) -> list[str]:
    u, s, llm, raw, chain = f["users"], f["seconds"], f["llm"], f["raw"], f["chain_tok_s"]
    uph, c = f["users_per_hour"], f["engine_concurrency"]
    lines = [
        f"users mined        {u['mined']} ({u['tagged']} tagged, {u['failed']} failed); "
        f"{u['world']} in the world",
        f"stage wall         {s['stage']}s: engine start {s['engine_start']}s, LLM waves {s['waves']}s, "
        f"requests in flight {s['llm_in_flight']}s (Spark session {s['spark_session']}s before it)",
        f"users/hour         {uph['stage']} with the engine start, "
        f"{uph['stage_without_engine_start']} without, {uph['waves_without_engine_start']} in the waves",
        f"LLM requests       {llm['requests']} ({llm['engine_calls']} engine calls, "
        f"{llm['repairs']} repairs, {llm['errors']} errors)",
        f"LLM tokens         {llm['prompt_tokens']:,} prompt ({llm['cached_prompt_tokens']:,} cached), "
        f"{llm['generated_tokens']:,} generated",
        f"chain tok/s        {chain['generated']} generated, {chain['total']} total (waves minus engine "
        f"start); {chain['generated_in_flight']} generated while requests were in flight",
        f"raw vLLM tok/s     {raw['tok_s']} generated, {raw['total_tok_s']} total ({raw['batches']} "
        f"batches, {raw['seconds']}s, identical outputs {raw['identical_outputs']})",
        f"ratio chain/raw    {f['ratio']} (in flight: {f['ratio_in_flight']})",
        f"engine occupancy   {c['mean_requests_in_flight']} requests in flight on average; "
        f"{c['seconds_with_one_request']}s of {c['seconds_with_any_request']}s with a single one",
        "time split of the stage (s):",
    ]
    width = max(len(k) for k in f["time_split"])
    lines += [f"  {k:<{width}}  {v:>8.2f}" for k, v in f["time_split"].items()]
    lines.append(f"largest cost besides generation: {f['largest_non_llm']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=24, help="users of the synthetic world (default 24)")
    parser.add_argument("--warehouse", type=Path, help="keep the world here; reused when already prepared")
    parser.add_argument("--dt", default=None, help="run date (default: the config's)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra Hydra override"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary state (capture, logs)")
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)  # internal: the raw replay only
    args = parser.parse_args()
    if args.raw:
        raw_vllm(args.raw)
        return

    from bench.machine import write_result
    from recgpt.config import load_config, plain
    from recgpt.llm.server import engine_starts

    state = Path(tempfile.mkdtemp(prefix="bench-mining-"))
    warehouse = (args.warehouse or state / "warehouse").resolve()
    overrides = world_overrides(
        args.users, warehouse, state, [*args.set, *([f"run.dt={args.dt}"] if args.dt else [])]
    )
    cfg = load_config([*overrides, f"llm.capture_requests={state / 'capture'}", f"run.stage={STAGE}"])
    dt = str(cfg.run.dt)
    reused = world_ready(warehouse, str(cfg.adaptor.artifacts_dir))
    prep_s = None
    if reused:
        print(f"world: reusing {warehouse}", flush=True)
    else:
        print(
            f"world: {args.users} users into {warehouse} (ingest, embeddings, compress, adaptor) ...",
            flush=True,
        )
        prep_s = round(prepare_world(dt, overrides, state / "prepare.log"), 1)
        print(f"world ready in {prep_s}s", flush=True)

    print(f"{STAGE}: the real stage on the vLLM engine, requests captured ...", flush=True)
    clock = PhaseClock()
    stage = run_stage(cfg, clock)
    llm_cfg = plain(cfg.llm)
    (state / "llm.json").write_text(json.dumps(llm_cfg))
    tasks = load_tasks(state / "capture")
    window = clock.window("stage")
    starts = [s for s in engine_starts(llm_cfg) if window[0] <= s["at"] <= window[1]]
    print("raw vllm.LLM.generate on the captured requests ...", flush=True)
    raw = run_raw(state)
    if not args.keep:
        shutil.rmtree(state / "capture", ignore_errors=True)  # hybrid prompts: ~1 MB each

    split = stage_split(clock, tasks, starts)
    flight = next(v for k, v in split.items() if k.startswith("LLM requests in flight"))
    engine_start = round(sum(s["start_seconds"] for s in starts), 1)
    stage_s = clock.seconds("stage")
    waves_s = clock.seconds("waves")
    llm = ledger_figures(stage["ledger"], tasks)
    gen, total = llm["generated_tokens"], llm["prompt_tokens"] + llm["generated_tokens"]
    users = stage["tagged"] + stage["failed"]
    raw_s = sum(b["seconds"] for b in raw["batches"])
    raw_gen = sum(b["generated_tokens"] for b in raw["batches"])
    raw_total = raw_gen + sum(b["prompt_tokens"] for b in raw["batches"])
    chain = {
        "generated": rate(gen, waves_s - engine_start),
        "total": rate(total, waves_s - engine_start),
        "generated_in_flight": rate(gen, flight),
    }
    raw_fig = {
        "engine_start_s": round(raw["start_s"], 1),
        "seconds": round(raw_s, 1),
        "batches": len(raw["batches"]),
        "requests": sum(b["requests"] for b in raw["batches"]),
        "generated_tokens": raw_gen,
        "prompt_tokens": raw_total - raw_gen,
        "tok_s": rate(raw_gen, raw_s),
        "total_tok_s": rate(raw_total, raw_s),
        "identical_outputs": f"{raw['identical']}/{sum(b['requests'] for b in raw['batches'])}",
        "peak_pss_mb": raw["peak_pss_mb"],
        "by_batch": raw["batches"],
    }
    non_llm = {k: v for k, v in split.items() if not k.startswith("LLM requests in flight")}
    figures = {
        "settings": {
            "dt": dt,
            "users_requested": args.users,
            "world": "reused" if reused else "prepared",
            "prepare_s": prep_s,
            "profile": "demo",
            "pipeline": str(cfg.pipeline.name),
            "context_mode": str(cfg.context.mode),
            "partitions": cfg.mine.partitions,
            "batch_users": int(cfg.mine.batch_users),
            "wave_users": int(cfg.mine.wave_users),
            "model": str(cfg.llm.model_name),
            "enforce_eager": bool(cfg.llm.enforce_eager),
            "spark_master": str(cfg.spark.master),
            "overrides": list(args.set),
        },
        "users": {
            "world": int(cfg.data.users),
            "mined": users,
            "tagged": stage["tagged"],
            "failed": stage["failed"],
        },
        "seconds": {
            "spark_session": round(stage["session_s"], 1),
            "stage": round(stage_s, 1),
            "engine_start": engine_start,
            "waves": round(waves_s, 1),
            "llm_in_flight": round(flight, 1),
        },
        "users_per_hour": {
            "stage": per_hour(users, stage_s),
            "stage_without_engine_start": per_hour(users, stage_s - engine_start),
            "waves_without_engine_start": per_hour(users, waves_s - engine_start),
        },
        "llm": llm,
        "chain_tok_s": chain,
        "raw": raw_fig,
        "ratio": round(chain["generated"] / raw_fig["tok_s"], 3) if raw_fig["tok_s"] else None,
        "ratio_in_flight": round(chain["generated_in_flight"] / raw_fig["tok_s"], 3)
        if raw_fig["tok_s"]
        else None,
        "engine_concurrency": concurrency(tasks),
        "time_split": split,
        "largest_non_llm": max(non_llm, key=lambda k: non_llm[k]),
        "peak_pss_mb": stage["peak_pss_mb"],
    }
    path = write_result("mining", figures)
    print("\n".join(summary_lines(figures)))
    print(f"wrote {path}")
    if args.keep:
        print(f"state (capture, logs, engine start log) kept under {state}")
    else:
        shutil.rmtree(state, ignore_errors=True)
    if not args.warehouse:
        print("(pass --warehouse DIR to keep the world and reuse it on the next run)")


if __name__ == "__main__":
    main()
