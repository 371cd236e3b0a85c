#!/usr/bin/env bash
# Runs `python -m "$@"` in the checkout's virtualenv, e.g. tpu/run.sh fcrl.generate --prompt hi
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m "$@"
