"""Import of llama.cpp GGUF files (Llama architecture), dequantized with the `gguf` package."""

from __future__ import annotations

import os
import re

import numpy as np

from ps_jax.io.params import decoder_rules, load_params
from ps_jax.io.registry import HUB_IDS, embedded_name
from ps_jax.model import ModelConfig, Transformer
from ps_jax.sharding import DEFAULT_RULES

_B = "blk.{i}."
GGUF_NAMES = {
  "embed": "token_embd.weight",
  "final_norm/scale": "output_norm.weight",
  "lm_head": "output.weight",
  "blocks/attn_norm/scale": _B + "attn_norm.weight",
  "blocks/mlp_norm/scale": _B + "ffn_norm.weight",
  "blocks/attn/q/kernel": _B + "attn_q.weight",
  "blocks/attn/k/kernel": _B + "attn_k.weight",
  "blocks/attn/v/kernel": _B + "attn_v.weight",
  "blocks/attn/o/kernel": _B + "attn_output.weight",
  "blocks/mlp/gate/kernel": _B + "ffn_gate.weight",
  "blocks/mlp/up/kernel": _B + "ffn_up.weight",
  "blocks/mlp/down/kernel": _B + "ffn_down.weight",
}


def unpermute_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row permutation (interleaved RoPE pairs -> HF rotate-half).

  llama.cpp stores each head's rows as (H/2, 2) pairs; HF stores them as (2, H/2) halves.
  """
  out_dim = w.shape[0]
  return (
    w.reshape(num_heads, out_dim // num_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  )


def _field(reader, key, default=None):
  f = reader.fields.get(key)
  return default if f is None else f.contents()


_HF_REPO_URL = re.compile(r"https://huggingface\.co/([\w.-]+(?:/[\w.-]+)?)/?")


def gguf_provenance(reader, path: str) -> tuple[str, str | None]:
  """(name_or_path, revision) of a GGUF file, as PEFT would name its base model: the HF hub id
  of an embedded model (ps_jax.io.registry) or of the hub repository the file records as its
  conversion source (general.source.repo_url), else the file's absolute path."""
  name = embedded_name(path)
  if name is not None:
    return HUB_IDS[name]
  url = _field(reader, "general.source.repo_url")
  m = _HF_REPO_URL.fullmatch(url) if isinstance(url, str) else None
  return (m.group(1), None) if m else (os.path.abspath(path), None)


def config_from_gguf(reader, path: str | None = None) -> ModelConfig:
  """The file's ModelConfig; with `path`, also where it comes from (`gguf_provenance`)."""
  arch = _field(reader, "general.architecture")
  if arch != "llama":
    raise ValueError(f"GGUF architecture {arch!r} is not supported (supported: 'llama')")
  p = "llama."
  heads = int(_field(reader, p + "attention.head_count"))
  hidden = int(_field(reader, p + "embedding_length"))
  vocab = _field(reader, p + "vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
  eos = _field(reader, "tokenizer.ggml.eos_token_id")
  if any(t.name == "rope_freqs.weight" for t in reader.tensors):
    raise ValueError(
      "GGUF tensor rope_freqs.weight (llama.cpp's per-frequency RoPE scaling, "
      "as in Llama 3.1+) is not supported yet"
    )
  if _field(reader, p + "rope.scaling.type") not in (None, "none"):
    raise ValueError(
      f"GGUF rope scaling is not supported yet: {_field(reader, p + 'rope.scaling.type')!r}"
    )
  name_or_path, revision = (None, None) if path is None else gguf_provenance(reader, path)
  return ModelConfig(
    family="llama",
    vocab_size=int(vocab),
    hidden_size=hidden,
    intermediate_size=int(_field(reader, p + "feed_forward_length")),
    num_layers=int(_field(reader, p + "block_count")),
    num_heads=heads,
    num_kv_heads=int(_field(reader, p + "attention.head_count_kv", heads)),
    head_dim=int(_field(reader, p + "rope.dimension_count", hidden // heads)),
    rms_norm_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon", 1e-5)),
    rope_theta=float(_field(reader, p + "rope.freq_base", 10000.0)),
    tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
    max_position_embeddings=int(_field(reader, p + "context_length", 8192)),
    bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
    eos_token_ids=() if eos is None else (int(eos),),
    name_or_path=name_or_path,
    revision=revision,
  )


def load_gguf(path: str, *, dtype, mesh=None, sharding_rules=DEFAULT_RULES) -> Transformer:
  import gguf  # pylint: disable=import-outside-toplevel

  if not os.path.exists(path):
    raise FileNotFoundError(path)
  reader = gguf.GGUFReader(path)
  config = config_from_gguf(reader, path)
  tensors = {t.name: t for t in reader.tensors}
  hooks = {
    # numpy dequantization yields torch-like [out, in]; our kernels are [in, out].
    **{k: (lambda x, _l: x.T) for k in GGUF_NAMES if k.endswith("kernel") or k == "lm_head"},
    "blocks/attn/q/kernel": lambda x, _l: unpermute_rows(x, config.num_heads).T,
    "blocks/attn/k/kernel": lambda x, _l: unpermute_rows(x, config.num_kv_heads).T,
  }

  def get_tensor(name):
    t = tensors.get(name)
    if t is None:
      return None
    return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)

  return load_params(
    config,
    decoder_rules(config, GGUF_NAMES, hooks),
    get_tensor,
    dtype=dtype,
    source=path,
    available=tensors,
    mesh=mesh,
    sharding_rules=sharding_rules,
  )
