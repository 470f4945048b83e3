"""Configuration: Hydra composition of conf/, custom resolvers, and the config hash of a run.

Entry points use `@hydra.main`; tests and tools compose the same tree with `load_config`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recgpt.rundate import RunDate, shift

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _date_add(day: str, days: Any) -> str:
    return shift(day, int(days))


def _conf_path(relative: str) -> str:
    return str(CONF_DIR / relative)


def _project_path(relative: str) -> str:
    return str(CONF_DIR.parent / relative)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("project_path"):
        OmegaConf.register_new_resolver("project_path", _project_path)
    if not OmegaConf.has_resolver("date_add"):
        OmegaConf.register_new_resolver("date_add", _date_add)
    if not OmegaConf.has_resolver("conf_path"):
        OmegaConf.register_new_resolver("conf_path", _conf_path)


register_resolvers()


def load_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose conf/ like an entry point would, without Hydra's run directory or logging."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    return cfg


def plain(node: Any) -> dict[str, Any]:
    """A config mapping as a plain dict with str keys, interpolations resolved: what settings
    objects and pickled plans take instead of OmegaConf nodes."""
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict), f"expected a config mapping, not {type(out).__name__}"
    return {str(k): v for k, v in out.items()}


def config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved config without per-run identity, so equal settings hash equal."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    run = dict(data.get("run", {}))
    run.pop("run_id", None)
    data["run"] = run
    data.pop("hydra", None)
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def new_run_id(stage: str, dt: RunDate | str) -> str:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stage}__{dt}__{stamp}__{uuid.uuid4().hex[:8]}"
