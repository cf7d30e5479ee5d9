"""`ps.load`: one entry point for HF folders, GGUF files and embedded model names."""

from __future__ import annotations

import os

import jax.numpy as jnp
from jax.sharding import Mesh

from ps_jax.io.gguf_import import config_from_gguf, load_gguf
from ps_jax.io.gguf_tokenizer import tokenizer_from_gguf
from ps_jax.io.hf import config_from_hf_folder, load_hf_folder
from ps_jax.io.registry import EMBEDDED, embedded_path
from ps_jax.model import ModelConfig, Transformer
from ps_jax.sharding import DEFAULT_RULES


def load(
  source: str, dtype=jnp.float32, *, mesh: Mesh | None = None, rules=DEFAULT_RULES
) -> tuple[Transformer, object | None]:
  """Loads (model, tokenizer) from a local HF folder, a .gguf file or an embedded name.

  With `mesh`, every parameter is read straight into its sharding on the mesh (logical axes
  mapped by `rules`, see ps_jax.sharding), so a model larger than one device loads.

  The tokenizer is a transformers tokenizer, or None where the source has none; a GGUF's is
  built from its metadata (ps_jax.io.gguf_tokenizer), so loading needs no torch.
  `model.config.name_or_path` / `.revision` record the source as an HF hub id where it maps to
  one (an embedded model, a hub-cache snapshot, a GGUF naming its source repository), else as an
  absolute path; adapters made for the model record them as their base model.
  """
  source = _resolve(source)
  placement = dict(dtype=dtype, mesh=mesh, sharding_rules=rules)
  if source.endswith(".gguf"):
    return load_gguf(source, **placement), _gguf_tokenizer(source)
  if os.path.isdir(source):
    return load_hf_folder(source, **placement), _folder_tokenizer(source)
  raise ValueError(
    f"cannot load {source!r}: expected a local transformers folder "
    f"(config.json + *.safetensors), a .gguf file, or an embedded name "
    f"{sorted(EMBEDDED)}"
  )


def load_tokenizer(source: str):
  """The tokenizer of a source (as `load` returns it) without loading the weights."""
  path = _resolve(source)
  return _gguf_tokenizer(path) if path.endswith(".gguf") else _folder_tokenizer(path)


def load_config(source: str) -> ModelConfig:
  """The ModelConfig of a source without loading the weights (with `name_or_path` and
  `revision` saying where it comes from, as `load` records them)."""
  path = _resolve(source)
  if path.endswith(".gguf"):
    import gguf  # pylint: disable=import-outside-toplevel

    return config_from_gguf(gguf.GGUFReader(path), path)
  return config_from_hf_folder(path)


def _resolve(source: str) -> str:
  source = os.fspath(source)
  return embedded_path(source) if source in EMBEDDED else source


def _folder_tokenizer(folder: str):
  if not any(
    os.path.exists(os.path.join(folder, f))
    for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
  ):
    return None
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel

  return AutoTokenizer.from_pretrained(folder)


def _gguf_tokenizer(path: str):
  # Built from the file's metadata: transformers' own GGUF reader would import torch.
  return tokenizer_from_gguf(path)
