"""Helpers shared by the config files (big_vision style): the config argument parser."""

from __future__ import annotations

import ml_collections


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
