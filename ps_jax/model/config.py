"""Model configuration: one frozen dataclass for the Llama, Qwen2 and Qwen3 families."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

# HF `model_type` -> family. The families differ only in the switches below.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
_ARCHITECTURES = {
  "LlamaForCausalLM": "llama",
  "Qwen2ForCausalLM": "qwen2",
  "Qwen3ForCausalLM": "qwen3",
}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling. `kind` is "default", "linear" or "llama3"."""

  kind: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  family: str  # "llama" | "qwen2" | "qwen3"
  vocab_size: int
  hidden_size: int  # D
  intermediate_size: int  # F
  num_layers: int  # L
  num_heads: int  # N
  num_kv_heads: int  # K
  head_dim: int  # H
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling = RopeScaling()
  tie_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2
  qk_norm: bool = False  # Qwen3: per-head RMSNorm on q and k before RoPE
  max_position_embeddings: int = 8192
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  # Where the weights come from, as transformers/PEFT name a base model: an HF hub id or a local
  # path, and the hub revision (commit) when known. Set by ps.load / ps.io.load_config; an
  # adapter made for this model records them (PEFT's base_model_name_or_path and revision).
  # Provenance, not architecture: ignored by ==, hash and the fingerprint.
  name_or_path: str | None = dataclasses.field(default=None, compare=False)
  revision: str | None = dataclasses.field(default=None, compare=False)

  def __post_init__(self):
    if self.family not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
        f"model family {self.family!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}"
      )
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
      )

  @property
  def queries_per_kv(self) -> int:  # G
    return self.num_heads // self.num_kv_heads

  @property
  def fingerprint(self) -> str:
    """Identifies the cache layout and RoPE of this model (caches are only valid within it)."""
    return (
      f"{self.family}:L{self.num_layers}:D{self.hidden_size}:K{self.num_kv_heads}:"
      f"H{self.head_dim}:V{self.vocab_size}:theta{self.rope_theta}:{self.rope_scaling}"
    )

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any]) -> ModelConfig:
    """Builds the config from a transformers `config.json` dict."""
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    family = model_type if model_type in SUPPORTED_MODEL_TYPES else None
    if family is None:
      family = next((_ARCHITECTURES[a] for a in archs if a in _ARCHITECTURES), None)
    if family is None:
      raise ValueError(
        f"unsupported model: model_type={model_type!r}, architectures={archs!r}; "
        f"ps_jax supports model_type in {SUPPORTED_MODEL_TYPES} "
        f"(architectures {sorted(_ARCHITECTURES)})"
      )
    _reject_unmodelled(hf)
    num_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
    eos = hf.get("eos_token_id")
    eos = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
    return cls(
      family=family,
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=num_heads,
      num_kv_heads=hf.get("num_key_value_heads") or num_heads,
      head_dim=head_dim,
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=_rope_theta(hf),
      rope_scaling=_rope_scaling(hf),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=family == "qwen2" or bool(hf.get("attention_bias", False)),
      qk_norm=family == "qwen3",
      max_position_embeddings=hf.get("max_position_embeddings", 8192),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_ids=eos,
    )

  @classmethod
  def from_hf_file(cls, path: str | os.PathLike) -> ModelConfig:
    with open(path) as f:
      return cls.from_hf(json.load(f))


def _reject_unmodelled(hf: Mapping[str, Any]) -> None:
  """Architectural switches ps_jax does not implement: refuse rather than mis-compute."""
  act = hf.get("hidden_act") or hf.get("hidden_activation") or "silu"
  if act != "silu":
    raise ValueError(f"hidden_act={act!r} is not supported (ps_jax implements SwiGLU with silu)")
  if hf.get("mlp_bias"):
    raise ValueError("mlp_bias=True is not supported (ps_jax MLPs have no biases)")
  layer_types = set(hf.get("layer_types") or ["full_attention"])
  if hf.get("use_sliding_window") or layer_types != {"full_attention"}:
    raise ValueError(
      f"sliding-window attention (use_sliding_window="
      f"{hf.get('use_sliding_window')}, layer_types={sorted(layer_types)}) is "
      "not supported; ps_jax implements full attention only"
    )


def _rope_theta(hf: Mapping[str, Any]) -> float:
  if "rope_theta" in hf:
    return float(hf["rope_theta"])
  params = hf.get("rope_parameters") or {}  # transformers >= 5 layout
  return float(params.get("rope_theta", 10000.0))


def _rope_scaling(hf: Mapping[str, Any]) -> RopeScaling:
  s = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
  kind = s.get("rope_type") or s.get("type") or "default"
  if kind == "default":
    return RopeScaling()
  if kind == "linear":
    return RopeScaling(kind="linear", factor=float(s["factor"]))
  if kind == "llama3":
    return RopeScaling(
      kind="llama3",
      factor=float(s["factor"]),
      low_freq_factor=float(s["low_freq_factor"]),
      high_freq_factor=float(s["high_freq_factor"]),
      original_max_position_embeddings=int(s["original_max_position_embeddings"]),
    )
  raise ValueError(
    f"rope_scaling type {kind!r} is not supported (supported: default, linear, llama3)"
  )
