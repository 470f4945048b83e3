"""The engine layer's control flow: rendering, context policy, parsing, repair retries and error
rows. The backend here is scripted (no model); the real engines are tested in test_llm_vllm.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from recgpt.llm.engine import Engine, RetryPolicy
from recgpt.llm.http_backend import OpenAIHTTPBackend
from recgpt.llm.render import OMITTED, PromptRenderer, PromptTooLong
from recgpt.llm.request import EMBED_MARK, Request, Sampling, decode_block, encode_block, strip_marks
from tests.fake_openai import FakeOpenAI
from tests.llm_support import PersonaSplit, ScriptedBackend, llm_config, planner_messages

VALID = '{"personas": [{"name": "winter hiker", "reason": "boots and a down jacket"}]}'


@pytest.fixture(scope="module")
def renderer() -> PromptRenderer:
    cfg = llm_config()
    return PromptRenderer(cfg["model_path"], 2048, policy="truncate_oldest")


def request(key: str = "u1", history: int = 5, **kw) -> Request:
    lines = [f"day {d}: viewed 'wool socks size {d}'" for d in range(history)]
    return Request(
        key, planner_messages(key, lines), schema=PersonaSplit, history_message=2, user_id=key, **kw
    )


def test_valid_output_parses_into_the_schema_model(renderer):
    backend = ScriptedBackend([VALID])
    [result] = Engine(backend, renderer).generate([request()])
    assert result.ok and result.attempts == 1
    assert isinstance(result.parsed, PersonaSplit)
    assert result.parsed.personas[0].name == "winter hiker"
    # The schema handed to structured decoding is the pydantic model's own.
    assert backend.calls[0].schema == PersonaSplit.model_json_schema()
    assert result.prompt_tokens == backend.calls[0].rendered.n_tokens > 0


def test_malformed_output_is_retried_with_a_repair_instruction(renderer):
    backend = ScriptedBackend(['{"personas": [', VALID])
    [result] = Engine(backend, renderer, RetryPolicy(attempts=2)).generate([request()])
    assert result.ok and result.attempts == 2
    first, second = backend.calls
    repaired = renderer.tokenizer.decode(second.rendered.token_ids)
    assert "could not be used" in repaired and '{"personas": [' in repaired
    assert result.prompt_tokens == first.rendered.n_tokens + second.rendered.n_tokens


def test_output_still_bad_after_all_attempts_is_an_error_row_and_others_are_kept(renderer):
    # Call order: round 1 = a, b, c; round 2 = the repair of b only.
    backend = ScriptedBackend([VALID, "not json", VALID, '{"personas": []}'])
    results = Engine(backend, renderer, RetryPolicy(attempts=2)).generate(
        [request("a"), request("b"), request("c")]
    )
    assert [r.key for r in results] == ["a", "b", "c"]
    assert results[0].ok and results[2].ok
    bad = results[1]
    assert bad.parsed is None and bad.attempts == 2
    assert bad.error.startswith("invalid_output:") and "personas" in bad.error


def test_rule_violations_in_valid_json_count_as_malformed(renderer):
    too_long = '{"personas": [{"name": "' + "x" * 60 + '", "reason": "r"}]}'
    backend = ScriptedBackend([too_long])
    [result] = Engine(backend, renderer, RetryPolicy(attempts=1)).generate([request()])
    assert result.error and "at most 30 characters" in result.error


def test_transport_failure_becomes_an_engine_error_row(renderer):
    backend = ScriptedBackend(["", VALID], error_at=[0])
    results = Engine(backend, renderer).generate([request("a"), request("b")])
    assert results[0].error == "engine_error: connection reset"
    assert results[1].ok


def test_reject_policy_refuses_over_long_prompts_without_calling_the_engine():
    cfg = llm_config()
    strict = PromptRenderer(cfg["model_path"], 512, policy="reject")
    backend = ScriptedBackend([VALID])
    results = Engine(backend, strict).generate([request("long", history=200), request("short", history=2)])
    assert results[0].error.startswith("prompt_too_long:") and "policy reject" in results[0].error
    assert results[0].attempts == 0 and results[0].prompt_tokens == 0
    assert results[1].ok
    assert len(backend.calls) == 1


def test_truncate_policy_drops_the_oldest_history_lines_until_it_fits():
    cfg = llm_config()
    small = PromptRenderer(cfg["model_path"], 512, policy="truncate_oldest")
    req = request("long", history=200, sampling=Sampling(max_tokens=128))
    rendered = small.render(req)
    assert 0 < rendered.n_tokens <= 512 - 128
    assert rendered.truncated_lines > 0
    text = small.tokenizer.decode(rendered.token_ids)
    assert "day 199:" in text, "the newest line must survive"
    assert "day 0:" not in text
    assert OMITTED.format(n=rendered.truncated_lines) in text
    # A prompt whose over-length is not in a history message cannot be truncated.
    with pytest.raises(PromptTooLong, match="no history"):
        small.render(
            Request("x", ({"role": "user", "content": "word " * 600},), sampling=Sampling(max_tokens=128))
        )


def test_hybrid_prompt_splices_blocks_where_the_marks_are(renderer):
    table = renderer.embedding_table
    block = np.random.default_rng(0).standard_normal((3, table.shape[1])).astype(np.float32)
    hybrid = Request("h", ({"role": "user", "content": f"Item {EMBED_MARK} in winter"},), embeds=(block,))
    text = Request("t", ({"role": "user", "content": "Item  in winter"},))
    r_h, r_t = renderer.render(hybrid), renderer.render(text)
    assert r_h.token_ids is None and r_h.embeds.shape == (r_h.n_tokens, table.shape[1])
    before = renderer.encode(renderer.template(hybrid.messages).split(EMBED_MARK)[0])
    spliced = r_h.embeds[len(before) : len(before) + 3].float().numpy()
    np.testing.assert_allclose(spliced, block, rtol=1e-2, atol=1e-2)
    assert r_h.n_tokens >= r_t.n_tokens + 2


def test_truncating_a_hybrid_history_drops_the_blocks_of_dropped_lines():
    cfg = llm_config()
    small = PromptRenderer(cfg["model_path"], 512, policy="truncate_oldest")
    hidden = small.embedding_table.shape[1]
    lines = [f"day {d}: bought {EMBED_MARK}" for d in range(300)]
    # Block d is one-hot at column d (exact in bf16), so the kept blocks can be read back.
    blocks = tuple(np.tile(np.eye(hidden, dtype=np.float32)[d] * 8, (2, 1)) for d in range(300))
    req = Request(
        "h", planner_messages("h", lines), embeds=blocks, history_message=2, sampling=Sampling(max_tokens=64)
    )
    rendered = small.render(req)
    assert rendered.truncated_lines > 0 and rendered.n_tokens <= 512 - 64
    rows = rendered.embeds.float().numpy()
    kept = sorted({int(r.argmax()) for r in rows if r.max() == 8 and np.count_nonzero(r) == 1})
    assert kept == list(range(rendered.truncated_lines, 300)), "exactly the blocks of the kept lines"


def test_requests_validate_marks_against_blocks():
    with pytest.raises(ValueError, match="1 embedding marks"):
        Request("k", ({"role": "user", "content": f"a {EMBED_MARK}"},))
    assert strip_marks(f"evil {EMBED_MARK} title") == "evil  title"
    block = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(decode_block(encode_block(block)), block)


def test_request_capture_records_each_call_as_sent_batch_by_batch(renderer, tmp_path):
    import json

    import torch

    from recgpt.llm.capture import CapturingBackend, decode_embeds

    table = renderer.embedding_table
    block = np.random.default_rng(1).standard_normal((2, table.shape[1])).astype(np.float32)
    hybrid = Request(
        "h",
        ({"role": "user", "content": f"Shopper h bought {EMBED_MARK}"},),
        embeds=(block,),
        schema=PersonaSplit,
        sampling=Sampling(max_tokens=48, seed=3),
    )
    scripted = ScriptedBackend(["not json", VALID, VALID])
    path = tmp_path / "calls" / "task.jsonl"
    engine = Engine(CapturingBackend(scripted, path), renderer, RetryPolicy(attempts=2))
    first, second = engine.generate([request("u1"), hybrid])
    assert first.attempts == 2 and second.ok, "capturing changes nothing the engine sees"

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    # Batch 0 held both requests; the repair of u1 went alone in batch 1, after batch 0 returned.
    assert [(r["batch"], r["index"]) for r in lines] == [(0, 0), (0, 1), (1, 0)]
    assert lines[2]["sent_at"] >= lines[0]["done_at"] >= lines[0]["sent_at"] >= lines[0]["created_at"]
    for record, call in zip(lines, scripted.calls, strict=True):
        assert record["schema"] == PersonaSplit.model_json_schema() == call.schema
        assert (
            record["max_tokens"] == call.sampling.max_tokens and record["n_tokens"] == call.rendered.n_tokens
        )
    assert lines[0]["token_ids"] == scripted.calls[0].rendered.token_ids
    assert lines[2]["token_ids"] == scripted.calls[2].rendered.token_ids != lines[0]["token_ids"]
    assert [r["text"] for r in lines] == ["not json", VALID, VALID] and lines[0]["generated_tokens"] == 2
    assert lines[0]["latency_ms"] == 5.0 and lines[0]["finish_reason"] == "stop"
    # A hybrid prompt is its input embeddings, bit for bit once cast back to the model's dtype.
    assert "token_ids" not in lines[1] and lines[1]["seed"] == 3
    sent = scripted.calls[1].rendered.embeds
    replayed = torch.from_numpy(decode_embeds(lines[1])).to(getattr(torch, lines[1]["embeds_dtype"]))
    assert torch.equal(replayed, sent)


def test_the_server_supervisor_stops_its_server_when_the_owner_is_gone():
    import subprocess
    import sys
    import time

    import psutil

    from recgpt.llm.server import alive

    owner = subprocess.Popen(["sleep", "600"])
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "recgpt.llm.server", "--owner-pid", str(owner.pid), "--", "sleep", "600"]
    )
    deadline = time.monotonic() + 30
    while not psutil.Process(supervisor.pid).children() and time.monotonic() < deadline:
        time.sleep(0.1)
    [child] = psutil.Process(supervisor.pid).children()
    owner.kill()
    owner.wait()
    supervisor.wait(timeout=30)
    assert not alive(child.pid)


def _sleeper_tree() -> tuple[Any, Any]:
    """A child of this process that has a child of its own: the second stands for an executor
    daemon that owns a server (a grandchild of the job)."""
    import subprocess
    import sys
    import time

    import psutil

    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess; subprocess.Popen(['sleep', '600']).wait()"]
    )
    deadline = time.monotonic() + 30
    while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
        time.sleep(0.1)
    [daemon] = psutil.Process(parent.pid).children()
    return parent, daemon


def test_only_the_servers_started_under_a_process_are_stopped(tmp_path):
    """The nightly chain frees the engine its local executors started, and no other job's; a
    benchmark's `stop_server` leaves a server of its key that another job started (the suite's,
    found running) alone."""
    import json
    import os
    import subprocess

    from recgpt.llm.server import alive, server_key, stop_server, stop_servers_started_under

    cfg = llm_config(**{"server.state_dir": str(tmp_path)})
    daemon_parent, daemon = _sleeper_tree()
    ours = subprocess.Popen(["sleep", "600"], start_new_session=True)
    # Another job's: owned by a process outside our tree (pid 1 stands for it).
    theirs = subprocess.Popen(["sleep", "600"], start_new_session=True)
    key = server_key(cfg)
    (tmp_path / "ours.json").write_text(json.dumps({"pid": ours.pid, "owner": daemon.pid}))
    (tmp_path / f"{key}.json").write_text(json.dumps({"pid": theirs.pid, "owner": 1}))
    try:
        assert stop_server(cfg) is False
        assert (tmp_path / f"{key}.json").exists() and alive(theirs.pid)
        assert stop_servers_started_under(os.getpid(), cfg) == ["ours"]
        ours.wait(timeout=30)
        assert not (tmp_path / "ours.json").exists()
        assert (tmp_path / f"{key}.json").exists() and alive(theirs.pid)
        # The same key started under this process is stopped by `stop_server`.
        (tmp_path / f"{key}.json").write_text(json.dumps({"pid": theirs.pid, "owner": daemon.pid}))
        assert stop_server(cfg) is True
        theirs.wait(timeout=30)
        assert not (tmp_path / f"{key}.json").exists()
    finally:
        for proc in (theirs, daemon_parent, ours):
            proc.kill()
        daemon.kill()


class ExplodingOnOne(ScriptedBackend):
    """An in-process engine refuses a whole batch when one prompt is bad."""

    def complete(self, calls):
        if any(c.rendered.n_tokens > 300 for c in calls):
            raise RuntimeError("prompt refused by the engine")
        return super().complete(calls)


def test_a_batch_the_backend_refuses_is_split_so_only_the_bad_request_fails(renderer):
    backend = ExplodingOnOne([VALID, VALID])
    results = Engine(backend, renderer).generate(
        [request("ok", history=2), request("big", history=40), request("ok2", history=2)]
    )
    assert results[0].ok and results[2].ok
    assert results[1].error == "engine_error: RuntimeError: prompt refused by the engine"


def test_a_model_echoing_the_embedding_mark_cannot_break_the_repair_round(renderer):
    table = renderer.embedding_table
    block = np.zeros((1, table.shape[1]), dtype=np.float32)
    hybrid = Request(
        "h", ({"role": "user", "content": f"Item {EMBED_MARK}"},), embeds=(block,), schema=PersonaSplit
    )
    backend = ScriptedBackend([f"{EMBED_MARK} not json", VALID])
    [result] = Engine(backend, renderer).generate([hybrid])
    assert result.ok and result.attempts == 2


@pytest.mark.parametrize("llm", ["smollm2_cpu", "vllm_gpu"])
def test_server_command_of_each_llm_config_is_accepted_by_vllms_own_parser(llm):
    from omegaconf import OmegaConf
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from recgpt.config import load_config
    from recgpt.llm.server import server_command

    cfg = OmegaConf.to_container(load_config([f"llm={llm}"]).llm, resolve=True)
    cmd = server_command(cfg, 8000)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.launchers.api_server.entry"]
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(cmd[3:])
    assert args.max_model_len == cfg["max_model_len"] and args.enable_prompt_embeds
    assert args.enable_prefix_caching and args.max_num_seqs == cfg["max_num_seqs"]
    # Compact JSON must reach the engine's config: the grammar backends ignore the request flag.
    assert args.structured_outputs_config.disable_any_whitespace is True
    if llm == "vllm_gpu":
        assert args.tensor_parallel_size == 1 and args.gpu_memory_utilization == 0.9
    else:
        assert args.kv_cache_memory_bytes == 2 * 1024**3


class AnswersValid(FakeOpenAI):
    """An OpenAI-compatible server that answers every call with a valid persona split."""

    def answer(self, body):
        return VALID, "stop"


def test_a_server_gone_mid_batch_is_brought_back_once_and_every_call_retried(renderer):
    # The server the batch starts with is gone (nothing listens on port 9); bringing it back
    # means starting a new one on another port.
    with AnswersValid(renderer.tokenizer, delay_s=0.01) as replacement:
        backend = OpenAIHTTPBackend("http://127.0.0.1:9", "m", retries=2, backoff_s=0.01, timeout_s=5)
        restarts: list[str] = []
        backend.reconnect = lambda: restarts.append(replacement.url) or replacement.url
        results = Engine(backend, renderer).generate([request(f"u{i}") for i in range(6)])
    assert all(r.ok for r in results), [r.error for r in results]
    assert len(restarts) == backend.reconnects == 1
    assert replacement.requests == 6


def test_an_engine_that_cannot_be_brought_back_leaves_error_rows_with_both_reasons(renderer):
    backend = OpenAIHTTPBackend("http://127.0.0.1:9", "m", retries=1, backoff_s=0.01, timeout_s=2)

    def broken() -> str:
        raise RuntimeError("engine exited with 1 during start")

    backend.reconnect = broken
    [result] = Engine(backend, renderer).generate([request()])
    assert result.error.startswith("engine_error: gave up after 2 tries: ConnectError")
    assert "could not be restarted: RuntimeError: engine exited with 1 during start" in result.error


class RecordsBodies(AnswersValid):
    """Answers validly and keeps every request body."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bodies: list[dict] = []

    def answer(self, body):
        self.bodies.append(body)
        return super().answer(body)


def test_repetition_penalties_reach_the_server_only_when_set(renderer):
    with RecordsBodies(renderer.tokenizer, delay_s=0.0) as server:
        engine = Engine(OpenAIHTTPBackend(server.url, "m"), renderer)
        plain = request("u1")
        penalised = request("u2", sampling=Sampling(max_tokens=64, presence_penalty=0.5))
        assert all(r.ok for r in engine.generate([plain, penalised]))
    by_penalty = sorted(server.bodies, key=lambda b: "presence_penalty" in b)
    assert "presence_penalty" not in by_penalty[0] and "frequency_penalty" not in by_penalty[0]
    assert by_penalty[1]["presence_penalty"] == 0.5 and "frequency_penalty" not in by_penalty[1]


def test_word_bans_reach_the_server_only_when_set(renderer):
    with RecordsBodies(renderer.tokenizer, delay_s=0.0) as server:
        engine = Engine(OpenAIHTTPBackend(server.url, "m"), renderer)
        bans = {"logit_bias": ((17, -100.0),), "bad_words": ("Mild",)}
        banned = request("u2", sampling=Sampling(max_tokens=64, **bans))
        assert all(r.ok for r in engine.generate([request("u1"), banned]))
    by_bias = sorted(server.bodies, key=lambda b: "logit_bias" in b)
    assert "logit_bias" not in by_bias[0] and "bad_words" not in by_bias[0]
    assert by_bias[1]["logit_bias"] == {"17": -100.0} and by_bias[1]["bad_words"] == ["Mild"]
    assert Sampling.from_config({"logit_bias": {"17": -100}}).logit_bias == ((17, -100.0),)
