"""The one engine interface every agent calls: a batch of requests in, one result per request out.

The engine renders prompts (template, hybrid embeddings, context policy), hands the batch to a
backend (vLLM in-process, or a vLLM server over HTTP), parses outputs with the request's pydantic
model and retries malformed ones with a repair instruction. A request that still fails becomes a
result with an error; it never fails the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from recgpt.llm.render import PromptRenderer, PromptTooLong, Rendered
from recgpt.llm.request import Request, Result, Sampling, json_schema, strip_marks

log = logging.getLogger(__name__)

DEFAULT_REPAIR = (
    "Your previous reply could not be used: {error}. Reply again with only one JSON object that "
    "matches the required schema, and nothing else."
)


@dataclass
class Call:
    """One prompt as a backend sees it."""

    rendered: Rendered
    sampling: Sampling
    schema: dict[str, Any] | None


@dataclass
class Completion:
    """A backend's answer to one call. `error` is set when the call itself failed (transport,
    server refusal); then the other fields may be empty."""

    text: str
    prompt_tokens: int
    cached_prompt_tokens: int | None
    generated_tokens: int
    finish_reason: str | None
    latency_ms: float
    error: str | None = None
    # Per generated position: decoded token -> log-probability of the most likely tokens.
    top_logprobs: list[dict[str, float]] | None = None


class Backend(Protocol):
    model: str

    def complete(self, calls: Sequence[Call]) -> list[Completion]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 2
    repair_instruction: str = DEFAULT_REPAIR

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> RetryPolicy:
        cfg = dict(cfg or {})
        policy = cls(
            attempts=int(cfg.get("attempts", 2)),
            repair_instruction=str(cfg.get("repair_instruction") or DEFAULT_REPAIR),
        )
        if policy.attempts < 1:
            raise ValueError("llm.retry.attempts must be at least 1")
        return policy


def parse_output(
    text: str, finish_reason: str | None, schema: type[BaseModel] | None, scoring: bool = False
) -> BaseModel | None:
    """Parse one output with its schema; raises ValueError with a short, model-readable reason.
    A scoring call (logprobs, no schema) ends at max_tokens by design."""
    if schema is None:
        if finish_reason == "length" and not scoring:
            raise ValueError("output cut off at max_tokens")
        return None
    try:
        return schema.model_validate_json(text)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'output'}: {e['msg']}" for e in exc.errors()[:5]
        )
        if finish_reason == "length":
            reasons = f"output cut off at max_tokens ({reasons})"
        raise ValueError(reasons) from None


@dataclass
class _Pending:
    request: Request
    messages: tuple[Mapping[str, str], ...]
    attempts: int = 0
    prompt_tokens: int = 0
    cached: int | None = None
    generated: int = 0
    latency_ms: float = 0.0
    truncated_lines: int = 0
    last_text: str | None = None
    last_finish: str | None = None
    last_error: str | None = None
    last_logprobs: list[dict[str, float]] | None = None


class Engine:
    def __init__(self, backend: Backend, renderer: PromptRenderer, retry: RetryPolicy | None = None) -> None:
        self.backend = backend
        self.renderer = renderer
        self.retry = retry or RetryPolicy()
        self._schemas: dict[type[BaseModel], dict[str, Any]] = {}

    @property
    def model(self) -> str:
        return self.backend.model

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        results: dict[str, Result] = {}
        pending = [_Pending(r, tuple(r.messages)) for r in requests]
        if len({r.key for r in requests}) != len(requests):
            raise ValueError("request keys must be unique within a batch")
        for attempt in range(1, self.retry.attempts + 1):
            if not pending:
                break
            calls: list[Call] = []
            sent: list[_Pending] = []
            for p in pending:
                try:
                    rendered = self.renderer.render(_with_messages(p.request, p.messages))
                except PromptTooLong as exc:
                    p.last_error = f"prompt_too_long: {exc}"
                    results[p.request.key] = self._finish(p)
                    continue
                p.truncated_lines = max(p.truncated_lines, rendered.truncated_lines)
                schema = self._schema(p.request.schema)
                calls.append(Call(rendered, p.request.sampling, schema))
                sent.append(p)
            completions = self._complete(calls) if calls else []
            pending = []
            for p, completion in zip(sent, completions, strict=True):
                p.attempts = attempt
                p.prompt_tokens += completion.prompt_tokens
                if completion.cached_prompt_tokens is not None:
                    p.cached = (p.cached or 0) + completion.cached_prompt_tokens
                p.generated += completion.generated_tokens
                p.latency_ms += completion.latency_ms
                p.last_text, p.last_finish = completion.text, completion.finish_reason
                p.last_logprobs = completion.top_logprobs
                if completion.error is not None:
                    p.last_error = f"engine_error: {completion.error}"
                    results[p.request.key] = self._finish(p)
                    continue
                try:
                    scoring = p.request.sampling.logprobs is not None
                    parsed = parse_output(
                        completion.text, completion.finish_reason, p.request.schema, scoring
                    )
                except ValueError as exc:
                    p.last_error = f"invalid_output: {exc}"
                    if attempt < self.retry.attempts:
                        p.messages = (
                            *p.messages,
                            # The model's echo must not claim embedding slots.
                            {"role": "assistant", "content": strip_marks(completion.text)},
                            {"role": "user", "content": self.retry.repair_instruction.format(error=exc)},
                        )
                        pending.append(p)
                    else:
                        results[p.request.key] = self._finish(p)
                    continue
                p.last_error = None
                results[p.request.key] = self._finish(p, parsed)
        return [results[r.key] for r in requests]

    def _schema(self, model: type[BaseModel] | None) -> dict[str, Any] | None:
        if model is None:
            return None
        if model not in self._schemas:
            self._schemas[model] = json_schema(model)
        return self._schemas[model]

    def _complete(self, calls: list[Call]) -> list[Completion]:
        """The backend's completions; if the batch call itself raises (one prompt the engine
        refuses can fail a whole in-process batch), retry the calls one by one so only the
        offending ones become errors."""
        try:
            return self.backend.complete(calls)
        except Exception as exc:
            log.warning("batch of %d calls failed (%s); retrying them one by one", len(calls), exc)
        completions = []
        for call in calls:
            try:
                [completion] = self.backend.complete([call])
            except Exception as exc:
                completion = Completion("", 0, None, 0, None, 0.0, error=f"{type(exc).__name__}: {exc}"[:500])
            completions.append(completion)
        return completions

    @staticmethod
    def _finish(p: _Pending, parsed: BaseModel | None = None) -> Result:
        return Result(
            key=p.request.key,
            user_id=p.request.user_id,
            text=p.last_text,
            parsed=parsed,
            error=p.last_error,
            prompt_tokens=p.prompt_tokens,
            cached_prompt_tokens=p.cached,
            generated_tokens=p.generated,
            latency_ms=round(p.latency_ms, 3),
            finish_reason=p.last_finish,
            attempts=p.attempts,
            truncated_lines=p.truncated_lines,
            top_logprobs=p.last_logprobs,
        )

    def close(self) -> None:
        self.backend.close()


def _with_messages(request: Request, messages: tuple[Mapping[str, str], ...]) -> Request:
    if messages is request.messages:
        return request
    from dataclasses import replace

    return replace(request, messages=messages)
