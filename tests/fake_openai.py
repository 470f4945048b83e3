"""A deterministic stand-in for a vLLM OpenAI server, for control-flow tests of the Spark stages
(waves, failures, kill and resume) that must compare runs exactly: the real engine's outputs
depend on batch composition. It speaks /v1/completions with token-id prompts, reads the output
schema's title to know which agent is asking, and answers from a hash of the prompt: its token
ids, or for a hybrid prompt sent as `prompt_embeds` its length in positions (the slots' floats
come from a trained adaptor and differ in their last bits from one training to the next; the
length is the contexts' alone):

- planner: one or two fixed personas; about one token-id prompt in six, and every hybrid prompt
  of an even length, gets a cut-off answer (finish_reason "length"), so some users fail at the
  planner;
- expert: three tags from a small vocabulary;
- arbiter: the numbered candidate lines of its prompt, in order (at most eight), with falling
  scores; the first candidate only when the prompt came as embeddings (it cannot be read back);
- explanations: a fixed style guide and one of a few lines that pass the rules;
- scoring calls (logprobs asked, the judge's): "Yes" or "No" with P(yes) from the hash.

Never used outside tests.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VOCABULARY = (
    "insulated hiking boots",
    "cast iron skillet",
    "yoga mat set",
    "rain jacket shell",
    "reading desk lamp",
    "wool hiking socks",
    "ceramic tea set",
    "trail running shoes",
)


# Explanations that pass the rules for any item (no number, brand, attribute or claim), with the
# prompt's interest filled in.
LINES = (
    "You may like this pick for your interest in {}, chosen with the season in mind.",
    "Since you keep coming back to {}, this pick could suit you well.",
    "A pick that fits your taste for {}, ready when you are.",
)


def _digest(prompt: object) -> int:
    return int(hashlib.sha256(json.dumps(prompt).encode()).hexdigest(), 16)


def _prompt_digest(body: dict[str, Any]) -> int:
    """The hash the answers key on: the token ids, or a hybrid prompt's length in positions."""
    if "prompt" in body:
        return _digest(list(body["prompt"]))
    return _digest({"embedding_positions": FakeOpenAI.prompt_tokens(body)})


class FakeOpenAI:
    def __init__(self, tokenizer: Any, delay_s: float = 0.05) -> None:
        self.tokenizer = tokenizer
        self.delay_s = delay_s
        self.requests = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def history_digest(self, tokens: list[int]) -> int:
        text = self.tokenizer.decode(tokens)
        found = re.search(r"<history>(.*?)</history>", text, re.S)
        return _digest(found.group(1) if found else text)

    def answer(self, body: dict[str, Any]) -> tuple[str, str]:
        tokens = list(body["prompt"]) if "prompt" in body else None
        agent = str(((body.get("structured_outputs") or {}).get("json") or {}).get("title"))
        h = _prompt_digest(body)
        if agent == "PlannerOutput":
            # Text prompts: one in three by a hash of the history alone, so which users are cut
            # off does not move when a prompt's wording changes; hybrid prompts: by parity of the
            # length, so that about half of any world's users fail (all eight of the tests' tiny
            # world missed a one-in-six hash of their lengths).
            cut = (
                self.history_digest(tokens) % 3 == 0
                if tokens is not None
                else self.prompt_tokens(body) % 2 == 0
            )
            if cut:
                return '{"personas":[{"need":"cut', "length"
            names = ["outdoor explorer", "home cook"][: 1 + h % 2]
            personas = [
                {"need": n, "description": f"shops as a {n}", "evidence": [n], "signals": []} for n in names
            ]
            return json.dumps({"personas": personas}), "stop"
        if agent == "ExpertOutput":
            # The general persona's Expert (the one a cut-off plan falls back to) reads the
            # history, as embeddings in hybrid mode: cut off too, so those users fail at the
            # Expert with both failed calls on record.
            if tokens is None or "<persona>all interests:" in self.tokenizer.decode(tokens):
                return '{"tags":[{"tag":"cut', "length"
            picks = [VOCABULARY[(h >> (8 * i)) % len(VOCABULARY)] for i in range(3)]
            tags = [{"tag": t, "reason": f"fits {t}", "evidence": t} for t in dict.fromkeys(picks)]
            return json.dumps({"tags": tags}), "stop"
        if agent == "ArbiterOutput":
            if tokens is None:
                lines = ["the first candidate"]
            else:
                text = self.tokenizer.decode(tokens)
                block = re.search(r"<candidate_tags>\n(.*?)\n</candidate_tags>", text, re.S)
                lines = block.group(1).split("\n") if block else []
            picks = [
                {"pick": i + 1, "score": max(1, 10 - i), "reason": "fits"} for i in range(min(8, len(lines)))
            ]
            return json.dumps({"tags": picks}), "stop"
        if agent == "StyleGuideOutput":
            tone = ["warm", "playful", "practical"][h % 3]
            return json.dumps({"tone": tone, "audience": "the shopper", "angle": "the interest"}), "stop"
        if agent == "ExplanationOutput":
            found = re.findall(r"<interest>(.*?)</interest>", self.tokenizer.decode(tokens or []))
            line = LINES[h % len(LINES)].format(found[-1] if found else "this")
            return json.dumps({"explanation": line}), "stop"
        return "{}", "stop"

    @staticmethod
    def scored(body: dict[str, Any]) -> dict[str, Any]:
        """A scoring call (one token with its alternatives): Yes or No, P(yes) from the prompt's
        digest, in the completions API's `logprobs` shape."""
        p = 0.05 + 0.9 * (_prompt_digest(body) % 100) / 100
        tops = {"Yes": math.log(p), "No": math.log(1 - p)}
        text = max(tops, key=tops.__getitem__)
        logprobs = {"tokens": [text], "token_logprobs": [tops[text]], "top_logprobs": [tops]}
        return {"text": text, "finish_reason": "length", "logprobs": logprobs}

    @staticmethod
    def prompt_tokens(body: dict[str, Any]) -> int:
        if "prompt" in body:
            return len(body["prompt"])
        import torch  # a hybrid prompt: a base64 torch tensor of (positions, hidden)

        return int(torch.load(io.BytesIO(base64.b64decode(body["prompt_embeds"]))).shape[0])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests += 1
                time.sleep(fake.delay_s)
                text, finish = fake.answer(body)
                choice: dict[str, Any] = {"text": text, "finish_reason": finish}
                if body.get("logprobs"):
                    choice = fake.scored(body)
                payload = json.dumps(
                    {
                        "choices": [choice],
                        "usage": {
                            "prompt_tokens": fake.prompt_tokens(body),
                            "completion_tokens": max(1, len(text) // 4),
                            "prompt_tokens_details": {"cached_tokens": 0},
                        },
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler
