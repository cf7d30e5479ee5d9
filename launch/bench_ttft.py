r"""Time-to-first-token benchmark: text synthesis vs Parallel-Synthesis.

  python -m launch.bench_ttft --config configs/bench_ttft.py

Loads the model (and, with config.torch_reference, transformers' own fp32 load of the same
weights), runs `ps_jax.bench.ttft.run` over the N x L grid and writes
<config.output>.{json,md,png}. See configs/bench_ttft.py for the fields and the quick mode.
"""

from __future__ import annotations

import os
import time

# torch's OpenMP threads busy-wait at barriers by default; on a CPU shared with other
# processes that made a 300-token forward take 14-21 s instead of 2-3 s (measured, 2 cores,
# load ~9). Passive waiting must be chosen before the OpenMP runtime starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from absl import app, flags, logging
from ml_collections import config_flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (see configs/bench_ttft.py).", lock_config=True
)
flags.mark_flags_as_required(["config"])  # a clear usage error, before anything runs


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import ps_jax as ps  # pylint: disable=import-outside-toplevel
  from configs import bench_ttft  # pylint: disable=import-outside-toplevel
  from ps_jax.bench import ttft  # pylint: disable=import-outside-toplevel
  from ps_jax.experiment import dtype  # pylint: disable=import-outside-toplevel

  c = _CONFIG.value.copy_and_resolve_references()
  if c.quick:  # `--config.quick=True`: quick values for the fields left at their defaults
    full = bench_ttft.get_config()
    for key, value in bench_ttft.QUICK.items():
      if c[key] == full[key]:
        c[key] = value
  config = ttft.config_from_dict(c.to_dict())
  start = time.perf_counter()
  model, tokenizer = ps.load(c.model, dtype=dtype(c.dtype))
  print(f"loaded {c.model} ({c.dtype}) in {time.perf_counter() - start:.1f} s", flush=True)
  torch_model = None
  if c.torch_reference:
    if dtype(c.dtype).name != "float32":
      logging.warning("the torch reference runs in float32 while the model is %s", c.dtype)
    torch_model = ttft.load_torch_model(c.model)
  result = ttft.run(
    model,
    tokenizer,
    config,
    torch_model=torch_model,
    model_name=c.model,
    log=lambda s: print(s, flush=True),
  )
  stem = c.output if os.path.isabs(c.output) else os.path.join(_ROOT, c.output)
  paths = ttft.write(result, stem)
  print(f"done in {result['wall_s'] / 60:.1f} min; wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
  app.run(main)
