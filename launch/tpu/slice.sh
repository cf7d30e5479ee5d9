#!/usr/bin/env bash
# Trains on one TPU slice (e.g. v5p-64 = 32 chips on 8 hosts) created or reused through a
# queued resource, the same command on every worker:
#
#   TPU=ps-v5p ZONE=us-east5-a ACCELERATOR=v5p-64 RUNTIME=v2-alpha-tpuv5 \
#   WORKDIR=gs://BUCKET/run1 bash launch/tpu/slice.sh \
#       --config=configs/demo.py --config.sharding.preset=fsdp
#
# Steps: 1. create the queued resource $TPU (--node-id=$TPU) unless it exists, wait for ACTIVE
# (QUOTA: --spot via EXTRA_CREATE_FLAGS=--spot); 2. copy this checkout to every worker
# (tpu-vm scp --worker=all); 3. on every worker: bash launch/tpu/run.sh (venv bootstrap, TPU
# flags) python -m launch.train ... --distributed=auto. Delete when done:
#   gcloud compute tpus queued-resources delete "$TPU" --zone="$ZONE" --force --async
# The workdir must be visible to every host (gs:// or a shared filesystem).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${TPU:?set TPU (the queued resource and node name)}" "${ZONE:?set ZONE}"
: "${WORKDIR:?set WORKDIR (gs://... visible to every worker)}"
ACCELERATOR=${ACCELERATOR:-v5p-64}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5}
XLA_FLAGS_TARGET=${XLA_FLAGS_TARGET:-tpu_v5p}
REMOTE_DIR=${REMOTE_DIR:-ps_jax}

if ! gcloud compute tpus queued-resources describe "$TPU" --zone="$ZONE" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  gcloud compute tpus queued-resources create "$TPU" --node-id="$TPU" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" ${EXTRA_CREATE_FLAGS:-}
fi
until [[ "$(gcloud compute tpus queued-resources describe "$TPU" --zone="$ZONE" \
  --format='value(state.state)')" == ACTIVE ]]; do
  echo "waiting for $TPU to become ACTIVE"
  sleep 30
done

git ls-files -z | tar --null -czf /tmp/ps_jax_src.tgz -T -
gcloud compute tpus tpu-vm scp /tmp/ps_jax_src.tgz "$TPU":/tmp/ --zone="$ZONE" --worker=all
printf -v args '%q ' "$@"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  set -e; mkdir -p $REMOTE_DIR && tar -xzf /tmp/ps_jax_src.tgz -C $REMOTE_DIR && cd $REMOTE_DIR
  XLA_FLAGS_TARGET=$XLA_FLAGS_TARGET bash launch/tpu/run.sh python -m launch.train \
    --workdir=$WORKDIR --distributed=auto $args"
