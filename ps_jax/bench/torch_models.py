"""The transformers (PyTorch) side of the benchmarks: loading a model beside ps_jax's, or a
random model of a given shape with the same weights in both frameworks (no hub, no files)."""

from __future__ import annotations

import dataclasses
import os

from ps_jax.model import ModelConfig, Transformer

# ps_jax family -> transformers model_type
_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def torch_dtype(name: str):
  import torch  # pylint: disable=import-outside-toplevel

  from ps_jax.experiment import dtype  # pylint: disable=import-outside-toplevel

  return getattr(torch, str(dtype(name)))


def resolve_device(name: str) -> str:
  """ "auto": cuda where torch sees a GPU, else cpu."""
  if name != "auto":
    return name
  import torch  # pylint: disable=import-outside-toplevel

  return "cuda" if torch.cuda.is_available() else "cpu"


def load_torch_model(
  source: str, dtype: str = "float32", *, attention: str = "sdpa", device: str = "cpu"
):
  """transformers' own load of an embedded name, a .gguf file or an HF folder (eval mode).

  attention: transformers' `attn_implementation` ("sdpa": torch's fused scaled-dot-product
  attention, its fastest built-in; "eager": plain matmuls + softmax).
  """
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel

  from ps_jax.io.registry import EMBEDDED, embedded_path  # pylint: disable=import-outside-toplevel

  path = embedded_path(source) if source in EMBEDDED else source
  kwargs = dict(attn_implementation=attention, dtype=torch_dtype(dtype))
  if path.endswith(".gguf"):
    hf = AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path) or ".", gguf_file=os.path.basename(path), **kwargs
    )
  else:
    hf = AutoModelForCausalLM.from_pretrained(path, **kwargs)
  return hf.to(device).eval()


def hf_config_of(config: ModelConfig, attention: str = "sdpa"):
  """The transformers config of a ps_jax ModelConfig (the inverse of ModelConfig.from_hf)."""
  from transformers import AutoConfig  # pylint: disable=import-outside-toplevel

  s = config.rope_scaling
  scaling = None
  if s.kind == "linear":
    scaling = {"rope_type": "linear", "factor": s.factor}
  elif s.kind == "llama3":
    scaling = {
      "rope_type": "llama3",
      "factor": s.factor,
      "low_freq_factor": s.low_freq_factor,
      "high_freq_factor": s.high_freq_factor,
      "original_max_position_embeddings": s.original_max_position_embeddings,
    }
  kwargs = dict(
    vocab_size=config.vocab_size,
    hidden_size=config.hidden_size,
    intermediate_size=config.intermediate_size,
    num_hidden_layers=config.num_layers,
    num_attention_heads=config.num_heads,
    num_key_value_heads=config.num_kv_heads,
    head_dim=config.head_dim,
    rms_norm_eps=config.rms_norm_eps,
    rope_theta=config.rope_theta,
    tie_word_embeddings=config.tie_embeddings,
    max_position_embeddings=config.max_position_embeddings,
    bos_token_id=config.bos_token_id,
    eos_token_id=list(config.eos_token_ids) or None,
    attn_implementation=attention,
  )
  if scaling is not None:
    kwargs["rope_scaling"] = scaling
  if config.family == "llama":
    kwargs["attention_bias"] = config.qkv_bias
  out = AutoConfig.for_model(_MODEL_TYPES[config.family], **kwargs)
  got = ModelConfig.from_hf(out.to_dict())
  want = dataclasses.replace(config, name_or_path=None, revision=None)
  if dataclasses.replace(got, bos_token_id=want.bos_token_id) != want:
    raise ValueError(f"transformers config does not round-trip: {got} != {want}")
  return out


def random_pair(
  config: ModelConfig,
  *,
  dtype: str = "float32",
  device: str = "cpu",
  attention: str = "sdpa",
  seed: int = 0,
) -> tuple[Transformer, object]:
  """(ps_jax model, transformers model) of `config` with the same random weights.

  The transformers model is initialised as transformers does (normal(0, initializer_range)),
  on `device`; ps_jax's parameters are its tensors, converted by the HF folder importer's
  rules. Timing does not depend on the weights; equal weights let the first tokens agree.
  """
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel

  from ps_jax.experiment import dtype as jnp_dtype  # pylint: disable=import-outside-toplevel
  from ps_jax.io.hf import HF_HOOKS, HF_NAMES  # pylint: disable=import-outside-toplevel
  from ps_jax.io.params import decoder_rules, load_params  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  with torch.device(device):
    hf = AutoModelForCausalLM.from_config(
      hf_config_of(config, attention), dtype=torch_dtype(dtype)
    ).eval()
  tensors = dict(hf.state_dict())
  if config.tie_embeddings:  # the head shares the embedding: ps_jax reads it once
    tensors.pop("lm_head.weight", None)

  def get_tensor(name):
    t = tensors.get(name)
    if t is None:
      return None
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret the bits (no fp32 copy)
      return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()

  model = load_params(
    config,
    decoder_rules(config, HF_NAMES, HF_HOOKS),
    get_tensor,
    dtype=jnp_dtype(dtype),
    source="random transformers model",
    available=tensors,
  )
  return model, hf
