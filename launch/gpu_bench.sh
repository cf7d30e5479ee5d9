#!/usr/bin/env bash
# The GPU benchmark in one script (issue 13), within 10 minutes on one H100/H200:
#   (a) install jax[cuda12] and this project (+ its [test] extra: torch, transformers, pytest),
#   (b) print nvidia-smi,
#   (c) run the parity tests that matter (attention, chunked prefill, tiny-model parity with
#       transformers, the reference-style torch PS),
#   (d) run the TTFT GPU preset (configs/bench_ttft.py:gpu), writing ttft_gpu.{json,md,png}.
#
#   launch/gpu_bench.sh [OUT_DIR] [--dry-run]
#
# OUT_DIR: $1, else $OUT, else /tmp/ps_gpu_bench. Environment:
#   WHEELS=dir     install offline from a local wheel directory (pip --no-index --find-links)
#   VENV=dir       the virtual environment to create (default OUT_DIR/venv)
#   PYTHON=path    the interpreter that creates it (default python3); with SKIP_INSTALL=1 the
#                  interpreter used as it is
#   DRY_RUN=1      or --dry-run: the same steps on the CPU with a tiny model of the same family;
#                  the install is printed, not run (PYTHON defaults to .venv/bin/python)
#   BUDGET_S=570   the whole script's time; every step's `timeout` is cut to what is left
# Steps (c) and (d) run even when an earlier one failed; the exit status is the first failure.
# The tests' conftest pins JAX to the CPU, so step (c) checks the code, not the GPU kernels; the
# GPU run itself compares ps_jax with torch and the cuDNN prefill with the XLA one on the device
# (the "Checks on this device" section of ttft_gpu.md).
set -uo pipefail

DRY_RUN=${DRY_RUN:-0}
ARGS=()
for a in "$@"; do
  if [[ "$a" == "--dry-run" ]]; then DRY_RUN=1; else ARGS+=("$a"); fi
done
OUT_DIR=${ARGS[0]:-${OUT:-/tmp/ps_gpu_bench}}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
mkdir -p "$OUT_DIR"
START=$(date +%s)
BUDGET_S=${BUDGET_S:-570}
STATUS=0

left() { echo $((BUDGET_S - ($(date +%s) - START))); }
cap() {  # the smaller of a step's own limit and what is left of the budget (at least 10 s)
  local l
  l=$(left)
  ((l < $1)) && echo $((l > 10 ? l : 10)) || echo "$1"
}
step() { echo; echo "=== $* ($(($(date +%s) - START)) s)"; }
fail() { echo "FAILED: $1 (status $2)"; ((STATUS == 0)) && STATUS=$2; }

step "(a) install"
PIP_FROM=()
[[ -n "${WHEELS:-}" ]] && PIP_FROM=(--no-index --find-links "$WHEELS")
JAX_SPEC='jax[cuda12]>=0.10.2,<0.11'  # the project's jax range (pyproject.toml)
if ((DRY_RUN)); then
  PY=${PYTHON:-$ROOT/.venv/bin/python}
  echo "dry run: would create ${VENV:-$OUT_DIR/venv} and run:"
  echo "  pip install ${PIP_FROM[*]} -e '.[test]' '$JAX_SPEC'"
  echo "dry run: using $PY"
elif [[ "${SKIP_INSTALL:-0}" == 1 ]]; then
  PY=${PYTHON:-python3}
  echo "SKIP_INSTALL=1: using $PY as it is"
else
  VENV=${VENV:-$OUT_DIR/venv}
  "${PYTHON:-python3}" -m venv "$VENV" || fail "venv" $?
  PY=$VENV/bin/python
  timeout "$(cap 300)" "$PY" -m pip install -q "${PIP_FROM[@]}" -e ".[test]" "$JAX_SPEC" \
    || fail "pip install" $?
fi
"$PY" - <<'EOF' || fail "imports" $?
import jax, torch, transformers
print("jax", jax.__version__, jax.devices())
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__)
EOF
if ((!DRY_RUN)); then
  "$PY" -c "import jax, torch, sys; sys.exit(jax.default_backend() != 'gpu' or not torch.cuda.is_available())" \
    || fail "no GPU for jax or torch" 3
fi

step "(b) device"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi | tee "$OUT_DIR/nvidia-smi.txt"
else
  echo "no nvidia-smi on this machine" | tee "$OUT_DIR/nvidia-smi.txt"
fi

step "(c) parity tests"
TESTS=(tests/model/test_attention.py tests/model/test_prefill.py tests/parity/test_tiny_parity.py
  tests/bench/test_torch_ps.py)
timeout "$(cap 150)" "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" 2>&1 \
  | tee "$OUT_DIR/parity_tests.log" | tail -n 5
rc=${PIPESTATUS[0]}
((rc)) && fail "parity tests" "$rc"

step "(d) TTFT, GPU preset"
PRESET=gpu
((DRY_RUN)) && PRESET=gpu,dry_run=true
# The launcher saves JSON + markdown after every cell, so a timeout keeps what was measured.
# Its log goes to the terminal and bench_ttft.log; stderr (the progress bar, warnings,
# tracebacks) to bench_ttft.err, whose tail is shown on failure.
timeout "$(cap 420)" "$PY" -m launch.bench_ttft --config "configs/bench_ttft.py:$PRESET" \
  --config.output="$OUT_DIR/ttft_gpu" 2>"$OUT_DIR/bench_ttft.err" | tee "$OUT_DIR/bench_ttft.log"
rc=${PIPESTATUS[0]}
if ((rc)); then
  tail -n 30 "$OUT_DIR/bench_ttft.err"
  fail "bench_ttft" "$rc"
fi

step "done in $(($(date +%s) - START)) s"
ls -l "$OUT_DIR"
if [[ -f "$OUT_DIR/ttft_gpu.md" ]]; then
  sed -n '/^## Targets/,/^## What is measured/p' "$OUT_DIR/ttft_gpu.md"
fi
exit "$STATUS"
