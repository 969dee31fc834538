#!/usr/bin/env bash
# Build the wheel and use it instead of the source checkout: the CLI's help, the embedded recipe (package data),
# the shipped speaking model's files and an import of every module, so a packaging slip fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(realpath "${MOLE_LLAMA_VENV:-.venv}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$VENV/bin/pip" --disable-pip-version-check --quiet wheel --no-deps --no-build-isolation -w "$WORK/dist" .
"$VENV/bin/pip" --disable-pip-version-check --quiet install --no-deps --target "$WORK/site" "$WORK"/dist/*.whl
cd "$WORK"  # away from the checkout, so only the wheel's copy of mole_llama is importable first
PYTHONPATH="$WORK/site" "$VENV/bin/python" - "$WORK/site" <<'PY'
import importlib, pkgutil, sys
from pathlib import Path

import mole_llama
site = Path(sys.argv[1]).resolve()
assert Path(mole_llama.__file__).resolve().is_relative_to(site), f"imported {mole_llama.__file__}, not the wheel"
for module in pkgutil.walk_packages(mole_llama.__path__, "mole_llama."):
    importlib.import_module(module.name)
from mole_llama.training.recipes import RECIPES_DIR, load_recipe
for name in ("embedded", "paper"):
    load_recipe(name)
assert (RECIPES_DIR / "accelerate" / "cpu_2proc.yaml").is_file()
shipped = site / "mole_llama" / "embedded" / "weights" / "tts-llama"
assert (shipped / "speech_expert" / "adapter_model.safetensors").is_file(), "the shipped speech expert is missing"
print(f"[wheel] ok: every module imports, recipes and shipped weights are in {site}")
PY
PYTHONPATH="$WORK/site" "$VENV/bin/python" -m mole_llama.cli --help >/dev/null
echo "[wheel] mole-llama --help runs from the wheel"
