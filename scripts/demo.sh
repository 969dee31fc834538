#!/usr/bin/env bash
# The main job on this machine (for now): set up, convert the embedded SmolLM2 once, build a MoLE-Llama on it
# with two fresh experts, and show that it answers exactly as the base does, with the router's expert weights.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${MOLE_LLAMA_VENV:-.venv}/bin/python" -m mole_llama.demo "$@"
