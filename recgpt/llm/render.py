"""Turns a request into exactly what the model reads: the chat template rendered and tokenized
here (so every backend sees the same tokens), hybrid blocks spliced in as input embeddings, and
the context-length policy applied before anything is sent."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recgpt.errors import ConfigError
from recgpt.llm.request import EMBED_MARK, Request

log = logging.getLogger(__name__)

ContextPolicy = Literal["truncate_oldest", "reject"]
OMITTED = "[{n} older lines omitted]"


class PromptTooLong(Exception):
    """The prompt does not fit the model's context under the configured policy."""


@dataclass
class Rendered:
    """A prompt ready for a backend: token ids, or input embeddings for a hybrid prompt."""

    token_ids: list[int] | None
    embeds: Any  # torch.Tensor [n, hidden] for hybrid prompts, else None
    n_tokens: int
    truncated_lines: int = 0


class PromptRenderer:
    def __init__(
        self,
        model_path: str,
        max_model_len: int,
        policy: ContextPolicy = "truncate_oldest",
        tokenizer_path: str | None = None,
    ) -> None:
        if policy not in ("truncate_oldest", "reject"):
            raise ConfigError(f"llm.context.policy must be truncate_oldest or reject, not {policy!r}")
        self.model_path = model_path
        self.tokenizer_path = tokenizer_path or model_path
        self.max_model_len = int(max_model_len)
        self.policy = policy

    @cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer_path)

    @cached_property
    def embedding_table(self) -> Any:
        """The model's input-embedding matrix (torch, model dtype), read from its safetensors."""
        from safetensors import safe_open

        files = sorted(Path(self.model_path).glob("*.safetensors"))
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    if name.endswith("embed_tokens.weight"):
                        return f.get_tensor(name)
        raise ConfigError(f"no embed_tokens weight in the safetensors of {self.model_path}")

    def template(self, messages: Sequence[Mapping[str, str]]) -> str:
        return str(
            self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, request: Request, max_tokens: int | None = None) -> Rendered:
        """Render `request`; over-long prompts are truncated or refused (PromptTooLong)."""
        budget = self.max_model_len - (max_tokens if max_tokens is not None else request.sampling.max_tokens)
        rendered = self._render(request.messages, request.embeds)
        if rendered.n_tokens <= budget:
            return rendered
        over = f"prompt has {rendered.n_tokens} tokens, over the budget of {budget}"
        if self.policy == "reject":
            raise PromptTooLong(f"{over} (max_model_len {self.max_model_len} - max_tokens); policy reject")
        if request.history_message is None:
            raise PromptTooLong(f"{over} and the request marks no history that may be truncated")
        return self._truncate(request, budget, over)

    def _truncate(self, request: Request, budget: int, over: str) -> Rendered:
        index = request.history_message
        assert index is not None
        every = request.messages[index]["content"].split("\n")
        head, lines = every[: request.history_head], every[request.history_head :]
        # Embedding blocks belong to the lines holding their marks: dropping a line drops them.
        marks_before = sum(m["content"].count(EMBED_MARK) for m in request.messages[:index])
        marks_before += sum(line.count(EMBED_MARK) for line in head)
        blocks_per_line = [line.count(EMBED_MARK) for line in lines]

        def attempt(dropped: int) -> Rendered:
            kept = lines[dropped:]
            content = "\n".join([*head, OMITTED.format(n=dropped), *kept] if dropped else every)
            messages = list(request.messages)
            messages[index] = {"role": messages[index]["role"], "content": content}
            gone = sum(blocks_per_line[:dropped])
            embeds = request.embeds[:marks_before] + request.embeds[marks_before + gone :]
            rendered = self._render(messages, embeds)
            rendered.truncated_lines = dropped
            return rendered

        # Fewest dropped lines that fit: rendering is monotone in the lines kept, so bisect.
        lo, hi = 1, len(lines)
        best: Rendered | None = None
        while lo <= hi:
            mid = (lo + hi) // 2
            candidate = attempt(mid)
            if candidate.n_tokens <= budget:
                best, hi = candidate, mid - 1
            else:
                lo = mid + 1
        if best is None:
            raise PromptTooLong(f"{over}, even with all {len(lines)} history lines dropped")
        return best

    def _render(self, messages: Sequence[Mapping[str, str]], embeds: Sequence[np.ndarray]) -> Rendered:
        text = self.template(messages)
        if not embeds:
            ids = self.encode(text)
            return Rendered(ids, None, len(ids))
        import torch

        table = self.embedding_table
        pieces = text.split(EMBED_MARK)
        if len(pieces) != len(embeds) + 1:
            raise ValueError(f"{len(pieces) - 1} embedding marks for {len(embeds)} blocks")
        parts = []
        for i, piece in enumerate(pieces):
            ids = self.encode(piece)
            if ids:
                parts.append(table[torch.tensor(ids, dtype=torch.long)])
            if i < len(embeds):
                block = torch.as_tensor(np.asarray(embeds[i]), dtype=table.dtype)
                if block.shape[1] != table.shape[1]:
                    raise ValueError(
                        f"embedding block width {block.shape[1]} != model hidden size {table.shape[1]}"
                    )
                parts.append(block)
        tensor = torch.cat(parts, dim=0)
        return Rendered(None, tensor, int(tensor.shape[0]))
