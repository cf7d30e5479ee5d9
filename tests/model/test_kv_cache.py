"""KVCache bookkeeping, chunked prefill == one forward, PrefixKV == attending the concatenation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from ps_jax.cache import KVCache, PrefixKV
from ps_jax.model import ModelConfig


def _config(layers=2, kv=2, head_dim=3):
  return ModelConfig(
    family="llama",
    vocab_size=8,
    hidden_size=8,
    intermediate_size=8,
    num_layers=layers,
    num_heads=kv,
    num_kv_heads=kv,
    head_dim=head_dim,
  )


def test_init_shapes_and_empty_mask():
  c = _config()
  cache = KVCache.init(c, batch=3, max_len=5)
  assert cache.k.shape == cache.v.shape == (2, 3, 5, 2, 3)
  assert cache.max_len == 5 and cache.end_index.dtype == jnp.int32
  assert not np.asarray(cache.valid_mask()).any()


def test_append_writes_at_end_index_and_advances_by_lengths():
  c = _config(layers=1, kv=1, head_dim=1)
  cache = KVCache.init(c, batch=2, max_len=6)
  cache = cache.replace(end_index=jnp.array([1, 3], jnp.int32))
  new = jnp.arange(1, 7, dtype=jnp.float32).reshape(1, 2, 3, 1, 1)  # [L, B, T, K, H]
  out = cache.append(new, -new, jnp.array([3, 2]))
  k = np.asarray(out.k)[0, :, :, 0, 0]
  # Row 0 writes slots 1..3; row 1 writes 3..5 (its padded 3rd token lands at slot 5 but is
  # not valid: end_index advances by its length 2 only).
  np.testing.assert_array_equal(k, [[0, 1, 2, 3, 0, 0], [0, 0, 0, 4, 5, 6]])
  np.testing.assert_array_equal(np.asarray(out.v)[0, :, :, 0, 0], -k)
  np.testing.assert_array_equal(out.end_index, [4, 5])
  np.testing.assert_array_equal(out.valid_mask(), [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])


def test_append_past_the_end_is_dropped():
  c = _config(layers=1, kv=1, head_dim=1)
  cache = KVCache.init(c, batch=1, max_len=2).replace(end_index=jnp.array([1], jnp.int32))
  out = cache.append(jnp.ones((1, 1, 3, 1, 1)), jnp.ones((1, 1, 3, 1, 1)), jnp.array([1]))
  np.testing.assert_array_equal(np.asarray(out.k)[0, 0, :, 0, 0], [0, 1])


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def model_and_full(request, tiny):
  _, model = tiny(request.param)
  prompts = helpers.random_prompts([16, 11], seed=3)
  tokens, lengths = helpers.right_pad(prompts, 16)
  full = helpers.jit_forward(model)(tokens, lengths)
  return request.param, model, tokens, lengths, full


def test_chunked_prefill_equals_one_forward(model_and_full):
  """Chunks of 5, 4, 7 tokens (default positions continue the cache) == one 16-token forward."""
  family, model, tokens, lengths, full = model_and_full
  call = helpers.jit_model(model)
  cache = KVCache.init(model.config, 2, 16)
  outs, start = [], 0
  for size in (5, 4, 7):
    chunk_len = np.clip(lengths - start, 0, size).astype(np.int32)
    logits, cache = call(
      jnp.asarray(tokens[:, start : start + size]), cache=cache, lengths=jnp.asarray(chunk_len)
    )
    outs.append(np.asarray(logits))
    start += size
  np.testing.assert_array_equal(cache.end_index, lengths)
  diff = helpers.valid_max_abs_diff(np.concatenate(outs, axis=1), full, lengths)
  print(f"\n[{family}] chunked prefill vs full forward: {diff:.1e}")
  assert diff <= 1e-5


def test_prefix_kv_equals_concatenation(model_and_full):
  """Attending to a read-only PrefixKV of the first 9 tokens == the full forward's tail.

  This is the primitive the synthesizer uses to read branch caches without copying them.
  """
  family, model, tokens, lengths, full = model_and_full
  call = helpers.jit_model(model)
  p = 9
  _, head = call(jnp.asarray(tokens[:, :p]), cache=KVCache.init(model.config, 2, p))
  prefix = PrefixKV(k=head.k, v=head.v, mask=head.valid_mask())
  positions = jnp.broadcast_to(jnp.arange(p, 16), (2, 16 - p))
  tail_lengths = jnp.asarray(lengths - p)
  tail, _ = call(jnp.asarray(tokens[:, p:]), positions, prefix=prefix, lengths=tail_lengths)
  diff = helpers.valid_max_abs_diff(tail, full[:, p:], lengths - p)
  # The prefix mask really is applied: hiding its first slot changes the result.
  hidden = PrefixKV(k=head.k, v=head.v, mask=head.valid_mask().at[:, 0].set(False))
  moved, _ = call(jnp.asarray(tokens[:, p:]), positions, prefix=hidden, lengths=tail_lengths)
  print(f"\n[{family}] prefix KV vs concatenation: {diff:.1e}")
  assert diff <= 1e-5
  assert helpers.valid_max_abs_diff(moved, full[:, p:], lengths - p) > 1e-3
