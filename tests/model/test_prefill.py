"""Chunked prefill (`Transformer.prefill`) == the one-shot forward (`hidden_states`).

Hidden states and cache KV agree for several chunk and key-block sizes (chunks that do not
divide the prompt, blocks that do not divide the cache), with a branch prefix, with LoRA,
continuing a cache that already holds tokens, and in the whole-source mode that goes through
jax.nn.dot_product_attention; generation with a small chunk equals the default.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import helpers
from ps_jax.buckets import DEFAULT_LENGTH_BUCKETS, PREFILL_CHUNK, bucket, chunk_buckets
from ps_jax.cache import KVCache, PrefixKV
from ps_jax.generation import generate_ids
from ps_jax.model import PrefillConfig
from ps_jax.model.transformer import _chunk_for

TOL = 1e-5
CONFIGS = [
  PrefillConfig(chunk=8, kv_block=8),
  PrefillConfig(chunk=8, kv_block=3),  # as the default, a chunk spans blocks: whole + masked
  PrefillConfig(chunk=6, kv_block=5),  # neither divides the 20-token bucket or the 28-slot cache
  PrefillConfig(chunk=16, kv_block=64),  # one block covers the whole cache
  PrefillConfig(chunk=7, kv_block=None),  # whole sources, jax.nn.dot_product_attention (xla)
  PrefillConfig(),  # the default: one chunk for these short prompts
]


def _one_shot(model):
  """jitted hidden_states into a fresh cache (the pre-chunking prefill)."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def call(params, tokens, positions, cache, lengths, prefix, lora):
    m = nnx.merge(graphdef, params)
    return m.hidden_states(
      tokens, positions, cache, lengths=lengths, prefix=prefix, lora=lora, lora_scale=0.5,
      read_cache=False,
    )  # fmt: skip

  return lambda *args: call(params, *args)


def _prefill(model, config):
  graphdef, params = nnx.split(model)

  @jax.jit
  def call(params, tokens, positions, cache, lengths, prefix, lora):
    m = nnx.merge(graphdef, params)
    return m.prefill(
      tokens, positions, cache, lengths=lengths, prefix=prefix, lora=lora, lora_scale=0.5,
      config=config,
    )  # fmt: skip

  return lambda *args: call(params, *args)


def _random_prefix(model, b, p, seed):
  c = model.config
  rng = np.random.default_rng(seed)
  shape = (c.num_layers, b, p, c.num_kv_heads, c.head_dim)
  k, v = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(2))
  mask = rng.random((b, p)) > 0.3
  mask[:, 0] = True
  return PrefixKV(k=k, v=v, mask=jnp.asarray(mask))


def _random_lora(model, rank, seed):
  c = model.config
  rng = np.random.default_rng(seed)
  dims = {
    "q": (c.hidden_size, c.num_heads * c.head_dim),
    "k": (c.hidden_size, c.num_kv_heads * c.head_dim),
    "v": (c.hidden_size, c.num_kv_heads * c.head_dim),
    "o": (c.num_heads * c.head_dim, c.hidden_size),
  }
  return {
    name: {
      "a": jnp.asarray(rng.normal(size=(c.num_layers, din, rank)) * 0.1, jnp.float32),
      "b": jnp.asarray(rng.normal(size=(c.num_layers, rank, dout)) * 0.1, jnp.float32),
    }
    for name, (din, dout) in dims.items()
  }


def _max_diff(hidden, cache, ref_hidden, ref_cache, lengths):
  """Max |difference| of the real tokens' hidden states and cache KV (numpy)."""
  pairs = [(hidden, ref_hidden, 0), (cache.k, ref_cache.k, 1), (cache.v, ref_cache.v, 1)]
  d = 0.0
  for ours, ref, axis in pairs:
    ours, ref = np.asarray(ours), np.asarray(ref)
    for row, n in enumerate(np.asarray(lengths)):
      a, b = (
        np.take(x, row, axis=axis)[(slice(None),) * axis + (slice(0, n),)] for x in (ours, ref)
      )
      d = max(d, float(np.abs(a - b).max()))
  return d


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("extras", ["plain", "prefix+lora"])
def test_chunked_prefill_equals_one_shot_forward(tiny, family, extras):
  _, model = tiny(family)
  tokens, lengths = helpers.right_pad(helpers.random_prompts([20, 7, 13], seed=5), 20)
  b, t = tokens.shape
  offsets = np.array([0, 9, 3], np.int32)
  positions = jnp.asarray(offsets[:, None] + np.arange(t), jnp.int32)
  prefix = _random_prefix(model, b, 11, seed=6) if extras != "plain" else None
  lora = _random_lora(model, 2, seed=7) if extras != "plain" else None
  fresh = KVCache.init(model.config, b, t + 8)
  args = (jnp.asarray(tokens), positions, fresh, jnp.asarray(lengths), prefix, lora)
  ref_hidden, ref_cache = _one_shot(model)(*args)
  for config in CONFIGS:
    hidden, cache = _prefill(model, config)(*args)
    assert hidden.shape == ref_hidden.shape
    np.testing.assert_array_equal(cache.end_index, lengths)
    d = _max_diff(hidden, cache, ref_hidden, ref_cache, lengths)
    print(f"\n[{family} {extras}] {config}: prefill vs one-shot forward {d:.1e}")
    assert d <= TOL


def test_prefill_continues_a_cache(tiny):
  """Prefilling [a; b] == prefilling a, then b into the same cache (rows of different lengths)."""
  _, model = tiny("llama")
  first, first_len = helpers.right_pad(helpers.random_prompts([9, 4], seed=8), 9)
  second, second_len = helpers.right_pad(helpers.random_prompts([6, 11], seed=9), 11)
  whole = [
    list(a[:m]) + list(c[:n])
    for a, m, c, n in zip(first, first_len, second, second_len, strict=True)
  ]
  tokens, lengths = helpers.right_pad(whole, 20)
  positions = jnp.broadcast_to(jnp.arange(20), (2, 20))
  config = PrefillConfig(chunk=4, kv_block=3)
  run = _prefill(model, config)
  fresh = KVCache.init(model.config, 2, 24)
  ref_hidden, ref_cache = run(
    jnp.asarray(tokens), positions, fresh, jnp.asarray(lengths), None, None
  )
  _, cache = run(jnp.asarray(first), positions[:, :9], fresh, jnp.asarray(first_len), None, None)
  pos2 = jnp.asarray(first_len[:, None] + np.arange(11), jnp.int32)
  hidden, cache = run(jnp.asarray(second), pos2, cache, jnp.asarray(second_len), None, None)
  np.testing.assert_array_equal(cache.end_index, lengths)
  hidden, ref_hidden, k, ref_k = map(np.asarray, (hidden, ref_hidden, cache.k, ref_cache.k))
  d = 0.0
  for row in range(2):
    m, n = int(first_len[row]), int(second_len[row])
    d = max(d, float(np.abs(hidden[row, :n] - ref_hidden[row, m : m + n]).max()))
    d = max(d, float(np.abs(k[:, row, : m + n] - ref_k[:, row, : m + n]).max()))
  print(f"\n[llama] prefill in two calls vs one {d:.1e}")
  assert d <= TOL


def test_padding_to_a_coarse_bucket_changes_nothing(tiny):
  """A prompt in a 40-token or a 64-token buffer (chunk 16): same hidden states and KV."""
  _, model = tiny("qwen2")
  prompts = helpers.random_prompts([33, 5], seed=10)
  config = PrefillConfig(chunk=16, kv_block=16)
  out = []
  for width in (40, 64):
    tokens, lengths = helpers.right_pad(prompts, width)
    positions = jnp.broadcast_to(jnp.arange(width), (2, width))
    out.append(
      _prefill(model, config)(
        jnp.asarray(tokens),
        positions,
        KVCache.init(model.config, 2, width + 4),
        jnp.asarray(lengths),
        None,
        None,
      )  # fmt: skip
    )
  (h1, c1), (h2, c2) = out
  assert _max_diff(h1, c1, h2, c2, np.array([33, 5])) <= TOL


def test_generation_with_small_chunks_equals_default(tiny):
  """generate_ids with 4-token chunks and 3-slot key blocks: same tokens as the default."""
  _, model = tiny("llama3_tied")
  prompts = helpers.random_prompts([13, 6, 21], seed=12)
  ref = generate_ids(model, prompts, max_new_tokens=8, stop_ids=[helpers.VOCAB - 1])
  for config in (PrefillConfig(chunk=4, kv_block=3), PrefillConfig(chunk=8, kv_block=None)):
    res = generate_ids(
      model, prompts, max_new_tokens=8, stop_ids=[helpers.VOCAB - 1], prefill=config
    )
    assert res.tokens.tolist() == ref.tokens.tolist()
    ends = np.asarray(res.cache.end_index)
    np.testing.assert_array_equal(ends, np.asarray(ref.cache.end_index))
    for row, n in enumerate(ends):
      for ours, theirs in ((res.cache.k, ref.cache.k), (res.cache.v, ref.cache.v)):
        assert np.abs(np.asarray(ours)[:, row, :n] - np.asarray(theirs)[:, row, :n]).max() <= TOL


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(chunk=0), r"PrefillConfig.chunk=0: expected an integer >= 1"),
    (dict(kv_block=2.5), r"PrefillConfig.kv_block=2.5"),
    (dict(implementation="flash"), r"implementation='flash'; expected one of \('xla', 'cudnn'\)"),
    (dict(implementation="cudnn"), r"set kv_block=None"),
  ],
)
def test_bad_prefill_config_is_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    PrefillConfig(**kwargs)


def test_length_buckets_and_chunks_pad_little():
  assert chunk_buckets(256, 1024, fine_below=512) == (16, 32, 64, 128, 256, 384, 512, 768, 1024)
  assert DEFAULT_LENGTH_BUCKETS[:8] == (16, 32, 64, 128, 256, 384, 512, 640)
  assert max(DEFAULT_LENGTH_BUCKETS) == 2**15
  assert bucket(2163, DEFAULT_LENGTH_BUCKETS, what="prompt length") == 2304
  assert bucket(357, DEFAULT_LENGTH_BUCKETS, what="prompt length") == 384
  assert bucket(100, DEFAULT_LENGTH_BUCKETS, what="prompt length") == 128
  for t in (*DEFAULT_LENGTH_BUCKETS[:40], 371, 627, 2163, 4197):
    c = _chunk_for(t, PREFILL_CHUNK)
    n = -(-t // c)
    assert c <= PREFILL_CHUNK and n * c - t < n, (t, c)  # under one padding token per chunk
  assert [_chunk_for(t, 512) for t in (384, 640, 768, 2048, 2163)] == [384, 320, 384, 512, 433]
