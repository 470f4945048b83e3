"""The shared LLM-stage runner (udfs.llm) with a scripted engine: every input row comes back once,
a row that cannot be prepared becomes an error row, the ledger holds one row per engine request
and a rerun replaces it, and the per-step summary adds up the calls."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pytest

from recgpt.llm.engine import Completion, Engine, RetryPolicy
from recgpt.llm.render import PromptRenderer
from recgpt.llm.request import Sampling, encode_messages
from recgpt.tables import LLM_CALLS
from sparkio.warehouse import Lineage
from tests.llm_support import PersonaSplit, ScriptedBackend, llm_config, planner_messages
from udfs import llm
from udfs.llm_requests import REQUEST_COLUMNS, Requests

ANSWER = '{"personas": [{"name": "runner", "reason": "trail shoes"}]}'


@pytest.fixture(scope="module")
def renderer() -> PromptRenderer:
    cfg = llm_config()
    return PromptRenderer(cfg["model_path"], int(cfg["max_model_len"]))


def engine_for(renderer: PromptRenderer, texts: Sequence[str], error_at: Sequence[int] = ()) -> Engine:
    return Engine(ScriptedBackend(texts, error_at=error_at), renderer, RetryPolicy(attempts=1))


def request_stage(step: str = "planner") -> llm.LLMStage:
    return llm.LLMStage(
        name=f"test.{step}",
        llm={},
        columns=REQUEST_COLUMNS,
        build=Requests(PersonaSplit, Sampling(max_tokens=64), step),
        batch_rows=3,
    )


def request(key: str, user: str) -> dict[str, Any]:
    return {
        "key": key,
        "user_id": user,
        "messages": encode_messages(planner_messages(user, ["viewed 'trail shoes'"])),
        "embeds": None,
        "history_message": 2,
    }


def test_bad_rows_become_error_rows_and_every_row_comes_back_once(renderer):
    stage = request_stage()
    # The third request of the engine (key c) fails in transport: an error with its call kept.
    engine = engine_for(renderer, [ANSWER] * 3, error_at=[2])
    rows = [
        request("a", "u1"),
        {**request("bad", "u2"), "messages": "not json"},
        request("b", "u3"),
        request("a", "u4"),  # the same key again
        request("c", "u5"),
    ]
    out = llm.run_rows(rows, stage, stage.build(engine), engine.model, "here:1")
    by_key: dict[str, list[dict[str, Any]]] = {}
    for row in out:
        by_key.setdefault(row["key"], []).append(row)
    assert sorted(by_key) == ["a", "b", "bad", "c"] and len(out) == len(rows)

    bad = by_key["bad"][0]
    assert bad["error"].startswith("bad_request:") and bad["calls"] == [] and bad["user_id"] == "u2"
    first, repeated = sorted(by_key["a"], key=lambda r: r["user_id"])
    assert first["error"] is None and repeated["error"] == "bad_request: duplicate key 'a'"
    assert repeated["calls"] == []

    good = by_key["b"][0]
    assert PersonaSplit.model_validate_json(good["parsed_json"]).personas[0].name == "runner"
    [call] = good["calls"]
    assert call["step"] == "planner" and call["request_key"] == "b" and call["prompt_tokens"] > 0
    failed = by_key["c"][0]
    assert failed["error"] == "engine_error: connection reset" and len(failed["calls"]) == 1
    assert {r["model"] for r in out} == {"scripted"} and {r["engine"] for r in out} == {"here:1"}
    # The engine saw exactly the three requests that could be built.
    assert len(engine.backend.calls) == 3  # type: ignore[attr-defined]


def test_request_capture_is_off_unless_configured_and_writes_one_file_per_task(tmp_path):
    from recgpt.llm.capture import CapturingBackend
    from recgpt.llm.http_backend import OpenAIHTTPBackend

    remote = {"placement": "remote", "http": {"base_url": "http://127.0.0.1:9"}}
    cfg = llm_config(**remote)
    assert cfg["capture_requests"] is None
    engine, _ = llm.executor_engine(cfg)
    assert isinstance(engine.backend, OpenAIHTTPBackend)
    engine, _ = llm.executor_engine({**cfg, "capture_requests": str(tmp_path / "calls")})
    assert isinstance(engine.backend, CapturingBackend)
    assert isinstance(engine.backend.inner, OpenAIHTTPBackend) and engine.model == cfg["model_name"]
    # Outside a Spark task (here) the file is named by process; in a task by stage and partition.
    other, _ = llm.executor_engine({**cfg, "capture_requests": str(tmp_path / "calls")})
    assert engine.backend.path.parent == tmp_path / "calls"
    assert other.backend.path != engine.backend.path  # type: ignore[attr-defined]


class Doubler:
    """A program of the runner's shape that is not a request: `n` in, `2n` out, no engine call."""

    def prepare(self, row: Mapping[str, Any]) -> tuple[str, int]:
        return str(row["key"]), int(row["n"])  # "x" -> ValueError

    def run(self, prepared: Sequence[tuple[str, int]]) -> list[llm.Outcome]:
        return [llm.Outcome(key, values={"doubled": 2 * n}) for key, n in prepared]


def test_any_program_gets_batches_and_its_failures_as_error_rows():
    stage = llm.LLMStage(
        "test.doubler",
        {},
        pa.schema([pa.field("doubled", pa.int64())]),
        lambda engine: Doubler(),
        batch_rows=2,
    )
    batches = iter(
        [
            pa.RecordBatch.from_pylist(
                [{"key": "k1", "n": "1"}, {"key": "k2", "n": "x"}, {"key": "k3", "n": "3"}]
            ),
            pa.RecordBatch.from_pylist([{"key": "k4", "n": "4"}]),
        ]
    )

    class NoEngine:
        model = "none"

    out = list(llm.process(batches, stage, NoEngine(), "nowhere"))  # type: ignore[arg-type]
    assert [b.num_rows for b in out] == [2, 2]  # regrouped into batch_rows, whatever Arrow's batches were
    rows = {r["key"]: r for b in out for r in b.to_pylist()}
    assert {k: r["doubled"] for k, r in rows.items()} == {"k1": 2, "k2": None, "k3": 6, "k4": 8}
    assert rows["k2"]["error"].startswith("bad_request:") and "'x'" in rows["k2"]["error"]
    assert out[0].schema == stage.output_schema()

    class Lossy(Doubler):
        def run(self, prepared: Sequence[tuple[str, int]]) -> list[llm.Outcome]:
            return super().run(prepared)[:-1]

    lossy = llm.LLMStage("test.lossy", {}, stage.columns, lambda engine: Lossy())
    with pytest.raises(RuntimeError, match="2 rows in, 1 outcomes out"):
        llm.run_rows([{"key": "a", "n": 1}, {"key": "b", "n": 2}], lossy, Lossy(), "none", "nowhere")


def outcome_frame(spark, stage: llm.LLMStage, rows: list[dict[str, Any]]):
    return spark.createDataFrame(pa.Table.from_pylist(rows, schema=stage.output_schema()).to_pandas())


def test_ledger_has_one_row_per_request_a_rerun_replaces_it_and_the_summary_adds_up(
    spark, warehouse, renderer
):
    def outcomes(step: str, texts: list[str], error_at: Sequence[int] = ()):
        stage = request_stage(step)
        engine = engine_for(renderer, texts, error_at)
        rows = [request(f"{step}-{i}", f"u{i}") for i in range(len(texts))]
        rows.append({**request(f"{step}-bad", "ux"), "messages": "not json"})
        return outcome_frame(spark, stage, llm.run_rows(rows, stage, stage.build(engine), engine.model, "e"))

    planner = outcomes("planner", [ANSWER] * 4, error_at=[1])
    experts = outcomes("expert", [ANSWER] * 2)
    llm.write_ledger(warehouse, planner, "test.planner", Lineage.now("2025-10-28", "run-1"))
    llm.write_ledger(warehouse, experts, "test.expert", Lineage.now("2025-10-28", "run-1"))
    llm.write_ledger(warehouse, planner, "test.planner", Lineage.now("2025-10-28", "run-2"))

    ledger = warehouse.read(LLM_CALLS, dt="2025-10-28").toPandas()
    # The rows that never reached the engine (bad input) are not requests: 4 + 2 in the ledger.
    assert len(ledger) == 6 and not ledger.duplicated(["stage", "request_key"]).any()
    assert set(ledger[ledger.stage == "test.planner"].run_id) == {"run-2"}
    assert set(ledger[ledger.stage == "test.expert"].run_id) == {"run-1"}
    assert ledger[ledger.request_key == "planner-1"].error.item() == "engine_error: connection reset"

    summary = llm.summarize(planner.unionByName(experts))
    assert summary["planner"]["calls"] == 4 and summary["planner"]["errors"] == 1
    assert summary["expert"]["calls"] == 2 and summary["expert"]["errors"] == 0
    by_stage = ledger.groupby("stage").generated_tokens.sum()
    assert summary["planner"]["generated_tokens"] == by_stage["test.planner"] > 0
    assert summary["expert"]["prompt_tokens"] == ledger[ledger.stage == "test.expert"].prompt_tokens.sum()


def test_progress_reports_done_of_total_rate_and_time_left(spark):
    progress = llm.Progress(spark, "test.progress", total=40, interval_s=60)
    progress.rows.add(10)
    progress.tokens.add(500)
    progress.started -= 20  # as if 20 s had passed
    line = progress.line()
    assert line.startswith("[test.progress] 10/40 rows · 0.50 rows/s") and "25 generated tok/s" in line
    assert "~60s left" in line
    progress.rows.add(30)
    assert "left" not in progress.line()


def test_tasks_report_calls_and_tokens_while_their_rows_are_still_in_flight(spark):
    progress = llm.Progress(spark, "test.live", total=40, interval_s=600, tokens_per_row=100)
    with progress:
        report = llm.TaskReport(progress.address, every_s=0)
        for _ in range(3):
            report.call_done(Completion("{}", 10, None, 200, "stop", 1.0))
        deadline = time.monotonic() + 10
        while "3 calls" not in progress.line():
            assert time.monotonic() < deadline, progress.line()
            time.sleep(0.02)
        # No row is done yet, but 600 of the 4,000 expected tokens are: the time left is known.
        assert "0/40 rows · 0.00 rows/s · 3 calls" in progress.line() and "left" in progress.line()
        report.close()

        # A retried task starts over; an older attempt's late datagram does not win; junk is ignored.
        progress.receive(json.dumps([report.task, 1, 1, 50, 0]).encode())
        progress.receive(json.dumps([report.task, 0, 9, 900, 4]).encode())
        progress.receive(b"not json")
        progress.receive(json.dumps(["other/1", 0, 2, 10, 4]).encode())
        assert "4/40 rows" in progress.line() and "· 3 calls" in progress.line()

    # By rows, or by tokens against the expected total when that says more (capped at 95%).
    assert progress.seconds_left(done=0, tokens=600, elapsed=34) == pytest.approx(34 * 0.85 / 0.15)
    assert progress.seconds_left(done=20, tokens=600, elapsed=30) == pytest.approx(30)
    assert progress.seconds_left(done=0, tokens=10**6, elapsed=95) == pytest.approx(5)
    assert progress.seconds_left(done=0, tokens=0, elapsed=30) is None
    assert progress.seconds_left(done=40, tokens=4000, elapsed=30) is None
