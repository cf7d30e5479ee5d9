"""Decoder building blocks: RMSNorm, Linear (+LoRA), attention projections, SwiGLU.

Parameters carry logical axis names (`logical_axes` metadata); `ps_jax.sharding` maps them
to mesh axes. Kernels are stored [in, out] so that a projection is `x @ kernel`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from ps_jax.model.attention import attend
from ps_jax.model.config import ModelConfig
from ps_jax.model.rope import apply_rope
from ps_jax.typing import Array

# attend_fn(q [B, T, N, H], k [B, T, K, H], v [B, T, K, H]) -> (out [B, T, N, H], aux)
AttendFn = Callable[[Array, Array, Array], tuple[Array, object]]


def _param(rngs: nnx.Rngs | None, shape, dtype, names, init="normal") -> nnx.Param:
  if init == "ones":
    value = jnp.ones(shape, dtype)
  elif init == "zeros":
    value = jnp.zeros(shape, dtype)
  else:
    value = (0.02 * jax.random.normal(rngs.params(), shape)).astype(dtype)
  return nnx.Param(value, logical_axes=tuple(names))


class RMSNorm(nnx.Module):
  def __init__(self, dim: int, eps: float, dtype, names=("embed",)):
    self.scale = _param(None, (dim,), dtype, names, init="ones")  # [dim]
    self.eps = eps

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class Linear(nnx.Module):
  """y = x @ kernel (+ bias) (+ LoRA delta: scale * (x @ a) @ b)."""

  def __init__(self, din: int, dout: int, names, *, bias: bool, dtype, rngs: nnx.Rngs):
    self.kernel = _param(rngs, (din, dout), dtype, names)  # [din, dout]
    self.bias = _param(None, (dout,), dtype, names[1:], init="zeros") if bias else None

  def __call__(
    self, x: Array, lora: Mapping[str, Array] | None = None, lora_scale: float = 0.0
  ) -> Array:
    y = x @ self.kernel[...]
    if self.bias is not None:
      y = y + self.bias[...]
    if lora is not None:
      y = y + (lora_scale * ((x @ lora["a"]) @ lora["b"])).astype(y.dtype)
    return y


class Attention(nnx.Module):
  def __init__(self, config: ModelConfig, *, dtype, rngs: nnx.Rngs):
    c = config
    d, nh, kh = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    self.q = Linear(d, nh, ("embed", "q_heads"), bias=c.qkv_bias, dtype=dtype, rngs=rngs)
    self.k = Linear(d, kh, ("embed", "kv_heads"), bias=c.qkv_bias, dtype=dtype, rngs=rngs)
    self.v = Linear(d, kh, ("embed", "kv_heads"), bias=c.qkv_bias, dtype=dtype, rngs=rngs)
    self.o = Linear(nh, d, ("q_heads", "embed"), bias=False, dtype=dtype, rngs=rngs)
    if c.qk_norm:
      self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps, dtype, names=("head_dim",))
      self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps, dtype, names=("head_dim",))
    else:
      self.q_norm = self.k_norm = None
    self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim

  def __call__(self, x, positions, inv_freq, attend_fn: AttendFn, lora, lora_scale):
    """x [B, T, D]; positions [B, T]; attend_fn(q [B, T, N, H], k, v [B, T, K, H]) ->
    (out [B, T, N, H], aux) attends this chunk's post-RoPE q, k, v to whatever it reads.

    Returns the output [B, T, D] and aux.
    """
    b, t, _ = x.shape
    lora = lora or {}
    q = self.q(x, lora.get("q"), lora_scale).reshape(b, t, self.num_heads, self.head_dim)
    k = self.k(x, lora.get("k"), lora_scale).reshape(b, t, self.num_kv_heads, self.head_dim)
    v = self.v(x, lora.get("v"), lora_scale).reshape(b, t, self.num_kv_heads, self.head_dim)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)
    out, aux = attend_fn(q, k, v)
    return self.o(out.reshape(b, t, -1), lora.get("o"), lora_scale), aux


class MLP(nnx.Module):
  def __init__(self, config: ModelConfig, *, dtype, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    self.gate = Linear(d, f, ("embed", "mlp"), bias=False, dtype=dtype, rngs=rngs)
    self.up = Linear(d, f, ("embed", "mlp"), bias=False, dtype=dtype, rngs=rngs)
    self.down = Linear(f, d, ("mlp", "embed"), bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Block(nnx.Module):
  """Pre-norm decoder layer."""

  def __init__(self, config: ModelConfig, *, dtype, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
    self.attn = Attention(config, dtype=dtype, rngs=rngs)
    self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
    self.mlp = MLP(config, dtype=dtype, rngs=rngs)

  def __call__(self, x, positions, inv_freq, sources, chunk_mask, lora=None, lora_scale=0.0):
    """x [B, T, D] attending to read-only sources [(k, v, mask)] and causally (chunk_mask
    [B, T, T]) to itself. Returns the output and this chunk's post-RoPE (k, v) [B, T, K, H]."""

    def attend_fn(q, k, v):
      return attend(q, [*sources, (k, v, chunk_mask)]), (k, v)

    return self.apply(x, positions, inv_freq, attend_fn, lora, lora_scale)

  def apply(self, x, positions, inv_freq, attend_fn: AttendFn, lora=None, lora_scale=0.0):
    """The layer with attention delegated to attend_fn (see Attention); returns (x, aux)."""
    h, aux = self.attn(self.attn_norm(x), positions, inv_freq, attend_fn, lora, lora_scale)
    x = x + h
    return x + self.mlp(self.mlp_norm(x)), aux
