"""Building blocks: RMSNorm, Linear (+LoRA), multi-source attention, parameter metadata."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

import helpers
from ps_jax.model import ModelConfig, Transformer
from ps_jax.model.layers import Linear, RMSNorm, attend


def test_rmsnorm_formula():
  norm = RMSNorm(6, 1e-5, jnp.float32)
  norm.scale[...] = jnp.linspace(0.5, 1.5, 6)
  x = np.random.default_rng(0).normal(size=(2, 3, 6)).astype(np.float32)
  ref = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-5) * np.linspace(0.5, 1.5, 6)
  np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x))), ref, rtol=1e-5, atol=1e-6)


def test_linear_bias_and_lora_delta():
  lin = Linear(4, 3, ("embed", "mlp"), bias=True, dtype=jnp.float32, rngs=nnx.Rngs(0))
  lin.bias[...] = jnp.array([1.0, 2.0, 3.0])
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
  a = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
  base = np.asarray(x @ lin.kernel[...]) + [1.0, 2.0, 3.0]
  np.testing.assert_allclose(np.asarray(lin(x)), base, rtol=1e-6)
  np.testing.assert_allclose(
    np.asarray(lin(x, {"a": a, "b": b}, 0.5)),
    base + 0.5 * np.asarray((x @ a) @ b),
    rtol=1e-5,
    atol=1e-6,
  )


def _random_sources(seed, lengths=(3, 4, 2), b=2, k=2, h=8):
  rng = np.random.default_rng(seed)
  srcs = []
  for s in lengths:
    kk = jnp.asarray(rng.normal(size=(b, s, k, h)), jnp.float32)
    vv = jnp.asarray(rng.normal(size=(b, s, k, h)), jnp.float32)
    mask = jnp.asarray(rng.random((b, 1, s)) > 0.3)
    srcs.append((kk, vv, mask))
  return srcs


def test_attend_over_sources_equals_attend_over_concatenation():
  srcs = _random_sources(0)
  q = jnp.asarray(np.random.default_rng(1).normal(size=(2, 1, 4, 8)), jnp.float32)  # N=4, K=2
  split = attend(q, srcs)
  cat = attend(
    q,
    [
      tuple(
        jnp.concatenate(parts, axis=-1 if i == 2 else 1)
        for i, parts in enumerate(zip(*srcs, strict=True))
      )
    ],
  )
  np.testing.assert_allclose(np.asarray(split), np.asarray(cat), rtol=1e-6, atol=1e-6)


def test_attend_reference_gqa():
  """attend == softmax(q k^T / sqrt(H) + mask) v with kv head j serving query heads 2j, 2j+1."""
  ((k, v, mask),) = _random_sources(2, lengths=(5,))
  mask = mask.at[:, :, 0].set(True)  # at least one visible key per row
  q = np.random.default_rng(3).normal(size=(2, 1, 4, 8)).astype(np.float32)
  out = np.asarray(attend(jnp.asarray(q), [(k, v, mask)]))
  kn, vn, mn = np.asarray(k), np.asarray(v), np.asarray(mask)
  for bi in range(2):
    for n in range(4):
      s = kn[bi, :, n // 2] @ q[bi, 0, n] / np.sqrt(8)
      s = np.where(mn[bi, 0], s, -np.inf)
      p = np.exp(s - s.max())
      p /= p.sum()
      np.testing.assert_allclose(out[bi, 0, n], p @ vn[bi, :, n // 2], rtol=1e-5, atol=1e-6)


def test_attend_all_masked_row_is_finite():
  ((k, v, _),) = _random_sources(4, lengths=(3,))
  q = jnp.ones((2, 1, 4, 8))
  out = attend(q, [(k, v, jnp.zeros((2, 1, 3), bool))])
  assert np.isfinite(np.asarray(out)).all()


def test_parameters_are_layer_stacked_with_logical_axes():
  c = ModelConfig(
    family="qwen3",
    vocab_size=32,
    hidden_size=16,
    intermediate_size=24,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    qk_norm=True,
  )
  model = nnx.eval_shape(lambda: Transformer(c, rngs=nnx.Rngs(0)))
  flat = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model))}
  q = flat["blocks/attn/q/kernel"]
  assert q.shape == (3, 16, 32)
  assert q.get_metadata()["logical_axes"] == ("layers", "embed", "q_heads")
  assert flat["blocks/attn/q_norm/scale"].shape == (3, 8)
  assert flat["embed"].get_metadata()["logical_axes"] == ("vocab", "embed")
  assert flat["lm_head"].shape == (16, 32)
  for name, var in flat.items():
    axes = var.get_metadata().get("logical_axes")
    assert axes is not None and len(axes) == var.ndim, name


def test_random_init_runs():
  c = ModelConfig(
    family="qwen2",
    vocab_size=32,
    hidden_size=16,
    intermediate_size=24,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=4,
    qkv_bias=True,
    tie_embeddings=True,
  )
  model = Transformer(c, rngs=nnx.Rngs(0))
  assert model.lm_head is None
  logits, cache = helpers.jit_model(model)(jnp.zeros((1, 3), jnp.int32))
  assert logits.shape == (1, 3, 32) and logits.dtype == jnp.float32 and cache is None
  assert np.isfinite(np.asarray(logits)).all()
  bf16 = Transformer(c, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert bf16.dtype == jnp.bfloat16
  logits16, _ = helpers.jit_model(bf16)(jnp.zeros((1, 3), jnp.int32))
  assert logits16.dtype == jnp.float32  # logits stay fp32
