"""What every agent hands the LLM layer and what it gets back, whatever the backend: a request
(chat messages, optionally with embedding blocks at marked places, an output schema, sampling
settings) and a result (text, parsed object or error, token counts, latency)."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel

# Where one embedding block goes inside a message's content. Prompt builders put it there; any
# copy of it inside untrusted text must be removed first (`strip_marks`) or it would steal a slot.
EMBED_MARK = "<|recgpt:embed|>"


def strip_marks(text: str) -> str:
    """Untrusted text with every embedding mark removed, so it cannot claim a vector slot."""
    return text.replace(EMBED_MARK, "")


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; the defaults are greedy, which keeps nightly runs reproducible."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Return this many most likely tokens, with their log-probabilities, at each generated
    # position (a judge reads its verdict from them instead of from one sampled word). A call
    # with logprobs and no schema is a scoring call: reaching max_tokens is its normal end.
    logprobs: int | None = None
    # Penalties on tokens the answer has already written (vLLM's OpenAI-style additive ones; 0
    # is none): a small greedy model otherwise writes its first tag five times over. Structured
    # decoding still forces the answer's keys and punctuation, so they act on the free text.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # (token id, bias) added to the logits at every generated position (OpenAI's logit_bias;
    # -100 bans the token): words a rule would reject can be kept out of the answer.
    logit_bias: tuple[tuple[int, float], ...] = ()
    # Token sequences never to complete (vLLM's bad_words: the last token of a word is banned
    # where the tokens before it were just written), for words the tokenizer splits.
    bad_words: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Sampling:
        cfg = dict(cfg or {})
        if "stop" in cfg:
            cfg["stop"] = tuple(cfg["stop"] or ())
        if "bad_words" in cfg:
            cfg["bad_words"] = tuple(str(w) for w in cfg["bad_words"] or ())
        if "logit_bias" in cfg:
            cfg["logit_bias"] = tuple((int(t), float(b)) for t, b in dict(cfg["logit_bias"] or {}).items())
        return cls(**cfg)


# vLLM refuses a request with more banned token sequences than VLLM_MAX_NUM_BAD_WORDS (128 by
# default); an explanation line's bans (a few hundred at most) need more. Both engine paths set it
# unless the environment already does.
BAD_WORDS_ENV = ("VLLM_MAX_NUM_BAD_WORDS", "1024")


@dataclass(frozen=True)
class Request:
    """One LLM call.

    `messages` are chat messages ({"role", "content"}). A hybrid prompt puts `EMBED_MARK` in the
    content wherever a block of vectors goes and lists the blocks in `embeds`, in the same order;
    each block is an array [n, hidden] of input embeddings for the model. `history_message` names
    the message whose lines are context ordered oldest first: the `truncate_oldest` policy drops
    its first lines when the prompt is over the model's context, after the `history_head` lines
    that open it (a summary of the whole history, which stays).
    """

    key: str
    messages: tuple[Mapping[str, str], ...]
    embeds: tuple[np.ndarray, ...] = ()
    schema: type[BaseModel] | None = None
    sampling: Sampling = field(default_factory=Sampling)
    history_message: int | None = None
    user_id: str | None = None
    history_head: int = 0

    def __post_init__(self) -> None:
        marks = sum(m["content"].count(EMBED_MARK) for m in self.messages)
        if marks != len(self.embeds):
            raise ValueError(
                f"request {self.key}: {marks} embedding marks in the messages but {len(self.embeds)} "
                "embedding blocks"
            )
        for block in self.embeds:
            if block.ndim != 2:
                raise ValueError(f"request {self.key}: embedding blocks must be 2-d, got {block.shape}")
        if self.history_message is not None and not 0 <= self.history_message < len(self.messages):
            raise ValueError(f"request {self.key}: history_message {self.history_message} out of range")
        if self.history_head < 0 or (self.history_head and self.history_message is None):
            raise ValueError(f"request {self.key}: history_head {self.history_head} without a history")

    @property
    def is_hybrid(self) -> bool:
        return bool(self.embeds)


@dataclass
class Result:
    """The outcome of one request, after every attempt. Exactly one of `parsed`/`error` is set
    for schema requests; token counts add up all attempts."""

    key: str
    user_id: str | None
    text: str | None
    parsed: BaseModel | None
    error: str | None
    prompt_tokens: int
    cached_prompt_tokens: int | None
    generated_tokens: int
    latency_ms: float
    finish_reason: str | None
    attempts: int
    truncated_lines: int = 0
    # Per generated position, the most likely tokens (decoded text -> log-probability), when
    # the request's sampling asked for logprobs.
    top_logprobs: list[dict[str, float]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def parsed_json(self) -> str | None:
        return None if self.parsed is None else self.parsed.model_dump_json()


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema handed to structured decoding, derived from the same model that parses."""
    return model.model_json_schema()


# Embedding blocks travel through Spark as .npy bytes: self-describing shape and dtype.
def encode_block(block: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(block), allow_pickle=False)
    return buffer.getvalue()


def decode_block(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_messages(messages: Sequence[Mapping[str, str]]) -> str:
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False)


def decode_messages(text: str) -> tuple[dict[str, str], ...]:
    messages = json.loads(text)
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise ValueError("messages must be a JSON list of {role, content} objects")
    return tuple(messages)
