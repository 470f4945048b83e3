"""Request capture, opt-in (`llm.capture_requests`, off by default): a backend wrapper that appends
every call it forwards to a JSONL file exactly as sent, with its batch and timing, so a benchmark
can replay a stage's requests on plain vLLM and see where the stage's time goes between calls.

One line per call: `batch` (the n-th `complete` of this backend; a later batch may depend on the
answers of an earlier one), `index` in the batch, `created_at` (the backend's creation), `sent_at`
and `done_at` of the batch (epoch seconds), `capture_s` (time spent serializing the batch before
sending it), the prompt as `token_ids` or, for a hybrid prompt, `embeds` (base64 .npy, float32,
which holds bf16 values exactly) with `embeds_dtype`, the sampling settings, the output `schema`,
and what came back (`text`, token counts, `finish_reason`, `latency_ms`, `error`). A hybrid
prompt is about 1 MB on disk: this is a benchmarking tool, not a nightly setting.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recgpt.llm.engine import Backend, Call, Completion


def call_record(call: Call) -> dict[str, Any]:
    """What the engine sends for one call, as plain JSON values."""
    s = call.sampling
    record: dict[str, Any] = {
        "n_tokens": call.rendered.n_tokens,
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "seed": s.seed,
        "stop": list(s.stop),
        "schema": call.schema,
    }
    if s.presence_penalty or s.frequency_penalty:
        record.update(presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty)
    if s.logit_bias:
        record["logit_bias"] = {str(token): bias for token, bias in s.logit_bias}
    if s.bad_words:
        record["bad_words"] = list(s.bad_words)
    embeds = call.rendered.embeds
    if embeds is None:
        record["token_ids"] = list(call.rendered.token_ids or [])
    else:
        buffer = io.BytesIO()
        np.save(buffer, embeds.detach().float().cpu().numpy(), allow_pickle=False)
        record["embeds"] = base64.b64encode(buffer.getvalue()).decode("ascii")
        record["embeds_dtype"] = str(embeds.dtype).removeprefix("torch.")
    return record


def decode_embeds(record: dict[str, Any]) -> np.ndarray:
    """The float32 array of a captured hybrid prompt (cast back to `embeds_dtype` to replay it)."""
    return np.load(io.BytesIO(base64.b64decode(record["embeds"])), allow_pickle=False)


class CapturingBackend:
    """`inner` unchanged, plus a record of every call it was sent (see the module docstring)."""

    def __init__(self, inner: Backend, path: str | Path) -> None:
        self.inner = inner
        self.model = inner.model
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.created_at = time.time()
        self.batches = 0

    def complete(self, calls: Sequence[Call]) -> list[Completion]:
        started = time.time()
        records = [call_record(call) for call in calls]
        sent = time.time()
        completions = self.inner.complete(calls)
        done = time.time()
        batch, self.batches = self.batches, self.batches + 1
        with self.path.open("a") as out:
            for index, (record, c) in enumerate(zip(records, completions, strict=True)):
                line = {
                    "batch": batch,
                    "index": index,
                    "created_at": self.created_at,
                    "sent_at": sent,
                    "done_at": done,
                    "capture_s": round(sent - started, 6),
                    **record,
                    "text": c.text,
                    "prompt_tokens": c.prompt_tokens,
                    "cached_prompt_tokens": c.cached_prompt_tokens,
                    "generated_tokens": c.generated_tokens,
                    "finish_reason": c.finish_reason,
                    "latency_ms": c.latency_ms,
                    "error": c.error,
                }
                out.write(json.dumps(line) + "\n")
        return completions

    def close(self) -> None:
        self.inner.close()
