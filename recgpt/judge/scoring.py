"""Yes/no questions to the judge model, answered by token probabilities rather than by one
sampled word: the request generates one token with its most likely alternatives, and the score
is P(yes) / (P(yes) + P(no)) over the tokens that read as either answer. A weak model's sampled
word flips with any wording; the probability moves smoothly, and a threshold calibrated on a
labelled set turns it into a verdict."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from recgpt.agents.text import field_text
from recgpt.judge.verdicts import JudgedBy, Threshold, Verdict, unjudged
from recgpt.llm.engine import Engine
from recgpt.llm.request import Request, Result, Sampling

YES = frozenset({"yes", "y", "true"})
NO = frozenset({"no", "n", "false"})


def yes_no_request(
    key: str,
    system: str,
    blocks: Sequence[tuple[str, str]],
    question: str,
    user_id: str | None,
    top: int,
    min_digits: int,
    block_chars: int = 400,
) -> Request:
    """One scoring call: the fixed `system` text (the same for every case of a dimension, so the
    engine's prefix cache serves it once), the case's data in delimited blocks (untrusted text,
    cleaned so it cannot close a block or add a line; one of a hostile form is left empty), then
    the question."""
    data = "\n".join(f"<{name}>{field_text(text, block_chars, min_digits)}</{name}>" for name, text in blocks)
    return Request(
        key,
        (
            {"role": "system", "content": system},
            {"role": "user", "content": f"{data}\n{question} Answer Yes or No."},
        ),
        sampling=Sampling(max_tokens=1, temperature=0.0, logprobs=top),
        user_id=user_id,
    )


def yes_probability(top_logprobs: Sequence[Mapping[str, float]] | None) -> float | None:
    """P(yes) / (P(yes) + P(no)) at the first generated position; None when neither answer is
    among the returned tokens (the model meant to say something else)."""
    if not top_logprobs:
        return None
    yes = no = 0.0
    for token, logprob in top_logprobs[0].items():
        word = token.strip().strip(".,!").lower()
        if word in YES:
            yes += math.exp(logprob)
        elif word in NO:
            no += math.exp(logprob)
    if yes + no == 0.0:
        return None
    return yes / (yes + no)


def judged_by_llm(
    engine: Engine | None,
    requests: Sequence[Request],
    dimension: str,
    threshold: Threshold,
    calls: list[tuple[str, Result]] | None = None,
) -> list[Verdict]:
    """One verdict per request, in one engine batch (the dimension's system prefix is shared):
    P(yes) against `threshold`; unjudged when there is no judge model or no usable answer.
    Each engine result is appended to `calls` as (dimension, result), for the ledger."""
    if engine is None:
        return [unjudged(dimension, JudgedBy.LLM, "no judge model") for _ in requests]
    verdicts = []
    for result in engine.generate(list(requests)):
        if calls is not None:
            calls.append((dimension, result))
        p = yes_probability(result.top_logprobs) if result.ok else None
        if p is None:
            verdicts.append(unjudged(dimension, JudgedBy.LLM, result.error or "answered neither yes nor no"))
        else:
            verdicts.append(threshold.verdict(dimension, p, JudgedBy.LLM, f"P(yes) {p:.2f}"))
    return verdicts
