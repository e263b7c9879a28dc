#!/usr/bin/env bash
# The README's main command: set up .venv, then fine-tune SmolLM2-135M-Instruct through the Tinker SDK.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/loraplane demo "$@"
