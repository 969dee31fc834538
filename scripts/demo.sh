#!/usr/bin/env bash
# The main job on this machine: set up, then teach the embedded SmolLM2-135M-Instruct to speak through every
# training stage (festival corpus, offline QA data, units, codec, acoustic LM, speech expert, text expert, router),
# evaluate TTS-Llama and MoLE-Llama, and write demo_output/REPORT.md with its tables, plots and WAVs.
# Arguments go to `python -m mole_llama.embedded.demo` (--out, --profile default|tiny, --config).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${MOLE_LLAMA_VENV:-.venv}/bin/python" -m mole_llama.embedded.demo "$@"
