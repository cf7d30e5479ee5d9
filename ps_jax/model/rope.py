"""Rotary position embeddings (HF "rotate half" layout) with explicit position ids.

RoPE rotations compose: rotating a key encoded at position p by delta gives exactly the
key encoded at p + delta. `apply_rope(k, delta)` is therefore also the positional
re-encoding of cached keys.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ps_jax.model.config import ModelConfig
from ps_jax.typing import Array


def inverse_frequencies(config: ModelConfig) -> np.ndarray:
  """[H/2] inverse frequencies, scaled as the model was trained (fp32, as transformers)."""
  h = config.head_dim
  exponents = np.arange(0, h, 2, dtype=np.float32) / np.float32(h)
  inv_freq = (1.0 / (np.float32(config.rope_theta) ** exponents)).astype(np.float32)
  s = config.rope_scaling
  if s.kind == "linear":
    inv_freq = inv_freq / s.factor
  elif s.kind == "llama3":
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
      s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    inv_freq = np.where(
      wavelen > low_wavelen,
      inv_freq / s.factor,
      np.where(wavelen < high_wavelen, inv_freq, smoothed),
    )
  return inv_freq.astype(np.float32)


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
  """Rotates x [..., T, heads, H] to positions [..., T] (computed in fp32)."""
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)
  cos = jnp.cos(angles)[..., None, :]  # [..., T, 1, H/2]
  sin = jnp.sin(angles)[..., None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
