"""Import of transformers checkpoints: a local folder with config.json and *.safetensors."""

from __future__ import annotations

import dataclasses
import json
import os
import re

from safetensors import safe_open

from ps_jax.io.params import decoder_rules, load_params, transpose
from ps_jax.model import ModelConfig, Transformer
from ps_jax.sharding import DEFAULT_RULES

_L = "model.layers.{i}."
HF_NAMES = {
  "embed": "model.embed_tokens.weight",
  "final_norm/scale": "model.norm.weight",
  "lm_head": "lm_head.weight",
  "blocks/attn_norm/scale": _L + "input_layernorm.weight",
  "blocks/mlp_norm/scale": _L + "post_attention_layernorm.weight",
  "blocks/attn/q/kernel": _L + "self_attn.q_proj.weight",
  "blocks/attn/k/kernel": _L + "self_attn.k_proj.weight",
  "blocks/attn/v/kernel": _L + "self_attn.v_proj.weight",
  "blocks/attn/o/kernel": _L + "self_attn.o_proj.weight",
  "blocks/attn/q/bias": _L + "self_attn.q_proj.bias",
  "blocks/attn/k/bias": _L + "self_attn.k_proj.bias",
  "blocks/attn/v/bias": _L + "self_attn.v_proj.bias",
  "blocks/attn/q_norm/scale": _L + "self_attn.q_norm.weight",
  "blocks/attn/k_norm/scale": _L + "self_attn.k_norm.weight",
  "blocks/mlp/gate/kernel": _L + "mlp.gate_proj.weight",
  "blocks/mlp/up/kernel": _L + "mlp.up_proj.weight",
  "blocks/mlp/down/kernel": _L + "mlp.down_proj.weight",
}
# torch Linear weights are [out, in]; our kernels are [in, out].
HF_HOOKS = {k: transpose for k in HF_NAMES if k.endswith("kernel") or k == "lm_head"}


def safetensors_files(folder: str) -> list[str]:
  index = os.path.join(folder, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  else:
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"{folder}: no *.safetensors files")
  return [os.path.join(folder, f) for f in files]


# A folder of the hub's cache: <cache>/models--<org>--<name>/snapshots/<commit> ("/" in the
# repo id is "--" there; repo ids cannot contain "--" themselves).
_HUB_CACHE_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+)/snapshots/([0-9a-f]{40})$")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def folder_provenance(folder: str) -> tuple[str, str | None]:
  """(name_or_path, revision) of a transformers folder, as PEFT would name it as a base model.

  A snapshot in the hub's cache is its hub id and commit; a folder that
  `huggingface_hub` downloaded into (local_dir, whose .cache/huggingface/download/ records the
  commit of each file) is its absolute path and that commit; any other folder is its absolute
  path with no revision.
  """
  folder = os.path.abspath(folder)
  m = _HUB_CACHE_SNAPSHOT.search(folder.replace(os.sep, "/"))
  if m:
    return m.group(1).replace("--", "/"), m.group(2)
  meta = os.path.join(folder, ".cache", "huggingface", "download", "config.json.metadata")
  revision = None
  if os.path.exists(meta):
    with open(meta) as f:
      first = f.readline().strip()
    revision = first if _COMMIT.fullmatch(first) else None
  return folder, revision


def config_from_hf_folder(folder: str) -> ModelConfig:
  """The folder's ModelConfig, with where it comes from (`folder_provenance`)."""
  config_path = os.path.join(folder, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{folder}: no config.json (expected a transformers model folder)")
  name_or_path, revision = folder_provenance(folder)
  return dataclasses.replace(
    ModelConfig.from_hf_file(config_path), name_or_path=name_or_path, revision=revision
  )


def load_hf_folder(folder: str, *, dtype, mesh=None, sharding_rules=DEFAULT_RULES) -> Transformer:
  config = config_from_hf_folder(folder)
  # framework="flax" reads bf16 tensors, which numpy cannot.
  handles = [safe_open(p, framework="flax") for p in safetensors_files(folder)]
  where = {name: h for h in handles for name in h.keys()}

  def get_tensor(name):
    h = where.get(name)
    return None if h is None else h.get_tensor(name)

  return load_params(
    config,
    decoder_rules(config, HF_NAMES, HF_HOOKS),
    get_tensor,
    dtype=dtype,
    source=folder,
    available=where,
    mesh=mesh,
    sharding_rules=sharding_rules,
  )
