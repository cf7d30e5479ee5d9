#!/usr/bin/env bash
# Trains on NUM_SLICES TPU slices (multislice over DCN) from one queued resource, the same
# command on every worker of every slice:
#
#   QR=ps-ms ZONE=us-east5-a ACCELERATOR=v5p-64 NUM_SLICES=2 WORKDIR=gs://BUCKET/run1 \
#   bash launch/tpu/multislice.sh --config=configs/demo.py
#
# The queued resource holds nodes $QR-0 .. $QR-(N-1) (--node-count, --node-prefix); the
# mesh gets --config.mesh.dcn.data=$NUM_SLICES (data parallel across slices: only the adapter's
# gradient all-reduce crosses DCN) with fsdp over each slice's chips. jax.distributed finds
# the coordinator from MEGASCALE_COORDINATOR_ADDRESS, set by the queued resource
# (--distributed=auto). Delete: gcloud compute tpus queued-resources delete "$QR" --force --async
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${QR:?set QR (the queued resource name)}" "${ZONE:?set ZONE}"
: "${WORKDIR:?set WORKDIR (gs://... visible to every worker)}"
NUM_SLICES=${NUM_SLICES:-2}
ACCELERATOR=${ACCELERATOR:-v5p-64}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5}
XLA_FLAGS_TARGET=${XLA_FLAGS_TARGET:-tpu_v5p}
REMOTE_DIR=${REMOTE_DIR:-ps_jax}

if ! gcloud compute tpus queued-resources describe "$QR" --zone="$ZONE" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  gcloud compute tpus queued-resources create "$QR" --zone="$ZONE" \
    --node-count="$NUM_SLICES" --node-prefix="$QR" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" ${EXTRA_CREATE_FLAGS:-}
fi
until [[ "$(gcloud compute tpus queued-resources describe "$QR" --zone="$ZONE" \
  --format='value(state.state)')" == ACTIVE ]]; do
  echo "waiting for $QR to become ACTIVE"
  sleep 30
done

git ls-files -z | tar --null -czf /tmp/ps_jax_src.tgz -T -
gcloud compute tpus queued-resources scp /tmp/ps_jax_src.tgz "$QR":/tmp/ --zone="$ZONE" \
  --node=all --worker=all
printf -v args '%q ' "$@"
gcloud compute tpus queued-resources ssh "$QR" --zone="$ZONE" --node=all --worker=all \
  --batch-size=64 --command="
  set -e; mkdir -p $REMOTE_DIR && tar -xzf /tmp/ps_jax_src.tgz -C $REMOTE_DIR && cd $REMOTE_DIR
  XLA_FLAGS_TARGET=$XLA_FLAGS_TARGET bash launch/tpu/run.sh python -m launch.train \
    --workdir=$WORKDIR --distributed=auto $args --config.mesh.dcn.data=$NUM_SLICES"
