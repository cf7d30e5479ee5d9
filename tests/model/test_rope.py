"""RoPE: inverse frequencies equal transformers' own; rotation matches HF; rotations compose."""

from __future__ import annotations

import math

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import helpers
from ps_jax.model import ModelConfig
from ps_jax.model.rope import apply_rope, inverse_frequencies


def _hf_inv_freq(hf_config) -> np.ndarray:
  rope_type = hf_config.rope_parameters["rope_type"]
  if rope_type == "default":
    # The default init lives on the model's rotary embedding; build a 1-layer model to get it.
    from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel

    hf_config.num_hidden_layers = 1
    return AutoModelForCausalLM.from_config(hf_config).model.rotary_emb.inv_freq.numpy()
  return ROPE_INIT_FUNCTIONS[rope_type](hf_config)[0].numpy()


@pytest.mark.parametrize(
  "family,overrides",
  [
    ("llama", {}),
    ("llama3_tied", {}),
    ("qwen3", {}),  # head_dim 32 != hidden / heads
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    # Real Llama-3.2 numbers (head_dim 64, theta 5e5, factor 32, original context 8192).
    (
      "llama3_tied",
      {
        "hidden_size": 256,
        "num_attention_heads": 4,
        "rope_theta": 500000.0,
        "rope_scaling": {
          "rope_type": "llama3",
          "factor": 32.0,
          "low_freq_factor": 1.0,
          "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192,
        },
        "max_position_embeddings": 131072,
      },
    ),
  ],
)
def test_inverse_frequencies_equal_transformers(family, overrides):
  hf_config = helpers.tiny_hf_config(family, **overrides)
  ours = inverse_frequencies(ModelConfig.from_hf(hf_config.to_dict()))
  ref = _hf_inv_freq(hf_config)
  rel = float(np.max(np.abs(ours - ref) / np.abs(ref)))
  kind = hf_config.rope_parameters["rope_type"]
  print(f"\n[{family}, {kind}, head_dim {ours.shape[0] * 2}] inv_freq max rel diff {rel:.1e}")
  assert ours.dtype == np.float32 and ours.shape == ref.shape
  assert rel <= 1e-6


def test_llama3_scaling_covers_all_three_bands():
  """The tiny llama3 config is small enough that scaled, smoothed and kept bands all occur."""
  c = ModelConfig.from_hf(helpers.tiny_hf_config("llama3_tied").to_dict())
  plain = inverse_frequencies(ModelConfig.from_hf(helpers.tiny_hf_config("llama").to_dict()))
  ratio = plain / inverse_frequencies(c)
  assert np.isclose(ratio, 1.0).any()  # high frequencies kept
  assert np.isclose(ratio, 8.0).any()  # low frequencies divided by factor
  assert ((ratio > 1.01) & (ratio < 7.99)).any()  # the smoothed band between


def _hf_rotate(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
  """transformers' apply_rotary_pos_emb on x [B, T, heads, H] (it wants [B, heads, T, H])."""
  from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # pylint: disable=import-outside-toplevel

  freqs = positions[..., None].astype(np.float32) * inv_freq  # [B, T, H/2]
  emb = np.concatenate([freqs, freqs], axis=-1)
  cos, sin = torch.as_tensor(np.cos(emb)), torch.as_tensor(np.sin(emb))
  xt = torch.as_tensor(x).transpose(1, 2)
  out, _ = apply_rotary_pos_emb(xt, xt, cos, sin)
  return out.transpose(1, 2).numpy()


def test_apply_rope_matches_transformers():
  c = ModelConfig.from_hf(helpers.tiny_hf_config("llama3_tied").to_dict())
  inv = inverse_frequencies(c)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 3, c.head_dim)).astype(np.float32)
  pos = np.array([[0, 1, 2, 3, 4], [7, 9, 100, 101, 255]], np.int32)
  ours = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(pos), inv))
  diff = float(np.abs(ours - _hf_rotate(x, pos, inv)).max())
  assert diff <= 1e-5
  # Position 0 is the identity; norms are preserved.
  np.testing.assert_allclose(ours[0, 0], x[0, 0], atol=1e-7)
  np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(p=st.integers(0, 300), delta=st.integers(-300, 300))
def test_rotations_compose(p, delta):
  """Rotating a key encoded at p by delta == encoding it at p + delta (re-encoding relies on it)."""
  inv = np.asarray(10000.0 ** (-np.arange(0, 16, 2) / 16), np.float32)
  x = jnp.asarray(np.random.default_rng(p).normal(size=(1, 1, 2, 16)), jnp.float32)
  twice = apply_rope(apply_rope(x, jnp.full((1, 1), p), inv), jnp.full((1, 1), delta), inv)
  once = apply_rope(x, jnp.full((1, 1), p + delta), inv)
  # fp32 angles of size ~300 carry ~300 * 2^-24 rad of rounding each.
  np.testing.assert_allclose(np.asarray(twice), np.asarray(once), atol=1e-4)


def test_scores_depend_only_on_relative_position():
  c = ModelConfig.from_hf(helpers.tiny_hf_config("llama").to_dict())
  inv = inverse_frequencies(c)
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(1, 1, 1, c.head_dim)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, c.head_dim)), jnp.float32)

  def score(pq, pk):
    return float(
      jnp.sum(apply_rope(q, jnp.full((1, 1), pq), inv) * apply_rope(k, jnp.full((1, 1), pk), inv))
    )

  assert math.isclose(score(10, 3), score(107, 100), abs_tol=1e-4)
  assert not math.isclose(score(10, 3), score(10, 4), abs_tol=1e-3)
