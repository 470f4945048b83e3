"""The engine layer on the real bundled model: vLLM in-process and a real vLLM OpenAI server on
loopback, with structured JSON outputs, hybrid prompts and error rows."""

from __future__ import annotations

import pytest

from recgpt.llm.engine import Engine, RetryPolicy
from recgpt.llm.http_backend import OpenAIHTTPBackend
from recgpt.llm.render import PromptRenderer
from recgpt.llm.request import EMBED_MARK, Request, Sampling
from recgpt.llm.server import engine_starts, ensure_server
from tests.llm_support import SCHEMA_TOKENS, PersonaSplit, planner_messages

pytestmark = pytest.mark.slow

HISTORY = [
    "day 1: viewed 'merino wool hiking socks'",
    "day 2: bought 'waterproof trail boots'",
    "day 3: searched 'down jacket women'",
    "day 4: viewed 'insulated thermos flask'",
]
TITLE = "waterproof trail boots"


def chat_batch(n: int) -> list[Request]:
    sampling = Sampling(max_tokens=SCHEMA_TOKENS)
    return [
        Request(
            f"u{i}", planner_messages(f"u{i}", HISTORY[: 1 + i % 4]), schema=PersonaSplit, sampling=sampling
        )
        for i in range(n)
    ]


def text_and_hybrid(renderer: PromptRenderer) -> tuple[Request, Request]:
    """The same prompt twice: the title as text, and as the model's own input embeddings."""
    sampling = Sampling(max_tokens=24)
    text = Request(
        "text",
        ({"role": "user", "content": f"Describe this product in one line: {TITLE}"},),
        sampling=sampling,
    )
    ids = renderer.encode(" " + TITLE)
    block = renderer.embedding_table[ids].float().numpy()
    hybrid = Request(
        "hybrid",
        ({"role": "user", "content": f"Describe this product in one line:{EMBED_MARK}"},),
        embeds=(block,),
        sampling=sampling,
    )
    return text, hybrid


@pytest.fixture(scope="session")
def cfg(llm_cfg):
    return llm_cfg


@pytest.fixture(scope="session")
def renderer(cfg) -> PromptRenderer:
    return PromptRenderer(cfg["model_path"], cfg["max_model_len"])


# Module scope: the in-process engine holds the model and its KV cache (several GB) in the test
# process; the whole-chain tests later in the session need that memory.
@pytest.fixture(scope="module")
def offline(cfg, renderer):
    from recgpt.llm.vllm_offline import VLLMOfflineBackend

    engine = Engine(VLLMOfflineBackend(cfg), renderer, RetryPolicy(attempts=2))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def server(cfg):
    """The session's engine server (started here, or by an earlier Spark test's tasks)."""
    return ensure_server(cfg)


def check_structured_batch(engine: Engine) -> None:
    results = engine.generate(chat_batch(8))
    assert len(results) == 8
    for r in results:
        assert r.error is None, r.error
        assert isinstance(r.parsed, PersonaSplit)
        assert 1 <= len(r.parsed.personas) <= 3
        assert r.prompt_tokens > 50 and r.generated_tokens > 0 and r.latency_ms > 0
        assert r.finish_reason == "stop"


def check_error_rows(engine: Engine, renderer: PromptRenderer) -> None:
    # 5 tokens cannot hold the schema's JSON: cut off every attempt -> error row after repair.
    cut = Request(
        "cut", planner_messages("cut", HISTORY), schema=PersonaSplit, sampling=Sampling(max_tokens=5)
    )
    long = Request("long", ({"role": "user", "content": "snow " * 3000},), sampling=Sampling(max_tokens=16))
    fine = chat_batch(1)[0]
    results = engine.generate([cut, long, fine])
    assert results[0].error.startswith("invalid_output: output cut off at max_tokens")
    assert results[0].attempts == 2 and results[0].finish_reason == "length"
    assert results[1].error.startswith("prompt_too_long")
    assert results[2].error is None and results[2].parsed is not None


def scoring(engine: Engine) -> dict[str, float]:
    """A scoring call: one token, its most likely alternatives; reaching max_tokens is no error."""
    ask = Request(
        "ask",
        ({"role": "user", "content": "Is a tent useful for camping? Answer Yes or No."},),
        sampling=Sampling(max_tokens=1, logprobs=5),
    )
    [result] = engine.generate([ask])
    assert result.error is None and result.finish_reason == "length" and result.attempts == 1
    assert result.top_logprobs is not None and len(result.top_logprobs) == 1
    tops = result.top_logprobs[0]
    assert 5 <= len(tops) <= 6  # the sampled token is added when it is not among the top 5
    assert all(v <= 0.0 for v in tops.values())
    assert max(tops, key=tops.__getitem__) == result.text  # greedy: the likeliest token is the answer
    return tops


def test_offline_engine_parses_structured_outputs(offline):
    check_structured_batch(offline)


def test_offline_hybrid_prompt_from_input_embeddings_matches_the_text_prompt(offline, renderer):
    text, hybrid = text_and_hybrid(renderer)
    a, b = offline.generate([text, hybrid])
    assert a.text and a.text == b.text
    assert a.prompt_tokens == b.prompt_tokens


def test_offline_error_rows(offline, renderer):
    check_error_rows(offline, renderer)


def test_scoring_calls_return_token_logprobs_alike_offline_and_over_http(offline, server, cfg, renderer):
    over_http = Engine(OpenAIHTTPBackend.from_config(server.url, cfg), renderer)
    a, b = scoring(offline), scoring(over_http)
    assert set(a) & set(b)
    for token in set(a) & set(b):
        assert a[token] == pytest.approx(b[token], abs=0.05)


def test_http_backend_against_a_real_vllm_server(server, cfg, renderer):
    engine = Engine(OpenAIHTTPBackend.from_config(server.url, cfg), renderer)
    check_structured_batch(engine)
    check_error_rows(engine, renderer)
    # A long prompt sent again is served from the prefix cache (whole KV blocks), and the server
    # says so.
    history = [f"day {d}: viewed 'wool socks size {d}'" for d in range(60)]
    long = Request(
        "again",
        planner_messages("u", history),
        schema=PersonaSplit,
        sampling=Sampling(max_tokens=SCHEMA_TOKENS),
    )
    first, again = engine.generate([long]), engine.generate([long])
    assert first[0].error is None and again[0].prompt_tokens > 500
    assert again[0].cached_prompt_tokens and again[0].cached_prompt_tokens >= again[0].prompt_tokens // 2


def test_http_hybrid_prompt_matches_the_text_prompt_and_the_offline_engine(server, cfg, renderer, offline):
    engine = Engine(OpenAIHTTPBackend.from_config(server.url, cfg), renderer)
    text, hybrid = text_and_hybrid(renderer)
    a, b = engine.generate([text, hybrid])
    assert a.text and a.text == b.text
    assert offline.generate([text])[0].text == a.text, "both backends read the same tokens"


def test_server_is_found_again_not_restarted(server, cfg):
    again = ensure_server(cfg)
    assert not again.started and again.pid == server.pid and again.url == server.url
    assert [s["pid"] for s in engine_starts(cfg)] == [server.pid]


def test_unreachable_server_gives_error_rows_after_bounded_retries(cfg, renderer):
    backend = OpenAIHTTPBackend("http://127.0.0.1:9", "none", retries=2, backoff_s=0.01, timeout_s=2)
    [result] = Engine(backend, renderer).generate(chat_batch(1))
    assert result.error.startswith("engine_error: gave up after 3 tries")
