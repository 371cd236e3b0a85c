#!/usr/bin/env bash
# TPU VM / pod-slice helpers. Source this file, then call the functions:
#   export TPU_NAME=fcrl-v5p TPU_ZONE=us-east5-a TPU_TYPE=v5p-32 TPU_VERSION=v2-alpha-tpuv5
#   source tpu/toolkit.sh
#   tpu_create; tpu_setup; tpu_run fcrl.train --config configs/egpo_qwen25_coder_7b.py; tpu_logs
#   tpu_delete
# `tpu_run` starts the same command on every worker: each joins one multi-host JAX run
# (FCRL_MULTIHOST=1: jax.distributed.initialize finds the slice's workers itself). With
# TPU_DRY_RUN=1 every function prints the gcloud commands it would run instead of running them.
# tpu/launch.sh is the same as one command line.

_tpu_need() {
  local v
  for v in TPU_NAME TPU_ZONE "$@"; do
    [ -n "${!v:-}" ] || { echo "tpu/toolkit.sh: set $v first" >&2; return 1; }
  done
}

_tpu_do() {  # runs a command, or prints it (shell-quoted) with TPU_DRY_RUN=1
  if [ "${TPU_DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

_tpu_repo() { basename "$(git rev-parse --show-toplevel)"; }

tpu_create() {
  _tpu_need TPU_TYPE TPU_VERSION || return 1
  _tpu_do gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$TPU_ZONE" \
    --accelerator-type "$TPU_TYPE" --version "$TPU_VERSION"
}

tpu_ssh_all() {  # runs a shell command on every worker
  _tpu_need || return 1
  _tpu_do gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$TPU_ZONE" --worker all \
    --command "$1"
}

tpu_setup() {  # copies this checkout to every worker and installs it with TPU jax
  _tpu_need || return 1
  local repo jax
  repo=$(_tpu_repo)
  jax=$(grep '^jax==' "$(git rev-parse --show-toplevel)/requirements.txt" | cut -d= -f3)
  _tpu_do gcloud compute tpus tpu-vm scp --recurse --zone "$TPU_ZONE" --worker all \
    "$(git rev-parse --show-toplevel)" "$TPU_NAME":~/
  tpu_ssh_all "cd ~/$repo && ./install.sh && .venv/bin/python -m pip install -q 'jax[tpu]==$jax'"
}

tpu_run() {  # tpu_run fcrl.<job> [flags...]; output goes to ~/fcrl.log on each worker
  _tpu_need || return 1
  local repo
  repo=$(_tpu_repo)
  tpu_ssh_all "cd ~/$repo && FCRL_MULTIHOST=1 nohup tpu/run.sh $(printf '%q ' "$@")> ~/fcrl.log 2>&1 &"
}

tpu_logs() {  # follows worker ${1:-0}'s log
  _tpu_need || return 1
  _tpu_do gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$TPU_ZONE" --worker "${1:-0}" \
    --command "tail -n 100 -f ~/fcrl.log"
}

tpu_delete() {
  _tpu_need || return 1
  _tpu_do gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$TPU_ZONE" --quiet
}
