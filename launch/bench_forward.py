r"""Forward throughput benchmark: ps_jax vs transformers eager, prefill and decode tok/s.

  python -m launch.bench_forward --config configs/bench_forward.py
  python -m launch.bench_forward --config configs/bench_forward.py --config.bench.repeats=3

Writes <config.out>.json, .md and .png (default docs/benchmarks/forward.*).
"""

from __future__ import annotations

import os
import time

# As launch.bench_ttft: torch's OpenMP threads wait passively at barriers (busy-waiting made
# transformers 5-10x slower whenever another process shared the cores). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from absl import app, flags, logging
from ml_collections import config_flags

from launch import _flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (see configs/bench_forward.py).", lock_config=True
)
flags.mark_flags_as_required(["config"])  # a clear usage error, before anything runs


def set_threads(n: int) -> dict:
  """Gives both frameworks n CPU threads (0 = all schedulable cores); call before JAX runs.

  XLA's CPU client sizes its thread pool from the process's CPU affinity, so n below the
  schedulable cores narrows the affinity to n cores; torch gets torch.set_num_threads(n).
  """
  from ps_jax.bench import report  # pylint: disable=import-outside-toplevel

  cores = report.schedulable_cores()
  n = cores if n <= 0 else n
  if n < cores:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])
  out = {
    "cores_used": report.schedulable_cores(),
    "xla": "CPU client default (one thread per schedulable core)",
  }
  try:
    import torch  # pylint: disable=import-outside-toplevel

    torch.set_num_threads(n)
    out["torch_intra_op"] = torch.get_num_threads()
  except ImportError:
    pass
  return out


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _flags.initialize_distributed()  # first: before anything queries devices
  c = _CONFIG.value
  threads = set_threads(c.num_threads)  # before anything runs on JAX's CPU backend
  import ps_jax as ps  # pylint: disable=import-outside-toplevel
  from ps_jax.bench import (  # pylint: disable=import-outside-toplevel
    decode_analysis,
    forward,
    forward_report,
    torch_models,
  )
  from ps_jax.experiment import dtype  # pylint: disable=import-outside-toplevel

  bench = forward.ForwardBenchConfig(
    **{k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in c.bench.to_dict().items()}
  )
  start = time.perf_counter()
  model, tokenizer = ps.load(c.model, dtype=dtype(c.dtype))
  logging.info("ps_jax load: %.2f s", time.perf_counter() - start)
  torch_model = None
  if c.torch:
    start = time.perf_counter()
    torch_model = torch_models.load_torch_model(c.model, c.dtype, attention=c.torch_attention)
    logging.info("transformers load: %.2f s", time.perf_counter() - start)

  result = forward.run(
    model,
    tokenizer,
    config=bench,
    torch_model=torch_model,
    model_name=c.model,
    env_extra={"threads": threads, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
    log=lambda s: logging.info("%s", s),
  )
  notes = ""
  if c.analysis:
    result["decode_step_analysis"] = decode_analysis.decode_step_analysis(
      model,
      batches=bench.decode_batches,
      cache_len=bench.decode_prompt_tokens + bench.decode_new_tokens,
      repeats=max(bench.repeats, 5),
    )
    notes = decode_analysis.XLA_CPU_DECODE_NOTES
  result["environment"]["load_average_end"] = list(os.getloadavg())
  out = c.out if os.path.isabs(c.out) else os.path.join(_ROOT, c.out)
  paths = forward_report.write(result, out, notes)
  print(forward_report.markdown(result, notes))
  print("wrote " + ", ".join(paths.values()), flush=True)


if __name__ == "__main__":
  app.run(main)
