#!/usr/bin/env bash
# One command per step of a TPU run (tpu/toolkit.sh's functions; recipes in tpu/README.md):
#   tpu/launch.sh [--dry-run] create|setup|logs|delete
#   tpu/launch.sh [--dry-run] run fcrl.train --config configs/egpo_qwen25_coder_7b.py:slice=v5p-32
#   tpu/launch.sh [--dry-run] all fcrl.train --config ...   # create, setup, run, then the logs
# Needs TPU_NAME and TPU_ZONE (and TPU_TYPE, TPU_VERSION to create). --dry-run prints the
# gcloud commands instead of running them.
set -euo pipefail
# shellcheck source=tpu/toolkit.sh
source "$(dirname "$0")/toolkit.sh"
if [ "${1:-}" = --dry-run ]; then
  export TPU_DRY_RUN=1
  shift
fi
step=${1:-}
[ $# -gt 0 ] && shift
case "$step" in
  create) tpu_create ;;
  setup) tpu_setup ;;
  run) [ $# -gt 0 ] || { echo "tpu/launch.sh: run needs a job, e.g. fcrl.train --config ..." >&2; exit 2; }
       tpu_run "$@" ;;
  logs) tpu_logs "${1:-0}" ;;
  delete) tpu_delete ;;
  all) [ $# -gt 0 ] || { echo "tpu/launch.sh: all needs a job, e.g. fcrl.train --config ..." >&2; exit 2; }
       tpu_create && tpu_setup && tpu_run "$@" && tpu_logs 0 ;;
  *) echo "tpu/launch.sh: unknown step '$step' (create, setup, run, logs, delete, all)" >&2; exit 2 ;;
esac
