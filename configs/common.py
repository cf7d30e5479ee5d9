"""Helpers shared by the config files (big_vision style): the config argument parser, the
mesh and sharding sections."""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder


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


# The logical axes of ps_jax.sharding.LOGICAL_AXES (tests/test_sharding.py checks they agree;
# repeated here so that loading a config imports no jax).
LOGICAL_AXES = (
  "batch",
  "vocab",
  "embed",
  "q_heads",
  "kv_heads",
  "mlp",
  "layers",
  "head_dim",
  "length",
)


def mesh_section(data: int = 1, fsdp: int = -1, tensor: int = 1) -> ml_collections.ConfigDict:
  """A `mesh` section (ps_jax.sharding.MeshConfig.from_config): the (data, fsdp, tensor) sizes
  within one slice or host (ICI; one may be -1: all remaining devices), `dcn` the sizes across
  slices or hosts (all 1: one slice), `granule` what one DCN unit is ("slice" on TPU,
  "process" on GPUs, one process per node). Multislice: --config.mesh.dcn.data=2."""
  dcn = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
  return ml_collections.ConfigDict(
    dict(data=data, fsdp=fsdp, tensor=tensor, dcn=dcn, granule="slice")
  )


def sharding_section(preset: str = "fsdp") -> ml_collections.ConfigDict:
  """A `sharding` section (ps_jax.sharding.rules_from_config): a rules preset ("fsdp",
  "tensor", "data") and one override slot per logical axis, each None (the preset's rule) or a
  tuple of mesh axes (() = replicated): --config.sharding.preset=tensor,
  --config.sharding.rules.embed=fsdp, --config.sharding.rules.mlp='()'."""
  rules = ml_collections.ConfigDict({name: placeholder(tuple) for name in LOGICAL_AXES})
  return ml_collections.ConfigDict(dict(preset=preset, rules=rules))
