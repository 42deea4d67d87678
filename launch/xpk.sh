#!/usr/bin/env bash
# Train on GKE through xpk: one workload whose pods (one per TPU host) all run the
# same `jaxtune train` command.
#
# usage: launch/xpk.sh CONFIG [--config.KEY=VALUE ...]
#
#   CONFIG             a config file inside this checkout, e.g. configs/qwen3_8b_v6e16.py
#
# environment:
#   CLUSTER            (required) an xpk cluster with a node pool of TPU_TYPE (`xpk cluster create`)
#   TPU_TYPE           (required) e.g. v5p-32, v6e-16
#   WORKLOAD           workload name (default: jt-<config name>-<time>, lowercase, <= 40 characters)
#   NUM_SLICES         slices (default: 1; the recipes are written for one slice)
#   PROJECT, ZONE      passed to xpk as --project / --zone when set
#   DOCKER_IMAGE       an image with jaxtune and jax[tpu] installed whose working directory is a
#                      jaxtune checkout: the command runs in it as is
#   BASE_DOCKER_IMAGE  otherwise xpk builds an image from this base (default: python:3.11) and this
#                      checkout (--script-dir), and the command pip-installs the checkout first
#   JAX_PIP            jax requirement installed in that case (default: jax[tpu])
#   FORWARD_ENV        names of local variables exported in the workload (default: HF_TOKEN)
#   XPK                the xpk command (default: xpk)
#   XPK_ARGS           more arguments for `xpk workload create`, word-split (e.g. "--priority=high")
#   DRY_RUN=1          print the xpk command instead of running it
#
# GKE sets TPU_WORKER_HOSTNAMES / TPU_WORKER_ID in every pod; jaxtune then calls
# jax.distributed.initialize(). Data and run.dir must be paths every pod sees (e.g. a
# gcsfuse or Filestore volume); `xpk workload list --cluster $CLUSTER` shows progress.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/common.bash
source "$ROOT/launch/common.bash"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { echo "xpk.sh: $*" >&2; exit 1; }

case "${1:-}" in -h|--help|"") usage ;; esac
CONFIG=$1; shift
OVERRIDES=("$@")  # (expanded as ${OVERRIDES[@]+...}: bash < 4.4 calls an empty array unbound)

: "${CLUSTER:?set CLUSTER}" "${TPU_TYPE:?set TPU_TYPE (e.g. v5p-32)}"
DRY_RUN=${DRY_RUN:-0}
XPK=${XPK:-xpk}
JAX_PIP=${JAX_PIP:-jax[tpu]}
FORWARD_ENV=${FORWARD_ENV:-HF_TOKEN}

checkout_config "$CONFIG"  # launch/common.bash: the config, relative to this checkout

stem=$(basename "$config_file" .py | tr '[:upper:]_.' '[:lower:]--')
WORKLOAD=${WORKLOAD:-jt-$stem-$(date +%H%M%S)}
WORKLOAD=${WORKLOAD:0:40}
WORKLOAD=${WORKLOAD%-}

cmd=""
for name in $FORWARD_ENV; do  # values travel in the workload spec; a dry run shows *** instead
  if [[ -n "${!name:-}" ]]; then
    value=${!name}
    [[ "$DRY_RUN" == 1 ]] && value='***'
    cmd+="export $name=$(printf %q "$value") && "
  fi
done
image_args=()
if [[ -n "${DOCKER_IMAGE:-}" ]]; then
  image_args=(--docker-image="$DOCKER_IMAGE")
else
  image_args=(--base-docker-image="${BASE_DOCKER_IMAGE:-python:3.11}" --script-dir="$ROOT")
  cmd+="pip install -q $(printf %q "$JAX_PIP") -e . && "
fi
cmd+="jaxtune train --config $(printf %q "$CONFIG")"
for arg in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do cmd+=" $(printf %q "$arg")"; done

args=(workload create --cluster="$CLUSTER" --workload="$WORKLOAD" --tpu-type="$TPU_TYPE"
      --num-slices="${NUM_SLICES:-1}" "${image_args[@]}" --command="$cmd")
[[ -n "${PROJECT:-}" ]] && args+=(--project="$PROJECT")
[[ -n "${ZONE:-}" ]] && args+=(--zone="$ZONE")
# shellcheck disable=SC2206  # XPK_ARGS is meant to be word-split
[[ -n "${XPK_ARGS:-}" ]] && args+=(${XPK_ARGS})

if [[ "$DRY_RUN" == 1 ]]; then
  printf 'workload command: %s\n' "$cmd"
  printf '+'; printf ' %q' "$XPK" "${args[@]}"; printf '\n'
else
  "$XPK" "${args[@]}"
  echo "submitted $WORKLOAD; follow it with: $XPK workload list --cluster=$CLUSTER --workload=$WORKLOAD" >&2
fi
