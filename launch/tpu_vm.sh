#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: copy this checkout to every worker, install it,
# and run the same `jaxtune train` command on all workers at once.
#
# usage: launch/tpu_vm.sh [--create] [--no-install] [--detach] CONFIG [--config.KEY=VALUE ...]
#
#   CONFIG           a config file inside this checkout, e.g. configs/llama3_1_8b_v5p32.py
#                    (ml-collections' CONFIG:ARG form works too)
#   --create         first create the slice as a queued resource and wait until it is ACTIVE
#   --no-install     skip copying and installing the code (already done on the workers)
#   --detach         start training in the background on every worker (log: ~/jaxtune-train.log)
#                    and return; without it, the command ends when training does
#
# environment:
#   TPU_NAME         (required) the TPU VM / node name
#   ZONE             (required) e.g. us-east5-a
#   PROJECT          gcloud project (default: gcloud's configured project)
#   ACCELERATOR      with --create: e.g. v5p-32, v6e-16
#   RUNTIME_VERSION  with --create: TPU software version (default: v2-alpha-tpuv5 for v5p,
#                    v2-alpha-tpuv6e for v6e, tpu-ubuntu2204-base otherwise)
#   SPOT=1           with --create: ask for spot capacity
#   JAX_PIP          jax requirement installed on the workers (default: jax[tpu])
#   REMOTE_PYTHON    Python >= 3.11 on the workers (default: python3.11; apt-installed if missing)
#   REMOTE_DIR       where the code goes on each worker, as shell text (default: $HOME/jaxtune;
#                    it is replaced on every install)
#   REMOTE_VENV      the virtualenv on each worker, as shell text (default: $HOME/jaxtune-venv)
#   FORWARD_ENV      names of local variables to pass to the workers (default: HF_TOKEN)
#   NUM_WORKERS, COORDINATOR_IP
#                    the slice's host count and worker 0's internal IP (default: from
#                    `gcloud compute tpus tpu-vm describe`)
#   DRY_RUN=1        print the commands instead of running them
#
# Every worker gets JAX_COORDINATOR_ADDRESS (worker 0, port 8476), JAX_NUM_PROCESSES and
# JAX_PROCESS_ID (its agent-worker-number from the metadata server), which jaxtune passes to
# jax.distributed.initialize(). Data and run.dir must be paths every worker sees (NFS/Filestore
# or a gcsfuse mount): each process reads the data and writes its own checkpoint shards.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/common.bash
source "$ROOT/launch/common.bash"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { echo "tpu_vm.sh: $*" >&2; exit 1; }

CREATE=0 INSTALL=1 DETACH=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --create) CREATE=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    --detach) DETACH=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) die "unknown option $1 (the config file comes before --config.KEY=VALUE overrides)" ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || usage
CONFIG=$1; shift
OVERRIDES=("$@")  # (expanded as ${OVERRIDES[@]+...}: bash < 4.4 calls an empty array unbound)

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
DRY_RUN=${DRY_RUN:-0}
JAX_PIP=${JAX_PIP:-jax[tpu]}
REMOTE_PYTHON=${REMOTE_PYTHON:-python3.11}
REMOTE_DIR=${REMOTE_DIR:-'$HOME/jaxtune'}
REMOTE_VENV=${REMOTE_VENV:-'$HOME/jaxtune-venv'}
FORWARD_ENV=${FORWARD_ENV:-HF_TOKEN}

checkout_config "$CONFIG"  # launch/common.bash: the config, relative to this checkout

run() {
  if [[ "$DRY_RUN" == 1 ]]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}
gc() { run gcloud "$@" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"}; }

if [[ "$CREATE" == 1 ]]; then
  : "${ACCELERATOR:?set ACCELERATOR (e.g. v5p-32) to create a slice}"
  case "$ACCELERATOR" in
    v5p-*) default_runtime=v2-alpha-tpuv5 ;;
    v6e-*) default_runtime=v2-alpha-tpuv6e ;;
    *) default_runtime=tpu-ubuntu2204-base ;;
  esac
  spot=()
  [[ "${SPOT:-0}" == 1 ]] && spot=(--spot)
  gc compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
    --accelerator-type="$ACCELERATOR" --runtime-version="${RUNTIME_VERSION:-$default_runtime}" ${spot[@]+"${spot[@]}"}
  if [[ "$DRY_RUN" != 1 ]]; then
    deadline=$((SECONDS + ${CREATE_TIMEOUT:-7200}))
    while :; do
      state=$(gcloud compute tpus queued-resources describe "$TPU_NAME" --zone="$ZONE" \
        ${PROJECT:+--project="$PROJECT"} --format='value(state.state)')
      echo "queued resource $TPU_NAME: $state" >&2
      case "$state" in
        ACTIVE) break ;;
        FAILED|SUSPENDED|SUSPENDING) die "queued resource $TPU_NAME is $state" ;;
      esac
      (( SECONDS < deadline )) || die "queued resource $TPU_NAME not ACTIVE after ${CREATE_TIMEOUT:-7200}s"
      sleep 30
    done
  fi
fi

if [[ "$INSTALL" == 1 ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  run tar -C "$ROOT" --exclude=.git --exclude=.venv --exclude=venv --exclude=runs --exclude=__pycache__ \
    --exclude='*.egg-info' --exclude=.pytest_cache -czf "$tmp/jaxtune-src.tar.gz" .
  gc compute tpus tpu-vm scp "$tmp/jaxtune-src.tar.gz" "$TPU_NAME:jaxtune-src.tar.gz" --worker=all
  install_cmd="set -euo pipefail
command -v $(printf %q "$REMOTE_PYTHON") >/dev/null || { sudo apt-get update -q && sudo apt-get install -yq $(printf %q "$REMOTE_PYTHON") $(printf %q "$REMOTE_PYTHON-venv"); }
rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf \$HOME/jaxtune-src.tar.gz -C $REMOTE_DIR
[ -x $REMOTE_VENV/bin/python ] || $(printf %q "$REMOTE_PYTHON") -m venv $REMOTE_VENV
$REMOTE_VENV/bin/pip install -q -U pip
$REMOTE_VENV/bin/pip install -q $(printf %q "$JAX_PIP") -e $REMOTE_DIR"
  gc compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --command="$install_cmd"
fi

# The slice's hosts: one process each, coordinated by worker 0.
if [[ -z "${NUM_WORKERS:-}" || -z "${COORDINATOR_IP:-}" ]]; then
  if [[ "$DRY_RUN" == 1 ]]; then
    NUM_WORKERS=${NUM_WORKERS:-N} COORDINATOR_IP=${COORDINATOR_IP:-WORKER0_IP}
  else
    ips=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} \
      --format='value[delimiter=" "](networkEndpoints[].ipAddress)')
    read -r -a ip_list <<< "$ips"
    [[ ${#ip_list[@]} -ge 1 ]] || die "no network endpoints for $TPU_NAME"
    NUM_WORKERS=${NUM_WORKERS:-${#ip_list[@]}}
    COORDINATOR_IP=${COORDINATOR_IP:-${ip_list[0]}}
  fi
fi

train_cmd="cd $REMOTE_DIR"
for name in $FORWARD_ENV; do  # values travel in the ssh command line; a dry run shows *** instead
  if [[ -n "${!name:-}" ]]; then
    value=${!name}
    [[ "$DRY_RUN" == 1 ]] && value='***'
    train_cmd+=" && export $name=$(printf %q "$value")"
  fi
done
if [[ "$NUM_WORKERS" != 1 ]]; then
  train_cmd+=" && export JAX_COORDINATOR_ADDRESS=$(printf %q "$COORDINATOR_IP:8476") JAX_NUM_PROCESSES=$(printf %q "$NUM_WORKERS")"
  train_cmd+=" && export JAX_PROCESS_ID=\$(curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number) && [ -n \"\$JAX_PROCESS_ID\" ]"
fi
train_cmd+=" && exec $REMOTE_VENV/bin/jaxtune train --config $(printf %q "$CONFIG")"
for arg in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do train_cmd+=" $(printf %q "$arg")"; done
if [[ "$DETACH" == 1 ]]; then
  train_cmd="setsid nohup bash -c $(printf %q "$train_cmd") > \$HOME/jaxtune-train.log 2>&1 < /dev/null &"
fi
if [[ "$DRY_RUN" == 1 ]]; then printf 'remote: %s\n' "$train_cmd"; fi
gc compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --command="$train_cmd"
