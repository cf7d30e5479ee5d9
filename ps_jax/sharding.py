"""Meshes, the logical-axis rules table, and placing parameters and activations on a mesh.

Model code names logical axes (`logical_axes` metadata on every parameter); one rules table
maps them to the mesh axes (data, fsdp, tensor). The mesh uses Auto axis types on purpose:
shardings are declared at jit boundaries (parameters, inputs, outputs) and XLA propagates
them through the model, so the model code stays free of per-op sharding annotations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes. A mesh axis that does not divide a dimension is dropped for that
# dimension (e.g. 3 kv heads on tensor=2 stay replicated), so any mesh can hold any model.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("batch", ("data", "fsdp")),
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("q_heads", "tensor"),
  ("kv_heads", "tensor"),
  ("mlp", "tensor"),
  ("layers", None),
  ("head_dim", None),
  ("length", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape; one axis may be -1 to take all remaining devices."""

  data: int = 1
  fsdp: int = -1
  tensor: int = 1


def make_mesh(
  config: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None
) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = [config.data, config.fsdp, config.tensor]
  if shape.count(-1) > 1:
    raise ValueError(f"mesh {config}: at most one axis may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh {config}: {len(devices)} devices are not divisible by {known}")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) > len(devices):
    raise ValueError(f"mesh {config} needs {math.prod(shape)} devices, {len(devices)} given")
  devices = devices[: math.prod(shape)]  # a fully specified smaller mesh uses the first ones
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(
  names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=DEFAULT_RULES
) -> PartitionSpec:
  """PartitionSpec for an array with the given logical axis names and shape."""
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, dim in zip(names, shape, strict=True):
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    kept = []
    for ax in axes:
      size = mesh.shape[ax]
      if ax not in used and dim % (math.prod(mesh.shape[a] for a in kept) * size) == 0:
        kept.append(ax)
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*spec)


def state_shardings(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedSharding for every parameter, from its `logical_axes` metadata."""

  def one(var):
    names = var.get_metadata().get("logical_axes") or (None,) * var.ndim
    return NamedSharding(mesh, logical_to_spec(names, var.shape, mesh, rules))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.Module:
  """Places the model's parameters on the mesh by the rules (returns the same model)."""
  state = nnx.state(model)
  nnx.update(model, jax.device_put(state, state_shardings(state, mesh, rules)))
  return model


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES) -> NamedSharding:
  """Sharding of an activation [B, ...]: batch over (data, fsdp), the rest replicated."""
  batch_axes = dict(rules)["batch"]
  return NamedSharding(mesh, PartitionSpec(batch_axes, *([None] * (ndim - 1))))


def sharded_forward(model: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES):
  """A jitted `(params, tokens [B, T], positions [B, T]) -> logits [B, T, V]` with declared
  in/out shardings, plus the placed params. B must be divisible by data * fsdp."""
  graphdef, state = nnx.split(model)
  shardings = state_shardings(state, mesh, rules)
  tokens_sharding = batch_sharding(mesh, 2, rules)

  @functools.partial(
    jax.jit,
    in_shardings=(shardings, tokens_sharding, tokens_sharding),
    out_shardings=batch_sharding(mesh, 3, rules),
  )
  def forward(params, tokens, positions):
    logits, _ = nnx.merge(graphdef, params)(tokens, positions)
    return logits

  params = jax.device_put(state, shardings)
  return forward, params
