"""The bundled model is converted once into a local folder that loads as a plain HF model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recgpt.config import load_config
from recgpt.llm import model_cache


def test_setup_left_a_converted_model_with_its_tokenizer():
    cfg = load_config(["run.stage=t"])
    target = Path(cfg.llm.model_path)
    assert model_cache.is_converted(target), "run `make setup` first"
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    assert any(target.glob("*.safetensors"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(target))
    text = tok.apply_chat_template([{"role": "user", "content": "waterproof hiking boots"}], tokenize=False)
    ids = tok(text).input_ids
    assert len(ids) > 5
    assert "waterproof hiking boots" in tok.decode(ids)


def test_ensure_model_does_not_convert_twice(tmp_path, monkeypatch):
    cfg = load_config(["run.stage=t"])
    target = Path(cfg.llm.model_path)
    calls = []
    monkeypatch.setattr(model_cache, "convert", lambda *a: calls.append(a))
    assert model_cache.ensure_model(cfg.llm.source_gguf_package, cfg.llm.source_gguf_file, target) == target
    assert calls == []


def test_missing_package_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="not installed: run `make setup`"):
        model_cache.bundled_gguf("no_such_model_package", "x.gguf")


def test_converted_weights_still_know_things():
    """A broken dequantization still loads; only generation shows it. Greedy, a few tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = str(load_config(["run.stage=t"]).llm.model_path)
    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = tok(text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
