"""Filling a model's parameters from named checkpoint tensors: a name table plus per-tensor hooks.

Each rule maps one of our parameter paths to a checkpoint tensor name (a template with `{i}`
for layer-stacked parameters) and a hook that turns the stored array into our layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from ps_jax.model import ModelConfig, Transformer
from ps_jax.sharding import DEFAULT_RULES, state_shardings

Hook = Callable[[np.ndarray, int], np.ndarray]  # (array, layer index) -> array


def transpose(x: np.ndarray, _layer: int) -> np.ndarray:
  return x.T


def identity(x: np.ndarray, _layer: int) -> np.ndarray:
  return x


@dataclasses.dataclass(frozen=True)
class Rule:
  path: tuple[str, ...]  # our parameter path, e.g. ("blocks", "attn", "q", "kernel")
  name: str  # checkpoint tensor name; "{i}" is the layer index for "blocks" paths
  hook: Hook = identity


class MissingTensorError(KeyError):
  pass


# Buffers some checkpoints carry that hold nothing the model needs.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def load_params(
  config: ModelConfig,
  rules: list[Rule],
  get_tensor: Callable[[str], np.ndarray | None],
  *,
  dtype,
  source: str,
  available: Iterable[str],
  mesh: Mesh | None = None,
  sharding_rules=DEFAULT_RULES,
) -> Transformer:
  """Builds a Transformer whose every parameter comes from `get_tensor` via `rules`.

  With `mesh`, each parameter goes from host memory straight into its sharding on the mesh
  (`sharding.state_shardings` by `sharding_rules`), each device receiving only its slice: the
  model is never whole on one device. Without, everything lands on the default device.

  Raises a clear error naming the tensor for a missing tensor, a shape mismatch, a model
  parameter that no rule covers, or a checkpoint tensor that nothing uses (a part of the
  architecture ps_jax does not model, which would otherwise be silently dropped).
  """
  used: set[str] = set()

  def fetch(name: str):
    used.add(name)
    return get_tensor(name)

  abstract = nnx.eval_shape(lambda: Transformer(config, dtype=dtype, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  shardings = None
  if mesh is not None:
    shardings = {
      tuple(str(p) for p in path): sharding
      for path, sharding in nnx.to_flat_state(state_shardings(state, mesh, sharding_rules))
    }
  by_path = {r.path: r for r in rules}
  flat = []
  for path, var in nnx.to_flat_state(state):
    path = tuple(str(p) for p in path)
    rule = by_path.get(path)
    if rule is None:
      raise ValueError(f"{source}: no checkpoint rule for parameter {'/'.join(path)}")
    expected = tuple(var.shape)
    if path[0] == "blocks":
      value = np.stack(
        [_fetch(rule, fetch, source, i, expected[1:]) for i in range(config.num_layers)]
      )
    else:
      value = _fetch(rule, fetch, source, None, expected)
    array = (
      jnp.asarray(value, dtype)
      if shardings is None
      else _host_to_sharded(np.asarray(value).astype(dtype), shardings[path])
    )
    flat.append((path, var.replace(array)))
  unused = sorted(n for n in available if n not in used and not n.endswith(IGNORED_SUFFIXES))
  if unused:
    raise ValueError(
      f"{source}: {len(unused)} checkpoint tensors are not used by the "
      f"{config.family} model, e.g. {unused[:5]}; ps_jax does not model them"
    )
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _host_to_sharded(host: np.ndarray, sharding) -> jax.Array:
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _fetch(rule: Rule, get_tensor, source: str, layer: int | None, expected) -> np.ndarray:
  name = rule.name.format(i=layer) if layer is not None else rule.name
  raw = get_tensor(name)
  if raw is None:
    raise MissingTensorError(
      f"{source}: missing tensor {name!r} (for parameter {'/'.join(rule.path)})"
    )
  value = rule.hook(np.asarray(raw), layer or 0)
  if tuple(value.shape) != tuple(expected):
    raise ValueError(
      f"{source}: tensor {name!r} has shape {tuple(raw.shape)} "
      f"(-> {tuple(value.shape)} after conversion), but parameter "
      f"{'/'.join(rule.path)} expects {tuple(expected)}"
    )
  return value


def decoder_rules(config: ModelConfig, names: dict[str, str], hooks: dict[str, Hook]) -> list[Rule]:
  """Rules for the decoder given a format's tensor names for each of our parameters."""
  keys = [
    "embed",
    "final_norm/scale",
    "blocks/attn_norm/scale",
    "blocks/mlp_norm/scale",
    "blocks/attn/q/kernel",
    "blocks/attn/k/kernel",
    "blocks/attn/v/kernel",
    "blocks/attn/o/kernel",
    "blocks/mlp/gate/kernel",
    "blocks/mlp/up/kernel",
    "blocks/mlp/down/kernel",
  ]
  if not config.tie_embeddings:
    keys.append("lm_head")
  if config.qkv_bias:
    keys += ["blocks/attn/q/bias", "blocks/attn/k/bias", "blocks/attn/v/bias"]
  if config.qk_norm:
    keys += ["blocks/attn/q_norm/scale", "blocks/attn/k_norm/scale"]
  return [Rule(tuple(k.split("/")), names[k], hooks.get(k, identity)) for k in keys]
