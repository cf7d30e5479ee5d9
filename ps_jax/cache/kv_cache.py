"""The synthesizer's (or any decoder's) own KV cache, and the read-only prefix it can attend to."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp
from flax import struct

from ps_jax.typing import Array

if TYPE_CHECKING:
  from ps_jax.model.config import ModelConfig


@struct.dataclass
class KVCache:
  """Layer-stacked KV cache; slots [0, end_index[b]) of row b hold post-RoPE keys.

  A forward over T new tokens writes them at slots end_index + t and advances end_index by
  the number of real tokens of each row, so padding never becomes visible.
  """

  k: Array  # [L, B, S, K, H]
  v: Array  # [L, B, S, K, H]
  end_index: Array  # [B] int32

  @classmethod
  def init(cls, config: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    return cls(
      k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), end_index=jnp.zeros((batch,), jnp.int32)
    )

  @property
  def max_len(self) -> int:
    return self.k.shape[2]

  def valid_mask(self) -> Array:
    """[B, S] bool: slots that hold real keys."""
    return jnp.arange(self.max_len)[None, :] < self.end_index[:, None]

  def repeat(self, n: int) -> KVCache:
    """Each row repeated n times (row b -> rows b*n .. b*n+n-1), e.g. to fan out samples."""
    return KVCache(
      k=jnp.repeat(self.k, n, axis=1),
      v=jnp.repeat(self.v, n, axis=1),
      end_index=jnp.repeat(self.end_index, n),
    )

  def append(self, k_new: Array, v_new: Array, lengths: Array) -> KVCache:
    """Writes k_new, v_new [L, B, T, K, H] at end_index; advances end_index by lengths [B].

    Slots past the cache's end are dropped (callers check capacity up front).
    """
    b, t = k_new.shape[1], k_new.shape[2]
    slots = self.end_index[:, None] + jnp.arange(t)[None, :]  # [B, T]
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, t))
    k = self.k.at[:, rows, slots].set(k_new.astype(self.k.dtype), mode="drop")
    v = self.v.at[:, rows, slots].set(v_new.astype(self.v.dtype), mode="drop")
    return KVCache(k=k, v=v, end_index=self.end_index + lengths.astype(jnp.int32))


@struct.dataclass
class PrefixKV:
  """Read-only keys/values that every new token may attend to (e.g. merged branch caches)."""

  k: Array  # [L, B, P, K, H] post-RoPE keys
  v: Array  # [L, B, P, K, H]
  mask: Array  # [B, P] bool, True for slots that may be attended
