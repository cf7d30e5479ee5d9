"""The decoder: embeddings, a scan over layer-stacked blocks, final norm, LM head."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from ps_jax.cache.kv_cache import KVCache, PrefixKV
from ps_jax.model.config import ModelConfig
from ps_jax.model.layers import Block, RMSNorm, _param
from ps_jax.model.rope import inverse_frequencies
from ps_jax.typing import Array

# LoRA weights as the forward takes them: {"q"|"k"|"v"|"o": {"a": [L, in, r], "b": [L, r, out]}}.
LoRAWeights = Mapping[str, Mapping[str, Array]]


class Transformer(nnx.Module):
  """Llama / Qwen2 / Qwen3 decoder with explicit positions, masks and KV caches.

  The layers are one `Block` whose parameters carry a leading layer axis [L, ...]; the forward
  is a `lax.scan` over it, so compile time does not grow with depth.
  """

  def __init__(self, config: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = config
    self.embed = _param(
      rngs, (config.vocab_size, config.hidden_size), dtype, ("vocab", "embed")
    )  # [V, D]

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(
      in_axes=(0,),
      out_axes=0,
      transform_metadata={nnx.PARTITION_NAME: "layers", "logical_axes": "layers"},
    )
    def make_blocks(rngs):
      return Block(config, dtype=dtype, rngs=rngs)

    self.blocks = make_blocks(rngs)  # parameters [L, ...]
    self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
    self.lm_head = (
      None
      if config.tie_embeddings
      else _param(rngs, (config.hidden_size, config.vocab_size), dtype, ("embed", "vocab"))
    )  # [D, V]

  @property
  def dtype(self):
    return self.embed.dtype

  def hidden_states(
    self,
    tokens: Array,  # [B, T] int
    positions: Array | None = None,  # [B, T] RoPE positions; default continues the cache
    cache: KVCache | None = None,
    *,
    lengths: Array | None = None,  # [B] real tokens per row (right padding); default T
    prefix: PrefixKV | None = None,
    lora: LoRAWeights | None = None,
    lora_scale: float = 0.0,
    read_cache: bool = True,
  ) -> tuple[Array, KVCache | None]:
    """Final-norm hidden states [B, T, D] and the cache with this chunk appended.

    read_cache=False skips attending over the cache's slots: for a prefill into a fresh
    cache, whose slots are all masked, that attention would only cost time and memory.
    """
    b, t = tokens.shape
    if lengths is None:
      lengths = jnp.full((b,), t, jnp.int32)
    if positions is None:
      start = cache.end_index if cache is not None else jnp.zeros((b,), jnp.int32)
      positions = start[:, None] + jnp.arange(t)[None, :]
    idx = jnp.arange(t)
    chunk_mask = (idx[None, None, :] <= idx[None, :, None]) & (
      idx[None, None, :] < lengths[:, None, None]
    )  # [B, T, T]
    prefix_mask = prefix.mask[:, None, :] if prefix is not None else None  # [B, 1, P]
    read_cache = read_cache and cache is not None
    cache_mask = cache.valid_mask()[:, None, :] if read_cache else None  # [B, 1, S]
    inv_freq = inverse_frequencies(self.config)

    graphdef, block_params = nnx.split(self.blocks)

    def layer(x, xs):
      params, lora_l, prefix_kv, cache_kv = xs
      sources = []
      if prefix_kv is not None:
        sources.append((*prefix_kv, prefix_mask))
      if cache_kv is not None:
        sources.append((*cache_kv, cache_mask))
      block = nnx.merge(graphdef, params)
      return block(x, positions, inv_freq, sources, chunk_mask, lora_l, lora_scale)

    xs = (
      block_params,
      lora,
      (prefix.k, prefix.v) if prefix is not None else None,
      (cache.k, cache.v) if read_cache else None,
    )
    x = jnp.take(self.embed[...], tokens, axis=0)
    x, (k_new, v_new) = jax.lax.scan(layer, x, xs)  # k_new, v_new [L, B, T, K, H]
    if cache is not None:
      cache = cache.append(k_new, v_new, lengths)
    return self.final_norm(x), cache

  def logits(self, hidden: Array) -> Array:
    """fp32 logits [..., V] from final hidden states [..., D]."""
    w = self.embed[...].T if self.lm_head is None else self.lm_head[...]
    return jnp.matmul(hidden, w, preferred_element_type=jnp.float32)

  def __call__(
    self, tokens: Array, positions: Array | None = None, cache: KVCache | None = None, **kwargs
  ) -> tuple[Array, KVCache | None]:
    """Logits [B, T, V] (fp32) and the updated cache (None when no cache was passed)."""
    hidden, cache = self.hidden_states(tokens, positions, cache, **kwargs)
    return self.logits(hidden), cache
