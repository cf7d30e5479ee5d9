r"""Time-to-first-token benchmark: text synthesis vs Parallel-Synthesis.

  python -m launch.bench_ttft --config configs/bench_ttft.py

Loads the model (or builds a random one of `random_shape`) and transformers' model with the
same weights, runs `ps_jax.bench.ttft.run` over the grid with a progress bar, saves
<config.output>.{json,md} after every cell and the plot at the end. See configs/bench_ttft.py
for the fields, the quick mode and the GPU preset.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

# torch's OpenMP threads busy-wait at barriers by default; on a CPU shared with other
# processes that made a 300-token forward take 14-21 s instead of 2-3 s (measured, 2 cores,
# load ~9). Passive waiting must be chosen before the OpenMP runtime starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# On a GPU, torch shares the device with JAX: JAX must not reserve most of its memory upfront.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from absl import app, flags
from ml_collections import config_flags

from launch import _flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (see configs/bench_ttft.py).", lock_config=True
)
flags.mark_flags_as_required(["config"])  # a clear usage error, before anything runs


def _repo_path(path: str) -> str:
  return path if not path or os.path.isabs(path) else os.path.join(_ROOT, path)


def load_models(c):
  """(ps_jax model, tokenizer, transformers model or None) as the config asks."""
  import ps_jax as ps  # pylint: disable=import-outside-toplevel
  from ps_jax.bench import torch_models  # pylint: disable=import-outside-toplevel
  from ps_jax.experiment import dtype  # pylint: disable=import-outside-toplevel

  device = torch_models.resolve_device(c.torch_device)
  if c.random_init:  # a random model borrows the source's tokenizer, not its weights
    config = dataclasses.replace(
      ps.io.load_config(c.model), **c.random_shape.to_dict(), name_or_path=None, revision=None
    )
    model, torch_model = torch_models.random_pair(
      config, dtype=c.dtype, device=device, attention=c.torch_attention, seed=c.seed
    )
    return model, ps.io.load_tokenizer(c.model), torch_model if c.torch_reference else None
  model, tokenizer = ps.load(c.model, dtype=dtype(c.dtype))
  torch_model = None
  if c.torch_reference:
    torch_model = torch_models.load_torch_model(
      c.model, c.dtype, attention=c.torch_attention, device=device
    )
  return model, tokenizer, torch_model


def _model_name(c, config) -> str:
  if not c.random_init:
    return c.model
  return (
    f"random-init {config.family} ({config.num_layers} layers, hidden {config.hidden_size}; "
    f"{c.model}'s tokenizer)"
  )


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _flags.initialize_distributed()  # first: before anything queries devices
  from configs import bench_ttft  # pylint: disable=import-outside-toplevel
  from ps_jax.bench import ttft, ttft_report  # pylint: disable=import-outside-toplevel

  c = _CONFIG.value.copy_and_resolve_references()
  if c.quick:  # `--config.quick=True`: quick values for the fields left at their defaults
    full = bench_ttft.get_config(f"preset={c.preset}")
    for key, value in bench_ttft.QUICK.items():
      if c[key] == full[key]:
        c[key] = value
  config = ttft.config_from_dict(c.to_dict())
  forward = None
  if c.forward_json and os.path.exists(_repo_path(c.forward_json)):
    with open(_repo_path(c.forward_json)) as f:
      forward = json.load(f)
  start = time.perf_counter()
  model, tokenizer, torch_model = load_models(c)
  print(f"loaded {c.model} ({c.dtype}) in {time.perf_counter() - start:.1f} s", flush=True)
  stem = _repo_path(c.output)
  result = ttft.run(
    model,
    tokenizer,
    config,
    torch_model=torch_model,
    model_name=_model_name(c, model.config),
    forward_result=forward,
    log=lambda s: print(s, flush=True),
    progress=True,
    on_cell=lambda partial: ttft_report.write(partial, stem, plot=False),
  )
  paths = ttft_report.write(result, stem)
  print(f"done in {result['wall_s'] / 60:.1f} min; wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
  app.run(main)
