"""The cache mapper: a tiny MLP giving per-branch, per-layer affine maps of K and V.

Reference-compatible with the authors' "LengthAwareAffineKVMapper" (260 parameters for
metadata_features="both"): features [log1p(max(L,1)), log1p(max(N,1)), l/(nL-1)] (the first
two optional), Linear(in -> 32) -> SiLU -> Linear(32 -> 4) with a zero-initialised output layer
(identity map at init), and tanh-bounded coefficients
  alpha_k = 1 + 0.1 tanh(r0), beta_k = 0.1 tanh(r1), alpha_v = 1 + 0.1 tanh(r2),
  beta_v = 0.1 tanh(r3).
The ablation `per_head=True` predicts separate coefficients per KV head (4 * K outputs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ps_jax.cache.branches import BranchCaches
from ps_jax.typing import Array

METADATA_FEATURES = ("both", "length", "num_agents", "none")
COEFFICIENTS = ("alpha_k", "beta_k", "alpha_v", "beta_v")  # the last axis of `coefficients`
IDENTITY = (1.0, 0.0, 1.0, 0.0)  # the coefficients of the identity map (the map at init)


class MapperParam(nnx.Param):
  """Trainable cache-mapper parameters (split before plain Params)."""


class CacheMapper(nnx.Module):
  def __init__(
    self,
    num_layers: int,
    num_kv_heads: int | None,
    *,
    hidden_dim: int = 32,
    metadata_features: str = "both",
    per_head: bool = False,
    rngs: nnx.Rngs,
  ):
    """num_kv_heads may be None for the shared (per_head=False) mapper, whose coefficients
    broadcast over the heads (a reference adapter read without a model config)."""
    if metadata_features not in METADATA_FEATURES:
      raise ValueError(
        f"metadata_features={metadata_features!r}; expected one of {METADATA_FEATURES}"
      )
    if per_head and num_kv_heads is None:
      raise ValueError("per_head=True needs num_kv_heads (one output group per KV head)")
    self.num_layers, self.num_kv_heads = num_layers, num_kv_heads
    self.hidden_dim, self.metadata_features, self.per_head = (
      hidden_dim,
      metadata_features,
      per_head,
    )
    din = (
      1 + (metadata_features in ("both", "length")) + (metadata_features in ("both", "num_agents"))
    )
    dout = 4 * (num_kv_heads if per_head else 1)
    bound = din**-0.5  # torch.nn.Linear's default init range
    self.w1 = MapperParam(
      jax.random.uniform(rngs.params(), (din, hidden_dim), jnp.float32, -bound, bound)
    )  # [in, hidden]
    self.b1 = MapperParam(
      jax.random.uniform(rngs.params(), (hidden_dim,), jnp.float32, -bound, bound)
    )  # [hidden]
    self.w2 = MapperParam(jnp.zeros((hidden_dim, dout), jnp.float32))  # [hidden, 4 or 4K]
    self.b2 = MapperParam(jnp.zeros((dout,), jnp.float32))  # [4 or 4K]

  def features(self, lengths: Array) -> Array:
    """[L, B, R, in] fp32 features from branch lengths [B, R]."""
    num_agents = jnp.sum(lengths > 0, axis=-1, keepdims=True)  # [B, 1]
    per_branch = []
    if self.metadata_features in ("both", "length"):
      per_branch.append(jnp.log1p(jnp.maximum(lengths, 1).astype(jnp.float32)))
    if self.metadata_features in ("both", "num_agents"):
      per_branch.append(
        jnp.broadcast_to(jnp.log1p(jnp.maximum(num_agents, 1).astype(jnp.float32)), lengths.shape)
      )
    layer_pos = jnp.arange(self.num_layers, dtype=jnp.float32) / max(self.num_layers - 1, 1)
    shape = (self.num_layers, *lengths.shape)
    cols = [jnp.broadcast_to(f, shape) for f in per_branch]
    cols.append(jnp.broadcast_to(layer_pos[:, None, None], shape))
    return jnp.stack(cols, axis=-1)

  def coefficients(self, lengths: Array) -> Array:
    """[L, B, R, K, 4] fp32 (alpha_k, beta_k, alpha_v, beta_v); K = 1 if num_kv_heads is None."""
    h = jax.nn.silu(self.features(lengths) @ self.w1[...] + self.b1[...])
    raw = h @ self.w2[...] + self.b2[...]  # [L, B, R, 4 or 4K]
    raw = raw.reshape(*raw.shape[:-1], -1, 4)  # [L, B, R, 1 or K, 4]
    if self.num_kv_heads is not None:
      raw = jnp.broadcast_to(raw, (*raw.shape[:3], self.num_kv_heads, 4))
    t = 0.1 * jnp.tanh(raw)
    return t + jnp.array(IDENTITY)

  def __call__(self, caches: BranchCaches) -> BranchCaches:
    """K'' = alpha_k K + beta_k, V'' = alpha_v V + beta_v, in fp32, cast to the cache dtype."""
    c = self.coefficients(caches.lengths)[:, :, :, None, :, None, :]  # [L, B, R, 1, K, 1, 4]
    k = c[..., 0] * caches.k.astype(jnp.float32) + c[..., 1]
    v = c[..., 2] * caches.v.astype(jnp.float32) + c[..., 3]
    return caches.replace(k=k.astype(caches.k.dtype), v=v.astype(caches.v.dtype))
