#!/usr/bin/env bash
# A GKE workload through XPK (github.com/AI-Hypercomputer/xpk), a sketch: the cluster exists
# (xpk cluster create ...) and IMAGE holds this checkout with `pip install -e ".[tpu]"` (TPU)
# or ".[gpu]" (GPU) done. Every pod runs the same command; jax.distributed finds its peers
# from the variables GKE/JobSet sets (TPU_WORKER_ID, TPU_WORKER_HOSTNAMES, MEGASCALE_* on TPU):
# --distributed=auto.
#
#   CLUSTER=my-cluster IMAGE=gcr.io/PROJECT/ps_jax:latest WORKDIR=gs://BUCKET/run1 \
#   DEVICE=v5p-64 NUM_SLICES=2 bash launch/gke/xpk.sh --config=configs/demo.py
#   # GPUs: DEVICE=h100-80gb-8 NUM_NODES=4 (one process per node, 8 GPUs each)
#
# GPUs: jax detects a Kubernetes job only with the `kubernetes` package in the image
# (pip install "jax[k8s]") and a service account allowed to list the job's pods (jax's
# examples/k8s/svc-acct.yaml); without them --distributed=auto fails at start-up, never silently.
# Workload names must be DNS labels (lowercase, digits, '-').
set -euo pipefail
: "${CLUSTER:?set CLUSTER}" "${IMAGE:?set IMAGE}" "${WORKDIR:?set WORKDIR (gs://...)}"
DEVICE=${DEVICE:-v5p-64}
WORKLOAD=${WORKLOAD:-ps-jax-$(date +%m%d-%H%M)}
printf -v args '%q ' "$@"
if [[ "$DEVICE" == h100* ]]; then
  NUM_NODES=${NUM_NODES:-2}
  command="eval \"\$(python -m configs.xla_flags h100)\" && JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7 \
python -m launch.train --workdir=$WORKDIR --distributed=auto $args \
--config.mesh.granule=process --config.mesh.dcn.data=$NUM_NODES"
  xpk workload create --cluster "$CLUSTER" --workload "$WORKLOAD" --docker-image "$IMAGE" \
    --device-type "$DEVICE" --num-nodes "$NUM_NODES" --command "$command"
else
  NUM_SLICES=${NUM_SLICES:-1}
  command="bash launch/tpu/run.sh python -m launch.train --workdir=$WORKDIR \
--distributed=auto $args --config.mesh.dcn.data=$NUM_SLICES"
  xpk workload create --cluster "$CLUSTER" --workload "$WORKLOAD" --docker-image "$IMAGE" \
    --tpu-type "$DEVICE" --num-slices "$NUM_SLICES" --max-restarts 3 --command "$command"
fi
