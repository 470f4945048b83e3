"""Item text embeddings: which text an item is embedded from, the content hash that decides
whether it must be embedded again, and the sentence-transformers model that embeds it."""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from recgpt.errors import ConfigError

# Separates the hashed fields so ("ab", "c") and ("a", "bc") never collide.
FIELD_SEP = "\u241f"


def item_text(title: str, category: str | None, category_path: str | None, brand: str | None) -> str:
    """What an item is embedded from: its title, where it sits in the catalog and its brand."""
    parts = [title.strip(), (category_path or category or "").strip(), (brand or "").strip()]
    return " | ".join(p for p in parts if p)


def content_hash(model_name: str, text: str) -> str:
    """Identity of an embedding: the same text under the same model is never embedded twice."""
    return hashlib.sha256(f"{model_name}{FIELD_SEP}{text}".encode()).hexdigest()[:16]


def model_folder(cfg: Mapping[str, Any]) -> str:
    if cfg.get("model_path"):
        return str(cfg["model_path"])
    package = cfg.get("package")
    if not package:
        raise ConfigError("embedding.model_path or embedding.package must be set")
    try:
        module = importlib.import_module(str(package))
    except ImportError as exc:
        raise ConfigError(f"embedding model package {package!r} is not installed: run `make setup`") from exc
    return str(module.get_model_path())


@cache
def _vocabulary_file_words(path: str) -> frozenset[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return frozenset(w for w in (line.strip() for line in lines) if re.fullmatch(r"[^\W\d_]+", w))


def vocabulary_words(cfg: Mapping[str, Any]) -> frozenset[str]:
    """The whole words (letters only) of the embedding model's WordPiece vocabulary,
    `vocab.txt` in its folder: a general word list that ships with the model (MiniLM's holds
    about 21,000 English words), read once per process."""
    path = Path(model_folder(cfg)) / "vocab.txt"
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist: the known-word check reads the embedding model's WordPiece "
            "vocabulary (set pipeline.agents.validation.catalog_words=null to leave the check out)"
        )
    return _vocabulary_file_words(str(path))


class Embedder:
    """A sentence-transformers model loaded once (per process) from a local folder, offline."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Loading weights" bar per Python worker otherwise

        self.name = str(cfg["model_name"])
        self.normalize = bool(cfg.get("normalize", True))
        self.batch_size = int(cfg.get("batch_size", 256))
        folder = model_folder(cfg)
        if not Path(folder).is_dir():
            raise ConfigError(f"embedding model folder {folder} does not exist")
        self.model = SentenceTransformer(folder, device=str(cfg.get("device", "cpu")))
        dimension = self.model.get_embedding_dimension()
        if dimension is None:
            raise ConfigError(f"{self.name} does not declare its embedding dimension")
        self.dimension = int(dimension)
        expected = cfg.get("dimension")
        if expected is not None and int(expected) != self.dimension:
            raise ConfigError(
                f"embedding.dimension is {expected} but {self.name} makes {self.dimension}-d vectors"
            )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
