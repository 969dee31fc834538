#!/usr/bin/env bash
# Run the whole test suite (tiny random models plus the slow tests on the real embedded SmolLM2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${MOLE_LLAMA_VENV:-.venv}/bin/python" -m pytest -q "$@"
