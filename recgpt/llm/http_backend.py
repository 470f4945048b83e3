"""HTTP backend: a vLLM OpenAI-compatible server (`/v1/completions`), shared by many callers.

Prompts go as token ids (rendered by our own renderer, so they match the in-process backend) or
as base64 torch tensors in `prompt_embeds` for hybrid prompts. Concurrency is bounded; transient
failures (connection, timeout, 429, 5xx) are retried with exponential backoff; a refusal (4xx)
becomes that call's error. When the server itself is gone (connection refused, or dropped in the
middle of an answer) and the backend was given a way to `reconnect` (the executor's own server:
find it or start a new one), the first call to notice brings the engine back and every call in
flight retries against it, so a killed engine costs a restart instead of a batch of failed users.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from recgpt.llm.engine import Call, Completion

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
# The server is not there (as opposed to slow): worth bringing it back before the next try.
SERVER_GONE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def tensor_b64(tensor: Any) -> str:
    import torch

    buffer = io.BytesIO()
    torch.save(tensor.contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class OpenAIHTTPBackend:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 64,
        compact_json: bool = True,
        timeout_s: float = 600.0,
        retries: int = 3,
        backoff_s: float = 1.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.max_concurrency = max(1, int(max_concurrency))
        self.compact_json = compact_json
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.backoff_s = float(backoff_s)
        # Told of each completion as it arrives (a task's live progress), not when the batch ends.
        self.observer: Callable[[Completion], None] | None = None
        # Returns the URL of a healthy server, restarting it if it died (blocking; None: no restart).
        self.reconnect: Callable[[], str] | None = None
        self.reconnects = 0

    @classmethod
    def from_config(cls, base_url: str, cfg: Mapping[str, Any]) -> OpenAIHTTPBackend:
        http = dict(cfg.get("http") or {})
        return cls(
            base_url,
            str(cfg.get("model_name") or cfg["model_path"]),
            api_key=http.get("api_key") or None,
            max_concurrency=int(http.get("max_concurrency", 64)),
            timeout_s=float(http.get("timeout_s", 600)),
            retries=int(http.get("retries", 3)),
            backoff_s=float(http.get("backoff_s", 1.0)),
            compact_json=bool(cfg.get("compact_json", True)),
        )

    def body(self, call: Call) -> dict[str, Any]:
        s = call.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            # Our renderer already put the chat template's special tokens in.
            "add_special_tokens": False,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = list(s.stop)
        if s.logprobs is not None:
            body["logprobs"] = s.logprobs
        if s.presence_penalty:
            body["presence_penalty"] = s.presence_penalty
        if s.frequency_penalty:
            body["frequency_penalty"] = s.frequency_penalty
        if s.logit_bias:
            body["logit_bias"] = {str(token): bias for token, bias in s.logit_bias}
        if s.bad_words:
            body["bad_words"] = list(s.bad_words)
        if call.schema is not None:
            body["structured_outputs"] = {"json": call.schema, "disable_any_whitespace": self.compact_json}
        if call.rendered.embeds is None:
            body["prompt"] = call.rendered.token_ids
        else:
            body["prompt_embeds"] = tensor_b64(call.rendered.embeds)
        return body

    def complete(self, calls: Sequence[Call]) -> list[Completion]:
        return asyncio.run(self._complete_all(calls))

    async def _complete_all(self, calls: Sequence[Call]) -> list[Completion]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(
            max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
        )
        gate = asyncio.Semaphore(self.max_concurrency)
        recovering = asyncio.Lock()
        async with httpx.AsyncClient(headers=headers, timeout=self.timeout_s, limits=limits) as client:

            async def one(call: Call) -> Completion:
                async with gate:
                    completion = await self._complete_one(client, call, recovering)
                if self.observer is not None:
                    self.observer(completion)
                return completion

            return list(await asyncio.gather(*(one(c) for c in calls)))

    async def _complete_one(
        self, client: httpx.AsyncClient, call: Call, recovering: asyncio.Lock
    ) -> Completion:
        body = self.body(call)
        started = time.perf_counter()
        error = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
                await asyncio.sleep(delay)
            url = self.base_url
            try:
                response = await client.post(f"{url}/v1/completions", json=body)
            except httpx.TransportError as exc:  # connection refused/reset, timeouts
                error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, SERVER_GONE) and self.reconnect is not None:
                    error = await self._recover(url, recovering, error)
                continue
            if response.status_code in RETRYABLE_STATUS:
                error = f"HTTP {response.status_code}: {response.text[:300]}"
                continue
            latency = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                return _failed(call, f"HTTP {response.status_code}: {response.text[:300]}", latency)
            return _completion(call, response.json(), latency)
        return _failed(
            call, f"gave up after {self.retries + 1} tries: {error}", (time.perf_counter() - started) * 1000
        )

    async def _recover(self, failed_url: str, recovering: asyncio.Lock, error: str) -> str:
        """Bring the server back once for every call that lost it: the first one in restarts
        it (in a thread: a start takes tens of seconds), the others find the new URL."""
        assert self.reconnect is not None
        async with recovering:
            if self.base_url != failed_url:
                return error
            try:
                self.base_url = (await asyncio.to_thread(self.reconnect)).rstrip("/")
            except Exception as exc:  # the retry then fails with both reasons
                return f"{error}; the engine could not be restarted: {type(exc).__name__}: {exc}"
            self.reconnects += 1
            log.warning("engine server at %s was gone (%s); now at %s", failed_url, error, self.base_url)
        return error

    def close(self) -> None:
        pass


def _completion(call: Call, payload: Mapping[str, Any], latency_ms: float) -> Completion:
    choice = payload["choices"][0]
    usage = payload.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return Completion(
        text=choice.get("text") or "",
        prompt_tokens=int(usage.get("prompt_tokens", call.rendered.n_tokens)),
        cached_prompt_tokens=details.get("cached_tokens"),
        generated_tokens=int(usage.get("completion_tokens", 0)),
        finish_reason=choice.get("finish_reason"),
        latency_ms=latency_ms,
        top_logprobs=_top_logprobs(choice.get("logprobs")),
    )


def _top_logprobs(logprobs: Mapping[str, Any] | None) -> list[dict[str, float]] | None:
    """The completions API's `logprobs.top_logprobs`: one {token: log-probability} per position."""
    if not logprobs or logprobs.get("top_logprobs") is None:
        return None
    return [{str(k): float(v) for k, v in (tops or {}).items()} for tops in logprobs["top_logprobs"]]


def _failed(call: Call, error: str, latency_ms: float) -> Completion:
    return Completion("", 0, None, 0, None, latency_ms, error=error)
