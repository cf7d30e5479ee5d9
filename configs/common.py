"""Helpers shared by the config files (big_vision style): argument parsing and dtype names."""

from __future__ import annotations

import ml_collections

# Config-facing dtype names -> numpy/JAX dtype names (kept as strings so configs import no jax).
DTYPES = {
  "float32": "float32",
  "fp32": "float32",
  "bfloat16": "bfloat16",
  "bf16": "bfloat16",
  "float16": "float16",
  "fp16": "float16",
}


def dtype(name: str):
  """The jnp dtype for a config's dtype name ("float32", "bfloat16", ...)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  key = str(name).lower()
  if key not in DTYPES:
    raise ValueError(f"config dtype={name!r} is not one of {sorted(DTYPES)}")
  return jnp.dtype(DTYPES[key])


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
  """Parses the config file's single string argument, `--config=file.py:k1=v1,k2=v2`.

  `spec` gives each key's default; a value's type follows its default's type (bools accept
  true/false/1/0). A bare word without "=" sets the first key. Unknown keys raise.
  """
  out = ml_collections.ConfigDict(dict(spec))
  if not arg:
    return out
  keys = list(spec)
  for i, item in enumerate(a for a in arg.split(",") if a):
    key, sep, value = item.partition("=")
    if not sep:
      if i or not keys:
        raise ValueError(f"config arg {item!r}: expected key=value (keys: {keys})")
      key, value = keys[0], item
    if key not in spec:
      raise ValueError(f"config arg {key!r} is unknown (keys: {keys})")
    default = spec[key]
    if isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config arg {key}={value!r}: expected true or false")
      out[key] = value.lower() in ("true", "1")
    elif default is None or isinstance(default, str):
      out[key] = value
    else:
      out[key] = type(default)(value)
  return out


def build_model(cfg):
  """(model, tokenizer) of a config's `model` section: the configured source, or a random model
  of `random_shape` with the source's tokenizer and vocabulary (tiny test and smoke runs)."""
  import dataclasses  # pylint: disable=import-outside-toplevel

  from flax import nnx  # pylint: disable=import-outside-toplevel

  import ps_jax as ps  # pylint: disable=import-outside-toplevel

  if not cfg.random_init:
    return ps.load(cfg.source, dtype=dtype(cfg.dtype))
  config = dataclasses.replace(ps.io.load_config(cfg.source), **dict(cfg.random_shape))
  return (
    ps.Transformer(config, dtype=dtype(cfg.dtype), rngs=nnx.Rngs(0)),
    ps.io.load_tokenizer(cfg.source),
  )
