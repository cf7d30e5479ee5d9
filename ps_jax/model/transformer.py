"""The decoder: embeddings, a scan over layer-stacked blocks, final norm, LM head."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from ps_jax.buckets import KV_BLOCK, PREFILL_CHUNK
from ps_jax.cache.kv_cache import KVCache, PrefixKV
from ps_jax.model.attention import (
  BlockSource,
  array_source,
  attend_blocks,
  attend_dpa,
  check_implementation,
)
from ps_jax.model.config import ModelConfig
from ps_jax.model.layers import Block, RMSNorm, _param
from ps_jax.model.rope import inverse_frequencies
from ps_jax.typing import Array

# LoRA weights as the forward takes them: {"q"|"k"|"v"|"o": {"a": [L, in, r], "b": [L, r, out]}}.
LoRAWeights = Mapping[str, Mapping[str, Array]]


@dataclasses.dataclass(frozen=True)
class PrefillConfig:
  """How `Transformer.prefill` runs a prompt (hashable: a static argument of jitted callers).

  chunk: the most tokens per step (a prompt is split into near-equal chunks); every layer runs
    on one chunk at a time, so activations and scores scale with the chunk, not the prompt.
  kv_block: keys per step of the flash-style loop (an online softmax over blocks of the prefix
    and of the cache, no KV copied): a chunk reads only the cache blocks written so far, ~T^2/2
    score work. This is the block of a full chunk of one row; fewer query rows (batch x chunk)
    get proportionally larger blocks (`_key_block`). None: a chunk attends the whole prefix and
    the whole cache (masked, ~T*S work) in one `jax.nn.dot_product_attention` call over the two
    concatenated (a copy of the prefix per layer and chunk); on XLA CPU about 2x slower than
    blocks of 256 (SmolLM2, 2,048 tokens).
  implementation: the `jax.nn.dot_product_attention` backend when kv_block is None: "xla", or
    "cudnn" (flash attention on NVIDIA GPUs, fp16/bf16 models).
  """

  chunk: int = PREFILL_CHUNK
  kv_block: int | None = KV_BLOCK
  implementation: str = "xla"

  def __post_init__(self):
    for name in ("chunk", "kv_block"):
      value = getattr(self, name)
      if value is None and name == "kv_block":
        continue
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"PrefillConfig.{name}={value!r}: expected an integer >= 1")
    check_implementation(self.implementation)
    if self.implementation != "xla" and self.kv_block is not None:
      raise ValueError(
        f"PrefillConfig(implementation={self.implementation!r}) attends whole sources through "
        "jax.nn.dot_product_attention: set kv_block=None"
      )


DEFAULT_PREFILL = PrefillConfig()


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

  def prefill(
    self,
    tokens: Array,  # [B, T] int, right-padded
    positions: Array,  # [B, T] RoPE positions
    cache: KVCache,  # slots [0, end_index) are kept and attended; the prompt goes after them
    *,
    lengths: Array,  # [B] real tokens per row
    prefix: PrefixKV | None = None,
    lora: LoRAWeights | None = None,
    lora_scale: float = 0.0,
    config: PrefillConfig = DEFAULT_PREFILL,
  ) -> tuple[Array, KVCache]:
    """`hidden_states` of a prompt computed chunk by chunk: final-norm hidden states [B, T, D]
    and the cache with the prompt appended (equal up to fp32 rounding).

    Chunk i (tokens [i*C, (i+1)*C); C = `_chunk_for(T, chunk)`, T split into near-equal chunks
    of at most `chunk` tokens, T padded to a multiple of C inside)
    runs every layer, writes its keys and values into the cache, then attends the prefix and
    the cache slots up to each token's own. Only chunks holding a real token run (a traced
    count), so a coarse length bucket costs buffers but no compute. Inference only: the loops
    have traced trip counts, which reverse-mode differentiation does not support.
    """
    b, t = tokens.shape
    c = _chunk_for(t, config.chunk)
    padded = -(-t // c) * c
    if padded != t:
      tokens = jnp.pad(tokens, ((0, 0), (0, padded - t)))
      positions = jnp.pad(positions, ((0, 0), (0, padded - t)), mode="edge")
    start, num_slots = cache.end_index, cache.max_len  # [B], S
    block = _key_block(config, b * c)
    inv_freq = inverse_frequencies(self.config)
    graphdef, block_params = nnx.split(self.blocks)
    prefix_mask = prefix.mask[:, None, :] if prefix is not None else None  # [B, 1, P]

    def chunk_step(i, carry):
      hidden, cache_k, cache_v = carry
      first = i * c
      tok = jax.lax.dynamic_slice_in_dim(tokens, first, c, axis=1)
      pos = jax.lax.dynamic_slice_in_dim(positions, first, c, axis=1)
      slots = start[:, None] + first + jnp.arange(c)[None, :]  # [B, C] cache slot of each token
      # Blocks past the chunk's last slot hold nothing its tokens read.
      num_blocks = None
      if block is not None:
        size = min(block, num_slots)
        written = jnp.max(start) + first + c
        num_blocks = jnp.minimum(-(-written // size), -(-num_slots // size))

      def layer(carry, xs):
        x, cache_k, cache_v = carry
        params, lora_l, prefix_kv, index = xs

        def attend_fn(q, k, v):
          return _attend_cache(
            q,
            k,
            v,
            cache_k,
            cache_v,
            index,
            slots,
            prefix_kv,
            prefix_mask,
            num_blocks,
            block,
            config,
          )

        block_module = nnx.merge(graphdef, params)
        x, (cache_k, cache_v) = block_module.apply(x, pos, inv_freq, attend_fn, lora_l, lora_scale)
        return (x, cache_k, cache_v), None

      xs = (
        block_params,
        lora,
        (prefix.k, prefix.v) if prefix is not None else None,
        jnp.arange(self.config.num_layers),
      )
      x = jnp.take(self.embed[...], tok, axis=0)
      (x, cache_k, cache_v), _ = jax.lax.scan(layer, (x, cache_k, cache_v), xs)
      hidden = jax.lax.dynamic_update_slice_in_dim(hidden, self.final_norm(x), first, axis=1)
      return hidden, cache_k, cache_v

    num_chunks = (jnp.max(lengths) + c - 1) // c
    hidden = jnp.zeros((b, padded, self.config.hidden_size), self.dtype)
    hidden, k, v = jax.lax.fori_loop(0, num_chunks, chunk_step, (hidden, cache.k, cache.v))
    cache = KVCache(k=k, v=v, end_index=start + lengths.astype(jnp.int32))
    return hidden[:, :t], cache

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


def _chunk_for(t: int, chunk: int) -> int:
  """The prefill chunk for a T-token prompt: T split into ceil(T / chunk) near-equal chunks of
  at most `chunk` tokens, so less than one token per chunk is padding (a bucketed 768 -> 2 x
  384; an exact 2,163 -> 5 x 433, not 5 x 512 with 397 padding tokens computed)."""
  n = -(-t // chunk)
  return -(-t // n)


def _key_block(config: PrefillConfig, rows: int) -> int | None:
  """Keys per step for `rows` query rows (batch x chunk): `config.kv_block` for a full chunk of
  one row, doubled while the rows are at most half of that, so a short prompt's score tiles
  stay about as large as a full chunk's. Fewer, larger steps: a 115-token synthesizer prompt
  over a 16k-slot branch prefix attends 1.75x faster with 1,024-key blocks than with 256 (XLA
  CPU, SmolLM2 shapes); with a full chunk, blocks past 512 get slower again."""
  if config.kv_block is None:
    return None
  grow = max(1, config.chunk // rows)
  return config.kv_block * (1 << (grow.bit_length() - 1))


def _attend_cache(
  q, k, v, cache_k, cache_v, index, slots, prefix_kv, prefix_mask, num_blocks, block, config
):
  """One layer's attention in a prefill chunk: writes the chunk's k, v [B, C, K, H] into layer
  `index` of cache_k, cache_v [L, B, S, K, H] at slots [B, C], then attends q [B, C, N, H] to
  the prefix (k, v [B, P, K, H], mask [B, 1, P]) and to the cache slots up to each token's own
  (the cache's earlier content and the prompt so far). Returns (out, (cache_k, cache_v))."""
  b, _, _, h = q.shape
  num_slots, num_kv_heads = cache_k.shape[2], cache_k.shape[3]
  rows = jnp.arange(b)[:, None]
  cache_k = cache_k.at[index, rows, slots].set(k.astype(cache_k.dtype), mode="drop")
  cache_v = cache_v.at[index, rows, slots].set(v.astype(cache_v.dtype), mode="drop")

  def visible(cache_slots):  # [S'] -> [B, C, S']
    return cache_slots[None, None, :] <= slots[:, :, None]

  if config.kv_block is None:
    sources = [] if prefix_kv is None else [(*prefix_kv, prefix_mask)]
    sources.append((cache_k[index], cache_v[index], visible(jnp.arange(num_slots))))
    return attend_dpa(q, sources, implementation=config.implementation), (cache_k, cache_v)

  def read(slot, size):
    at, shape = (index, 0, slot, 0, 0), (1, b, size, num_kv_heads, h)
    return (jax.lax.dynamic_slice(kv, at, shape)[0] for kv in (cache_k, cache_v))

  sources = [] if prefix_kv is None else [array_source(*prefix_kv, prefix_mask, block)]
  # Slots before the chunk's first one are visible to all its tokens: whole blocks, no mask.
  num_full = (jnp.min(slots[:, 0]) + 1) // block
  sources.append(BlockSource(read, visible, num_slots, num_blocks, num_full))
  out = attend_blocks(q, sources, block=block, num_kv_heads=num_kv_heads)
  return out, (cache_k, cache_v)
