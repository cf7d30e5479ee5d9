"""Independent transformers/torch reference computations for the Parallel-Synthesis tests.

Nothing here imports ps_jax: every number is produced by transformers (the HF model, its
DynamicCache, its own RoPE), peft (the LoRA) and plain torch (the reference cache mapper,
written from DESIGN.md section 2.3 / the authors' "LengthAwareAffineKVMapper"), so agreement
with ps_jax is evidence, not a tautology.

Conventions: one example at a time (batch 1), fp32, eager attention. Per-layer KV tensors are
torch tensors [K, T, H] (kv heads, tokens, head dim), the transformers layout without batch.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k [K, T, H], v [K, T, H])
PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _layers_of(past) -> LayerKV:
  """Per-layer (k, v) [B, K, T, H] of a transformers cache (new or legacy layout)."""
  if hasattr(past, "layers"):
    return [(layer.keys, layer.values) for layer in past.layers]
  return [(k, v) for k, v in past]


def _cache_arg(model) -> str:
  """The forward's cache keyword: `cache` (transformers >= 5.24) or `past_key_values`."""
  base = model.get_base_model() if hasattr(model, "get_base_model") else model
  params = inspect.signature(type(base).forward).parameters
  return "cache" if "cache" in params else "past_key_values"


def _cache_of(out):
  cache = getattr(out, "cache", None)
  return out.past_key_values if cache is None else cache


@torch.no_grad()
def prefill_kv(model, ids: Sequence[int], position_ids: Sequence[int] | None = None) -> LayerKV:
  """Per-layer post-RoPE (k, v) [K, T, H] of `ids` run alone by `model` (HF or PEFT model).

  Positions are 0..T-1 unless `position_ids` are given (transformers applies RoPE at exactly
  those positions; the causal mask does not depend on them).
  """
  x = torch.tensor([list(ids)], dtype=torch.long)
  kwargs = {}
  if position_ids is not None:
    kwargs["position_ids"] = torch.tensor([list(position_ids)], dtype=torch.long)
  out = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True, **kwargs)
  return [(k[0].detach().clone(), v[0].detach().clone()) for k, v in _layers_of(_cache_of(out))]


def slice_kv(kv: LayerKV, start: int, stop: int | None = None) -> LayerKV:
  return [(k[:, start:stop], v[:, start:stop]) for k, v in kv]


def concat_cache(branches: Sequence[LayerKV]):
  """A transformers DynamicCache holding the branches concatenated along the sequence axis."""
  from transformers import DynamicCache  # pylint: disable=import-outside-toplevel

  cache = DynamicCache()
  for layer in range(len(branches[0])):
    k = torch.cat([b[layer][0] for b in branches], dim=1)[None]  # [1, K, sum L, H]
    v = torch.cat([b[layer][1] for b in branches], dim=1)[None]
    cache.update(k.contiguous(), v.contiguous(), layer)
  return cache


@torch.no_grad()
def logits_over_cache(model, cache, tokens: Sequence[int], start: int) -> np.ndarray:
  """fp32 logits [T, V] of `tokens` at positions start + t, attending to all of `cache`."""
  x = torch.tensor([list(tokens)], dtype=torch.long)
  past = cache.get_seq_length()
  pos = torch.arange(start, start + len(tokens), dtype=torch.long)[None]
  mask = torch.ones((1, past + len(tokens)), dtype=torch.long)
  out = model(
    input_ids=x, position_ids=pos, attention_mask=mask, use_cache=True, **{_cache_arg(model): cache}
  )
  return out.logits[0].float().numpy()


def fixed_text_kv(model, branch_ids: Sequence[Sequence[int]]) -> list[LayerKV]:
  """Each fixed-text branch prefilled alone from position 0 (P_i = 0: no re-encoding needed)."""
  return [prefill_kv(model, ids) for ids in branch_ids]


def synth_logits(
  model,
  kvs: Sequence[LayerKV],
  lengths: Sequence[int],
  synth: Sequence[int],
  mapper: RefMapper | None = None,
) -> np.ndarray:
  """The reference cache-synthesis forward of one example over re-encoded branch KV `kvs`.

  Optionally maps each branch per layer with `mapper` (features from the branch length and the
  number of branches), concatenates the branches in order into a DynamicCache, and runs `synth`
  through `model` at positions Lmax + t.
  """
  if mapper is not None:
    kvs = [
      mapper.apply(kv, length=n, num_agents=len(kvs)) for kv, n in zip(kvs, lengths, strict=True)
    ]
  return logits_over_cache(model, concat_cache(kvs), synth, max(lengths))


# ------------------------------------------------------------------- RoPE (transformers')


def hf_rotary(hf_config):
  """transformers' own rotary embedding module for a config (its inv_freq incl. scaling)."""
  from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # pylint: disable=import-outside-toplevel

  return LlamaRotaryEmbedding(hf_config)


@torch.no_grad()
def hf_rope(x: np.ndarray, positions: np.ndarray, hf_config) -> np.ndarray:
  """x [T, heads, H] rotated to positions [T] by transformers' RoPE (rotate-half layout)."""
  from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # pylint: disable=import-outside-toplevel

  rot = hf_rotary(hf_config)
  xt = torch.tensor(np.asarray(x, np.float32)).transpose(0, 1)[None]  # [1, heads, T, H]
  pos = torch.tensor(np.asarray(positions, np.int64))[None]
  cos, sin = rot(xt, pos)
  out, _ = apply_rotary_pos_emb(xt, xt, cos, sin)
  return out[0].transpose(0, 1).numpy()


# ------------------------------------------------------------------- the reference mapper

_DIN = {"both": 3, "length": 2, "num_agents": 2, "none": 1}


class RefMapper(nn.Module):
  """The reference cache mapper, written from the spec (DESIGN.md section 2.3).

  net = Linear(din -> hidden) -> SiLU -> Linear(hidden -> 4); features per branch and layer
  [log1p(max(L,1)), log1p(max(N,1)), l / (nL - 1)] (the first two optional);
  alpha_k = 1 + 0.1 tanh(r0), beta_k = 0.1 tanh(r1), alpha_v = 1 + 0.1 tanh(r2),
  beta_v = 0.1 tanh(r3); K'' = alpha_k K + beta_k, V'' = alpha_v V + beta_v.
  """

  def __init__(self, hidden_dim: int = 32, metadata_features: str = "both"):
    super().__init__()
    self.metadata_features = metadata_features
    self.net = nn.Sequential(
      nn.Linear(_DIN[metadata_features], hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 4)
    )

  def features(self, length: int, num_agents: int, layer: int, num_layers: int) -> torch.Tensor:
    f = []
    if self.metadata_features in ("both", "length"):
      f.append(math.log1p(max(length, 1)))
    if self.metadata_features in ("both", "num_agents"):
      f.append(math.log1p(max(num_agents, 1)))
    f.append(layer / (num_layers - 1))
    return torch.tensor(f, dtype=torch.float32)

  @torch.no_grad()
  def coefficients(self, length, num_agents, layer, num_layers):
    r = self.net(self.features(length, num_agents, layer, num_layers))
    t = 0.1 * torch.tanh(r)
    return 1 + t[0], t[1], 1 + t[2], t[3]

  @torch.no_grad()
  def apply(self, kv: LayerKV, *, length: int, num_agents: int) -> LayerKV:
    out = []
    for layer, (k, v) in enumerate(kv):
      ak, bk, av, bv = self.coefficients(length, num_agents, layer, len(kv))
      out.append((ak * k + bk, av * v + bv))
    return out


def random_ref_mapper(
  seed: int, metadata_features: str = "both", hidden_dim: int = 32, out_scale: float = 1.0
) -> RefMapper:
  """A RefMapper with random, non-zero weights everywhere (the output layer included)."""
  gen = torch.Generator().manual_seed(seed)
  m = RefMapper(hidden_dim, metadata_features)
  with torch.no_grad():
    for name, p in m.named_parameters():
      scale = out_scale if name.startswith("net.2") else 1.0
      p.copy_(scale * (2 * torch.rand(p.shape, generator=gen) - 1))
  return m


def save_ref_mapper(mapper: RefMapper, folder: str, *, config: bool = True) -> None:
  """cache_mapper.pt (a torch state dict) + cache_mapper_config.json, as the reference writes."""
  os.makedirs(folder, exist_ok=True)
  torch.save(
    {k: v.clone() for k, v in mapper.state_dict().items()}, os.path.join(folder, "cache_mapper.pt")
  )
  if config:
    with open(os.path.join(folder, "cache_mapper_config.json"), "w") as f:
      json.dump(
        {"hidden_dim": mapper.net[0].out_features, "metadata_features": mapper.metadata_features}, f
      )


# ------------------------------------------------------------------- PEFT LoRA


def random_peft_model(hf, *, rank: int, seed: int, scale: float = 0.15):
  """A PEFT LoRA (q/k/v/o, alpha = 2 rank, dropout 0) on a deep copy of `hf`, with random
  non-zero lora_A and lora_B. `hf` itself is not modified."""
  from peft import LoraConfig, get_peft_model  # pylint: disable=import-outside-toplevel

  base = copy.deepcopy(hf)
  cfg = LoraConfig(
    r=rank,
    lora_alpha=2 * rank,
    lora_dropout=0.0,
    bias="none",
    target_modules=list(PEFT_TARGETS),
    task_type="CAUSAL_LM",
  )
  peft_model = get_peft_model(base, cfg)
  gen = torch.Generator().manual_seed(seed)
  n = 0
  with torch.no_grad():
    for name, p in peft_model.named_parameters():
      if "lora_A" in name or "lora_B" in name:
        p.copy_(scale * torch.randn(p.shape, generator=gen))
        n += 1
  assert n == 2 * len(PEFT_TARGETS) * hf.config.num_hidden_layers, n
  return peft_model.eval()
