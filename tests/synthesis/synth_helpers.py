"""Small JAX-side helpers for the Parallel-Synthesis tests (no references computed here)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

import ps_jax as ps


def random_adapter(
  config, *, seed: int, rank: int = 4, scale: float = 0.15, mapper_out_scale: float = 1.0, **kwargs
) -> ps.Adapter:
  """`Adapter.create(config)` with every weight random and non-zero (LoRA B and the mapper's
  zero-initialised output layer included), so the adapter is far from the identity."""
  adapter = ps.Adapter.create(config, rank=rank, alpha=2.0 * rank, seed=seed, **kwargs)
  graphdef, state = nnx.split(adapter)
  pure = nnx.to_pure_dict(state)
  rng = np.random.default_rng(seed + 1000)

  def draw(path, x):
    names = [getattr(p, "key", str(p)) for p in path]
    if names[0] == "lora":
      return (scale * rng.standard_normal(np.shape(x))).astype(np.float32)
    s = mapper_out_scale if names[-1] in ("w2", "b2") else 1.0
    return (s * rng.uniform(-1, 1, np.shape(x))).astype(np.float32)

  pure = jax.tree_util.tree_map_with_path(draw, pure)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def logits_np(model, branches, synth_tokens, method, adapter=None, lengths=None) -> np.ndarray:
  return np.asarray(
    ps.synthesis_logits(
      model, branches, synth_tokens, method=method, adapter=adapter, lengths=lengths
    )
  )


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def valid_rows_diff(a: np.ndarray, b: np.ndarray, lengths: Sequence[int]) -> float:
  """max |a - b| over rows [i, :lengths[i]] of two [B, T, V] arrays (widths may differ)."""
  return max(max_diff(a[i, :n], b[i, :n]) for i, n in enumerate(lengths))


def report(name: str, value: float) -> None:
  """Prints a measured number (visible with `pytest -s`; collected in the report)."""
  print(f"\n[measured] {name} = {value:.3e}")
