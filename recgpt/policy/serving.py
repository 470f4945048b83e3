"""Serving a tuned policy: `llm.policy` names a train_policy artifact (a version under
`policy.artifacts_dir`, or `latest`), and every LLM stage of the run then loads its weights in
place of the base model's.

One engine serves a stage, so the tuned weights answer all three V2 roles (and the V1 routes and
the explanation steps), although training rewarded the Expert's answers only: serving the
Experts alone would need a second engine beside the first, or adapter support the CPU build of
vLLM lacks. The input embeddings were frozen in training, so the hybrid adaptor trained for the
base model stays valid: it is checked against the base model's name.

The served model's name is `<base>+policy-<version>`, so the ledger and every output table
record which policy produced a row. A policy is refused on a run date before its
`trained_through`: that date's evaluation window would overlap the windows it was rewarded on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recgpt.errors import ConfigError
from recgpt.rundate import RunDate

LATEST = "latest"
META = "policy.json"  # beside the weights: what the policy was trained from, on what, how


def policy_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META
    if not path.is_file():
        raise ConfigError(
            f"{folder} is not a policy artifact (no {META}): `python -m jobs.train_policy` trains one"
        )
    return dict(json.loads(path.read_text()))


def policy_folder(root: str | Path, policy: str, base_model: str) -> Path:
    """The artifact `policy` names under `root`; `latest` is the newest trained for `base_model`."""
    root = Path(root)
    if policy != LATEST:
        folder = root / policy
        if not (folder / META).is_file():
            raise ConfigError(
                f"llm.policy={policy}: no policy artifact {folder} (`python -m jobs.train_policy` "
                f"trains one; those under {root}: {', '.join(versions(root)) or 'none'})"
            )
        return folder
    found = sorted(root.glob(f"*/{META}"), key=lambda p: p.stat().st_mtime)
    mine = [f for f in found if _base(f.parent) == base_model]
    if not mine:
        raise ConfigError(f"llm.policy=latest: no policy artifact for {base_model} under {root}")
    return mine[-1].parent


def versions(root: Path) -> list[str]:
    return sorted(p.parent.name for p in root.glob(f"*/{META}"))


def _base(folder: Path) -> str:
    return str(policy_meta(folder).get("base_model"))


def served_name(base_model: str, version: str) -> str:
    return f"{base_model}+policy-{version}"


def check_date(trained_through: str, dt: RunDate, version: str) -> None:
    """Refuse a run date whose evaluation would score days the policy was rewarded on."""
    first = RunDate.parse(trained_through, "policy trained_through")
    if dt.day < first.day:
        raise ConfigError(
            f"policy {version} was rewarded on behaviour up to {first.iso} (its trained_through): "
            f"run dates from {first.iso} on may use it, not {dt.iso} (a leak into the evaluation)"
        )


def with_policy(llm: Mapping[str, Any], root: str | Path, dt: RunDate) -> dict[str, Any]:
    """The `llm` config serving the policy `llm.policy` (unchanged when it is unset). Applying it
    twice is harmless: a config that already serves it is only checked against `dt` again."""
    out = dict(llm)
    policy = out.get("policy")
    if not policy:
        return out
    if out.get("policy_version"):  # already resolved (the nightly chain prepares each stage)
        check_date(str(out["policy_trained_through"]), dt, str(out["policy_version"]))
        return out
    base = str(out["model_name"])
    folder = policy_folder(root, str(policy), base)
    meta = policy_meta(folder)
    if meta.get("base_model") != base:
        raise ConfigError(
            f"policy {folder.name} was tuned from {meta.get('base_model')}, this run's llm is {base}: "
            "pick the llm it was tuned from"
        )
    version = str(meta.get("version") or folder.name)
    check_date(str(meta["trained_through"]), dt, version)
    out.update(
        model_path=str(folder),
        tokenizer_path=str(folder),
        model_name=served_name(base, version),
        base_model_name=base,
        policy_version=version,
        policy_trained_through=str(meta["trained_through"]),
    )
    return out


def base_model_name(llm: Mapping[str, Any]) -> str:
    """The name of the model a policy was tuned from (the model's own name without a policy)."""
    return str(llm.get("base_model_name") or llm["model_name"])
