#!/usr/bin/env bash
# TPU VM / pod-slice helpers. Source this file, then call the functions:
#   export TPU_NAME=fcrl-v4 TPU_ZONE=us-central2-b TPU_TYPE=v4-16 TPU_VERSION=tpu-ubuntu2204-base
#   source tpu/toolkit.sh
#   tpu_create; tpu_setup; tpu_run fcrl.generate --prompt "hi"; tpu_logs; tpu_delete
# `tpu_run` starts the same command on every worker (multi-host JAX: jax.distributed on each).

_tpu_need() {
  local v
  for v in TPU_NAME TPU_ZONE "$@"; do
    [ -n "${!v:-}" ] || { echo "tpu/toolkit.sh: set $v first" >&2; return 1; }
  done
}

tpu_create() {
  _tpu_need TPU_TYPE TPU_VERSION || return 1
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$TPU_ZONE" \
    --accelerator-type "$TPU_TYPE" --version "$TPU_VERSION"
}

tpu_ssh_all() {  # runs a shell command on every worker
  _tpu_need || return 1
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$TPU_ZONE" --worker all --command "$1"
}

tpu_setup() {  # copies this checkout to every worker and installs it with TPU jax
  _tpu_need || return 1
  gcloud compute tpus tpu-vm scp --recurse --zone "$TPU_ZONE" --worker all \
    "$(git rev-parse --show-toplevel)" "$TPU_NAME":~/
  tpu_ssh_all "cd ~/$(basename "$(git rev-parse --show-toplevel)") && ./install.sh && \
    .venv/bin/python -m pip install -q 'jax[tpu]==$(grep '^jax==' requirements.txt | cut -d= -f3)'"
}

tpu_run() {  # tpu_run fcrl.<job> [flags...]; output goes to ~/fcrl.log on each worker
  _tpu_need || return 1
  local repo
  repo=$(basename "$(git rev-parse --show-toplevel)")
  tpu_ssh_all "cd ~/$repo && nohup tpu/run.sh $(printf '%q ' "$@") > ~/fcrl.log 2>&1 &"
}

tpu_logs() {
  _tpu_need || return 1
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$TPU_ZONE" --worker "${1:-0}" \
    --command "tail -n 100 -f ~/fcrl.log"
}

tpu_delete() {
  _tpu_need || return 1
  gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$TPU_ZONE" --quiet
}
