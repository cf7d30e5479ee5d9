"""Positional re-encoding: rotating post-RoPE keys by delta == encoding them at p + delta.

Checked for default RoPE (theta 1e4 and 1e6) and llama3-scaled RoPE (the tiny family's small
original context, and Llama-3.1's real settings: head_dim 128, theta 5e5, factor 8, original
8192), both through `apply_rope` directly and through `BranchCaches.reencoded` (per-branch
worker offsets P_i, padding slots and absent branches included).

Precision note: in fp32 a RoPE angle p * f is rounded to the float32 spacing at p * f
(2.4e-4 rad at p = 3000), for the direct encoding and for the rotation alike. So the 1e-5
criterion is asserted where that spacing allows it (angles < 128 rad, |x| <= 1); at positions
1000-3000 the composed and the direct encodings are asserted to agree within
2 * spacing(max angle) * max|x|, which is the fp32 quantisation of the angle itself and what
transformers' own RoPE shows against a float64 truth at those positions.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import helpers
import torch_reference as tr
from ps_jax.cache.branches import BranchCaches
from ps_jax.model import ModelConfig
from ps_jax.model.rope import apply_rope, inverse_frequencies
from synth_helpers import max_diff, report

LLAMA31 = dict(
  hidden_size=512,
  rope_theta=500000.0,
  max_position_embeddings=131072,
  rope_scaling={
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
  },
)
SMALL = 128  # below this many radians the fp32 angle spacing is <= 7.6e-6
CONFIGS = {
  "default_theta1e4": ("llama", {}),
  "default_theta1e6_h32": ("qwen3", {}),
  "llama3_tiny": ("llama3_tied", {}),
  "llama3_llama31": ("llama3_tied", LLAMA31),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def rope_config(request):
  family, overrides = CONFIGS[request.param]
  hf_config = helpers.tiny_hf_config(family, **overrides)
  config = ModelConfig.from_hf(hf_config.to_dict())
  return request.param, hf_config, config


def _rope(x, positions, inv_freq):
  return np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(positions, jnp.int32), inv_freq))


def _fp32_tol(max_position, inv_freq, x) -> float:
  angle = np.float32(max_position * float(np.max(inv_freq)))
  return 2.0 * float(np.spacing(angle)) * float(np.max(np.abs(x)))


def test_inverse_frequencies_match_transformers(rope_config):
  name, hf_config, config = rope_config
  ours = inverse_frequencies(config)
  theirs = tr.hf_rotary(hf_config).inv_freq.numpy()
  rel = float(np.max(np.abs(ours - theirs) / theirs))
  report(f"{name} inv_freq relative diff vs transformers", rel)
  assert ours.shape == theirs.shape and rel <= 3e-7  # <= ~2 ulp
  if config.rope_scaling.kind == "llama3":  # scaling is really in effect
    plain = inverse_frequencies(
      ModelConfig(**{**config.__dict__, "rope_scaling": type(config.rope_scaling)()})
    )
    assert np.max(np.abs(plain - ours) / plain) > 0.5


@pytest.mark.parametrize("start", [0, 60, 1000, 3000])
def test_rotation_by_delta_equals_encoding_at_target(rope_config, start):
  name, hf_config, config = rope_config
  inv = inverse_frequencies(config)
  rng = np.random.default_rng(start)
  t = 48
  x = rng.uniform(-1, 1, (t, 2, config.head_dim)).astype(np.float32)  # [T, heads, H]
  p = start + np.arange(t)
  at_p = _rope(x, p, inv)
  # transformers' RoPE at the same positions (independent implementation of the scaling).
  d_hf = max_diff(at_p, tr.hf_rope(x, p, hf_config))
  tol_hf = max(2e-6, 2 * _fp32_tol(p.max(), inv, x))
  results = {}
  for label, target in (
    ("to_0", np.arange(t)),  # worker re-encoding
    ("shuffled", rng.integers(0, 120, t)),  # arbitrary targets
    ("forward", p + 700),
  ):  # positive deltas
    composed = _rope(at_p, target - p, inv)
    direct = _rope(x, target, inv)
    results[label] = max_diff(composed, direct)
    biggest = max(int(p.max()), int(np.max(np.abs(target))), int(np.max(np.abs(target - p))))
    tol = 1e-5 if biggest < SMALL else _fp32_tol(biggest, inv, x)
    report(f"{name} start={start} re-encode {label} (tol {tol:.1e})", results[label])
    assert results[label] <= tol, (label, results[label], tol)
  report(f"{name} start={start} apply_rope vs transformers (tol {tol_hf:.1e})", d_hf)
  assert d_hf <= tol_hf


@pytest.mark.parametrize("large", [False, True])
def test_branch_caches_reencoded(rope_config, large):
  """BranchCaches.reencoded moves branch r's keys from P_r + j to j, leaves values and padding
  semantics alone and sets positions to the slot indices."""
  name, _, config = rope_config
  inv = inverse_frequencies(config)
  nl, b, r, s, kh, h = 2, 2, 4, 16, 2, config.head_dim
  rng = np.random.default_rng(1 + large)
  lengths = np.array([[16, 5, 11, 0], [3, 0, 0, 0]], np.int32)
  offsets = (
    np.array([[0, 17, 90, 0], [64, 0, 0, 0]])
    if not large
    else np.array([[1000, 2047, 2980, 0], [1500, 0, 0, 0]])
  )
  positions = (offsets[..., None] + np.arange(s)).astype(np.int32)  # [B, R, S]
  raw = rng.uniform(-1, 1, (nl, b, r, s, kh, h)).astype(np.float32)
  keys = _rope(raw, np.broadcast_to(positions, raw.shape[:4]), inv)
  values = rng.standard_normal(raw.shape).astype(np.float32)
  caches = BranchCaches(
    k=jnp.asarray(keys),
    v=jnp.asarray(values),
    lengths=jnp.asarray(lengths),
    positions=jnp.asarray(positions),
  )
  out = caches.reencoded(inv)
  want = _rope(raw, np.broadcast_to(np.arange(s), raw.shape[:4]), inv)
  valid = np.arange(s)[None, None, :] < lengths[..., None]  # [B, R, S]
  diff = np.abs(np.asarray(out.k) - want).max(axis=(0, 4, 5))  # [B, R, S]
  d = float(diff[valid].max())
  tol = 1e-5 if not large else _fp32_tol(offsets.max() + s, inv, raw)
  report(f"{name} BranchCaches.reencoded large={large} (tol {tol:.1e})", d)
  assert d <= tol
  np.testing.assert_array_equal(np.asarray(out.v), values)
  np.testing.assert_array_equal(np.asarray(out.lengths), lengths)
  np.testing.assert_array_equal(
    np.asarray(out.positions), np.broadcast_to(np.arange(s), positions.shape)
  )
