"""Worker branches: their frozen KV caches (BranchCaches) and their tokens and texts (Branches)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from ps_jax.cache.kv_cache import PrefixKV
from ps_jax.model.rope import apply_rope
from ps_jax.typing import Array


@struct.dataclass
class BranchCaches:
  """Layer-stacked KV of R branches per example, S slots each (padded; masks from lengths).

  Keys are post-RoPE at `positions`, the positions they were computed at (a worker's output
  sits after its prompt). `reencoded()` rotates them so branch r occupies [0, lengths[b, r]).
  """

  k: Array  # [L, B, R, S, K, H]
  v: Array  # [L, B, R, S, K, H]
  lengths: Array  # [B, R] int32; 0 for absent branches
  positions: Array  # [B, R, S] int32 RoPE position each key is encoded at
  model_fingerprint: str = struct.field(pytree_node=False, default="")

  @property
  def num_slots(self) -> int:
    return self.k.shape[3]

  def mask(self) -> Array:
    """[B, R, S] bool: slots that hold a real token."""
    return jnp.arange(self.num_slots) < self.lengths[..., None]

  def num_branches(self) -> Array:
    """[B] int32: real (non-empty) branches per example."""
    return jnp.sum(self.lengths > 0, axis=-1).astype(jnp.int32)

  def max_length(self) -> Array:
    """[B] int32: Lmax, where the synthesizer's own positions start."""
    return jnp.max(self.lengths, axis=-1).astype(jnp.int32)

  def reencoded(self, inv_freq) -> BranchCaches:
    """Rotates every key from its position to its slot index: branch r sits at [0, L_r)."""
    delta = jnp.arange(self.num_slots) - self.positions  # [B, R, S]
    k = apply_rope(self.k, delta, inv_freq)  # angles once, broadcast over the layers
    return self.replace(
      k=k, positions=jnp.broadcast_to(jnp.arange(self.num_slots), self.positions.shape)
    )

  def merged(self) -> PrefixKV:
    """Branches concatenated along the sequence axis, in branch order: [L, B, R*S, K, H]."""
    num_layers, b, r, s, kh, h = self.k.shape
    mask = self.mask().reshape(b, r * s)
    # Padding slots get probability exactly 0, but 0 * (inf or NaN junk) would still be NaN.
    # Masked after the reshape: masking the 6-D layout first made XLA CPU copy all of K and V
    # once more when B = 1 (a layout change of the size-1 axis), ~35% of the build.
    k, v = (
      jnp.where(mask[None, :, :, None, None], x.reshape(num_layers, b, r * s, kh, h), 0)
      for x in (self.k, self.v)
    )
    return PrefixKV(k=k, v=v, mask=mask)


@dataclasses.dataclass
class Branches:
  """What a synthesizer can read: branch tokens and texts (text method) and their caches."""

  token_ids: list[list[list[int]]]  # [B][R_b] kept token ids of each branch
  texts: list[list[str]]  # [B][R_b]
  caches: BranchCaches

  @property
  def batch_size(self) -> int:
    return len(self.token_ids)


def gather_slots(k: Array, start: Array, num_slots: int) -> Array:
  """k [L, N, S_in, K, H] -> [L, N, num_slots, K, H] taking slots start[n] + s (clamped)."""
  idx = jnp.clip(start[:, None] + jnp.arange(num_slots)[None, :], 0, k.shape[2] - 1)  # [N, S]
  return jax.vmap(lambda kn, i: kn[:, i], in_axes=(1, 0), out_axes=1)(k, idx)
