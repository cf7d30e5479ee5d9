"""Parallel-Synthesis as the authors' PyTorch release runs it, in transformers: the reference
the ps_jax cache path is timed against (`torch_ps`).

From branch caches in hand (per branch, per layer post-RoPE keys and values [1, K, L_i, H], as
a worker's `DynamicCache` leaves them, keys at positions P_i + t):
1. re-encode: rotate every key by -P_i with the model's own rotary embedding (rotate-half
   RoPE, its inverse frequencies and scaling), so branch i sits at positions [0, L_i);
2. map: the cache mapper (DESIGN.md 2.3) gives per branch and layer alpha_k, beta_k, alpha_v,
   beta_v from [log1p(L_i), log1p(N), l/(nL-1)]; K = alpha_k K + beta_k, V = alpha_v V + beta_v
   (fp32, cast to the cache dtype);
3. merge: the branches concatenated along the sequence axis into a `DynamicCache`;
4. the synthesizer prompt at positions Lmax + t over that cache (attention mask of ones: every
   branch slot and, causally, the prompt), logits of the last position only, argmax.
The LoRA is merged into a copy of the weights (W + scale * A B): the fastest way to run it in
transformers, faster than PEFT's separate low-rank matmuls; ps_jax keeps it separate (the base
weights serve the workers too). The mapper and LoRA weights are the ps_jax adapter's.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ps_jax.adapter import Adapter

# One branch: per-layer (k, v) [1, K, L, H] post-RoPE at positions prompt_len + t.
LayerKV = list[tuple[Any, Any]]


def _rotate_half(x):
  import torch  # pylint: disable=import-outside-toplevel

  half = x.shape[-1] // 2
  return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _cache_kwarg(model) -> str:
  """The forward's cache keyword: `cache` (newer transformers) or `past_key_values`."""
  params = inspect.signature(type(model).forward).parameters
  return "cache" if "cache" in params else "past_key_values"


def _layers(cache) -> LayerKV:
  if hasattr(cache, "layers"):
    return [(layer.keys, layer.values) for layer in cache.layers]
  return [(k, v) for k, v in cache]


class TorchPS:
  """The reference-style PS of one example on a transformers causal LM (module docstring).

  `torch_model` (adapter off) computes the branch caches; a copy with the adapter's LoRA
  merged runs the synthesizer prompt (the same model when there is no LoRA).
  """

  def __init__(self, torch_model, adapter: Adapter | None):
    import torch  # pylint: disable=import-outside-toplevel

    self.torch, self.base = torch, torch_model
    self.device = next(torch_model.parameters()).device
    self.num_layers = torch_model.config.num_hidden_layers
    self.model = torch_model
    self.mapper = None
    if adapter is not None and adapter.lora is not None:
      self.model = copy.deepcopy(torch_model)
      self._merge_lora(adapter)
    if adapter is not None and adapter.mapper is not None:
      m = adapter.mapper
      if m.per_head:
        raise ValueError("the per-head mapper ablation has no reference-style equivalent")
      self.metadata_features = m.metadata_features
      self.mapper = tuple(
        torch.tensor(np.array(p[...]), dtype=torch.float32, device=self.device)
        for p in (m.w1, m.b1, m.w2, m.b2)
      )  # w1 [in, hidden], b1 [hidden], w2 [hidden, 4], b2 [4]
    self.rotary = self.model.model.rotary_emb
    self.cache_kwarg = _cache_kwarg(self.model)

  def _merge_lora(self, adapter: Adapter) -> None:
    torch = self.torch
    weights = adapter.lora.weights(np.float32)  # {"q": {"a": [L, in, r], "b": [L, r, out]}}
    scale = float(adapter.lora.scale)
    with torch.no_grad():
      for layer_index, layer in enumerate(self.model.model.layers):
        for name in ("q", "k", "v", "o"):
          proj = getattr(layer.self_attn, f"{name}_proj")
          a = np.asarray(weights[name]["a"][layer_index], np.float32)
          b = np.asarray(weights[name]["b"][layer_index], np.float32)
          delta = torch.as_tensor((scale * (a @ b)).T, device=self.device)  # [out, in]
          proj.weight.copy_((proj.weight.float() + delta).to(proj.weight.dtype))

  def sync(self) -> None:
    if self.device.type == "cuda":
      self.torch.cuda.synchronize(self.device)

  def branch_kv(self, ids: Sequence[int], prompt_len: int = 0) -> LayerKV:
    """A branch cache: `ids` run by the base model at positions prompt_len + t (untimed setup)."""
    torch = self.torch
    x = torch.as_tensor([list(ids)], dtype=torch.long, device=self.device)
    pos = torch.arange(prompt_len, prompt_len + len(ids), device=self.device)[None]
    with torch.inference_mode():
      out = self.base(input_ids=x, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None) or out.past_key_values
    return [(k.clone(), v.clone()) for k, v in _layers(cache)]

  def _coefficients(self, lengths: Sequence[int]):
    """[N, nL, 4] fp32 (alpha_k, beta_k, alpha_v, beta_v): one batched mapper call."""
    torch = self.torch
    n, num_layers = len(lengths), self.num_layers
    cols = []
    f = self.metadata_features
    if f in ("both", "length"):
      cols.append([[math.log1p(max(x, 1))] * num_layers for x in lengths])
    if f in ("both", "num_agents"):
      cols.append([[math.log1p(max(n, 1))] * num_layers] * n)
    cols.append([[i / max(num_layers - 1, 1) for i in range(num_layers)]] * n)
    x = torch.tensor(cols, dtype=torch.float32, device=self.device).permute(1, 2, 0)
    w1, b1, w2, b2 = self.mapper
    t = 0.1 * torch.tanh(torch.nn.functional.silu(x @ w1 + b1) @ w2 + b2)  # [N, nL, 4]
    return t + torch.tensor([1.0, 0.0, 1.0, 0.0], device=self.device)

  def merged_cache(self, branches: Sequence[LayerKV], prompt_lens: Sequence[int]):
    """Steps 1-3: re-encode, map, concatenate -> (DynamicCache, Lmax)."""
    from transformers import DynamicCache  # pylint: disable=import-outside-toplevel

    torch = self.torch
    lengths = [b[0][0].shape[2] for b in branches]
    coeffs = self._coefficients(lengths) if self.mapper is not None else None
    per_layer_k = [[] for _ in range(self.num_layers)]
    per_layer_v = [[] for _ in range(self.num_layers)]
    for i, (kv, p) in enumerate(zip(branches, prompt_lens, strict=True)):
      delta = torch.tensor([[-p]], dtype=torch.long, device=self.device)
      cos, sin = self.rotary(kv[0][0], delta)  # [1, 1, H]
      cos, sin = cos[:, None].float(), sin[:, None].float()
      for layer, (k, v) in enumerate(kv):
        k32 = k.float()
        k32 = k32 * cos + _rotate_half(k32) * sin
        v32 = v.float()
        if coeffs is not None:
          ak, bk, av, bv = coeffs[i, layer]
          k32, v32 = ak * k32 + bk, av * v32 + bv
        per_layer_k[layer].append(k32.to(k.dtype))
        per_layer_v[layer].append(v32.to(v.dtype))
    cache = DynamicCache()
    for layer in range(self.num_layers):
      cache.update(
        torch.cat(per_layer_k[layer], dim=2), torch.cat(per_layer_v[layer], dim=2), layer
      )
    return cache, max(lengths)

  def first_logits(self, branches: Sequence[LayerKV], synth_ids: Sequence[int], prompt_lens=None):
    """fp32 logits [V] of the synthesizer prompt's last token over the branches (steps 1-4)."""
    torch = self.torch
    prompt_lens = prompt_lens or [0] * len(branches)
    with torch.inference_mode():
      cache, lmax = self.merged_cache(branches, prompt_lens)
      t = len(synth_ids)
      ids = torch.as_tensor([list(synth_ids)], dtype=torch.long, device=self.device)
      pos = torch.arange(lmax, lmax + t, device=self.device)[None]
      mask = torch.ones((1, cache.get_seq_length() + t), dtype=torch.long, device=self.device)
      out = self.model(
        input_ids=ids,
        position_ids=pos,
        attention_mask=mask,
        use_cache=True,
        logits_to_keep=1,
        **{self.cache_kwarg: cache},
      )
      return out.logits[0, -1].float()

  def first_token(self, branches, synth_ids, prompt_lens=None) -> int:
    return int(self.first_logits(branches, synth_ids, prompt_lens).argmax())
