#!/usr/bin/env bash
# Runs one command on this TPU VM worker inside the project's venv (big_vision's run_tpu.sh
# idea). slice.sh and multislice.sh call it on every worker with the same arguments:
#
#   bash launch/tpu/run.sh python -m launch.train --config=configs/demo.py \
#       --workdir=gs://BUCKET/run1 --distributed=auto
#
# First run on a worker: creates .venv and installs the package with the [tpu] extra
# (jax[tpu], pinned to the tested jax). Every run: exports the TPU compiler flags of
# configs/xla_flags/$XLA_FLAGS_TARGET.txt (default tpu_v5p) as LIBTPU_INIT_ARGS, then execs
# the command. jax.distributed finds the coordinator on the TPU VM by itself (--distributed=auto).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ $# -eq 0 ]]; then
  echo "usage: bash launch/tpu/run.sh COMMAND [ARGS...]" >&2
  exit 2
fi
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -e ".[tpu]"
fi
# shellcheck disable=SC1091
source .venv/bin/activate
eval "$(python -m configs.xla_flags "${XLA_FLAGS_TARGET:-tpu_v5p}")"
# A proxy can make the coordinator's gRPC time out (jax.distributed.initialize's docstring).
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY
exec "$@"
