"""Shared pieces of the LLM tests: a small output schema like the planner's, prompt builders, the
config of the bundled model, and a scripted backend for control-flow tests only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import OmegaConf
from pydantic import BaseModel, Field

from recgpt.config import load_config
from recgpt.llm.engine import Call, Completion, Engine
from recgpt.llm.render import PromptRenderer


# Bounded so that any valid answer fits SCHEMA_TOKENS (even a string of digits, one token each).
class Persona(BaseModel):
    name: str = Field(min_length=1, max_length=30)
    reason: str = Field(max_length=60)


class PersonaSplit(BaseModel):
    personas: list[Persona] = Field(min_length=1, max_length=3)


SCHEMA_TOKENS = 384


# The tests' engines skip torch.compile: they start in about half the time, and the little they
# generate does not pay back a compile (conf/llm/smollm2_cpu.yaml, enforce_eager). Their KV cache
# is 1 GiB instead of 2 (~45k tokens, more than any test's batch holds): an engine is then about
# 2 GB instead of 3, which counts while the other pytest worker runs Spark clusters beside it.
TEST_ENGINE = ("llm.enforce_eager=true", "llm.kv_cache_gib=1")


def llm_config(**overrides: Any) -> dict[str, Any]:
    cfg = OmegaConf.to_container(load_config(["run.stage=test", *TEST_ENGINE]).llm, resolve=True)
    assert isinstance(cfg, dict)
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def planner_messages(user: str, history: Sequence[str]) -> tuple[dict[str, str], ...]:
    return (
        {"role": "system", "content": "You split a shopper into personas. Answer in JSON."},
        {"role": "user", "content": f"Shopper {user}. Season: winter.\nRecent activity, oldest first:"},
        {"role": "user", "content": "\n".join(history)},
    )


class ScriptedBackend:
    """Answers calls from a script of texts, in order; records what it was sent."""

    model = "scripted"

    def __init__(
        self, texts: Sequence[str], finish_reason: str = "stop", error_at: Sequence[int] = ()
    ) -> None:
        self.texts = list(texts)
        self.finish_reason = finish_reason
        self.error_at = set(error_at)
        self.calls: list[Call] = []

    def complete(self, calls: Sequence[Call]) -> list[Completion]:
        out = []
        for call in calls:
            index = len(self.calls)
            self.calls.append(call)
            if index in self.error_at:
                out.append(Completion("", 0, None, 0, None, 1.0, error="connection reset"))
                continue
            text = self.texts[index]
            out.append(Completion(text, call.rendered.n_tokens, 0, len(text) // 4, self.finish_reason, 5.0))
        return out

    def close(self) -> None:
        pass


Answer = Callable[[str, str], "str | None"]


class AgentBackend:
    """Answers each call with `answer(agent, prompt_text)` where agent is the output schema's
    title (PlannerOutput, ExpertOutput, ArbiterOutput, StyleGuideOutput, ...); None is a
    transport error. Records the size of every batch it is handed."""

    model = "scripted-agents"

    def __init__(self, renderer: PromptRenderer, answer: Answer) -> None:
        self.renderer = renderer
        self.answer = answer
        self.batches: list[list[str]] = []

    def complete(self, calls: Sequence[Call]) -> list[Completion]:
        out, agents = [], []
        for call in calls:
            agent = str((call.schema or {}).get("title"))
            agents.append(agent)
            text = self.answer(agent, self.renderer.tokenizer.decode(call.rendered.token_ids))
            if text is None:
                out.append(Completion("", 0, None, 0, None, 1.0, error="connection reset"))
            else:
                out.append(Completion(text, call.rendered.n_tokens, 0, len(text) // 4, "stop", 2.0))
        self.batches.append(agents)
        return out

    def close(self) -> None:
        pass


def served_engine(llm_cfg: dict[str, Any]) -> Engine:
    """An engine on the session's shared real vLLM server (started on first use), two attempts."""
    from recgpt.llm.engine import Engine, RetryPolicy
    from recgpt.llm.http_backend import OpenAIHTTPBackend
    from recgpt.llm.server import ensure_server

    info = ensure_server(llm_cfg)
    renderer = PromptRenderer(llm_cfg["model_path"], int(llm_cfg["max_model_len"]))
    return Engine(OpenAIHTTPBackend.from_config(info.url, llm_cfg), renderer, RetryPolicy(attempts=2))
