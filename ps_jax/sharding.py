"""Meshes, the logical-axis rules table, and placing parameters and activations on a mesh.

Model code names logical axes (`logical_axes` metadata on every parameter); a rules table maps
them to the mesh axes (data, fsdp, tensor). The table comes from the config's `sharding`
section (`rules_from_config`: a preset of RULE_PRESETS, fsdp / tensor / data, with per-axis
overrides); the mesh from its `mesh` section (`MeshConfig.from_config`, one slice or an ICI x
DCN hybrid across slices or hosts). The mesh uses Auto axis types on purpose: shardings are
declared at jit boundaries (parameters, inputs, outputs) and XLA propagates them through the
model, so the model code stays free of per-op sharding annotations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# A rules table: logical axis -> mesh axis, tuple of mesh axes, or None (replicated).
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# The logical axes model code names (parameters' `logical_axes` metadata, activations).
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

# Rules presets (`c.sharding.preset`). In every preset the batch is split over data and fsdp, so
# a preset picks how the *weights* are split; the mesh's axis sizes pick how many ways.
# A mesh axis that does not divide a dimension is dropped for that dimension (e.g. 3 kv heads
# on tensor=2 stay replicated), so any mesh can hold any model under any preset.
RULE_PRESETS: dict[str, Rules] = {
  # FSDP (ZeRO-3) along embed, plus Megatron-style tensor parallelism when the mesh has tensor > 1.
  "fsdp": (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("layers", None),
    ("head_dim", None),
    ("length", None),
  ),
  # Tensor parallel only: heads, MLP and vocabulary split over tensor, every weight replicated
  # over data and fsdp (which then only split the batch).
  "tensor": (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", None),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("layers", None),
    ("head_dim", None),
    ("length", None),
  ),
  # Data parallel: every weight replicated on every device, only the batch is split.
  "data": (("batch", ("data", "fsdp")),) + tuple((a, None) for a in LOGICAL_AXES[1:]),
}
DEFAULT_RULES: Rules = RULE_PRESETS["fsdp"]


def rules_from_config(section=None) -> Rules:
  """The rules table of a config's `sharding` section: `preset` (a RULE_PRESETS name) with
  `rules.<logical axis>` overrides, each None (the preset's), a tuple of mesh axes (() =
  replicated) or one mesh axis name. None (no section) is the fsdp preset."""
  if section is None:
    return DEFAULT_RULES
  preset = section.get("preset", "fsdp")
  if preset not in RULE_PRESETS:
    raise ValueError(f"sharding.preset={preset!r}; expected one of {sorted(RULE_PRESETS)}")
  table = dict(RULE_PRESETS[preset])
  for name, value in dict(section.get("rules") or {}).items():
    if name not in table:
      raise ValueError(f"sharding.rules.{name}: unknown logical axis; known: {list(table)}")
    if value is None:
      continue
    axes = (value,) if isinstance(value, str) else tuple(value)
    for ax in axes:
      if ax not in MESH_AXES:
        raise ValueError(f"sharding.rules.{name}={value!r}: {ax!r} is not one of {MESH_AXES}")
    if len(set(axes)) != len(axes):
      raise ValueError(f"sharding.rules.{name}={value!r} names a mesh axis twice")
    table[name] = None if not axes else axes[0] if len(axes) == 1 else axes
  return tuple(table.items())


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape; one axis may be -1 to take all remaining devices (of a slice, with dcn).

  dcn: (data, fsdp, tensor) sizes across slices (TPU multislice) or hosts (multi-node GPU);
  the mesh axis sizes are then ICI x DCN, e.g. data=1, dcn=(2, 1, 1) on 2 slices gives
  data=2 with the two halves of the data axis on different slices, so that only the data
  parallel gradient reduction crosses the slow network. granule: what one DCN unit is,
  "slice" (TPU: the devices' slice_index) or "process" (GPU: one process per node, since
  devices there carry no slice index).
  """

  data: int = 1
  fsdp: int = -1
  tensor: int = 1
  dcn: tuple[int, int, int] = (1, 1, 1)
  granule: str = "slice"

  def __post_init__(self):
    object.__setattr__(self, "dcn", tuple(int(x) for x in self.dcn))
    if len(self.dcn) != len(MESH_AXES) or min(self.dcn) < 1:
      raise ValueError(f"mesh.dcn={self.dcn}: expected {len(MESH_AXES)} sizes >= 1 {MESH_AXES}")
    if self.granule not in ("slice", "process"):
      raise ValueError(f"mesh.granule={self.granule!r}: expected 'slice' or 'process'")

  @classmethod
  def from_config(cls, section) -> MeshConfig:
    """From a config's `mesh` section: data, fsdp, tensor, optional dcn (a mapping or a tuple
    over data, fsdp, tensor) and granule."""
    d = dict(section)
    dcn = d.pop("dcn", (1, 1, 1))
    if not isinstance(dcn, tuple | list):
      dcn = dict(dcn)
      unknown = set(dcn) - set(MESH_AXES)
      if unknown:
        raise ValueError(f"mesh.dcn: unknown axes {sorted(unknown)}; expected {MESH_AXES}")
      dcn = tuple(dcn.get(a, 1) for a in MESH_AXES)
    return cls(**d, dcn=tuple(dcn))

  @property
  def num_granules(self) -> int:
    return math.prod(self.dcn)


def _ici_shape(config: MeshConfig, num_devices: int) -> list[int]:
  """The per-granule (ICI) shape with a -1 axis resolved over `num_devices` devices."""
  shape = [config.data, config.fsdp, config.tensor]
  if shape.count(-1) > 1:
    raise ValueError(f"mesh {config}: at most one axis may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh {config}: {num_devices} devices are not divisible by {known}")
    shape[shape.index(-1)] = num_devices // known
  return shape


_PLURAL = {"slice": "slices", "process": "processes"}


def hybrid_device_array(config: MeshConfig, devices: Sequence) -> np.ndarray:
  """Devices [data, fsdp, tensor] for a multi-slice / multi-host mesh: ICI shape within each
  granule (slice or process), DCN shape across them (`mesh_utils.create_hybrid_device_mesh`)."""
  attr = "slice_index" if config.granule == "slice" else "process_index"
  granules = {getattr(d, attr, None) for d in devices}
  if None in granules:
    raise ValueError(
      f"mesh.dcn={config.dcn} with granule={config.granule!r}: the devices carry no {attr} "
      "(only TPU devices have slice_index; on GPUs use granule='process', one process per node)"
    )
  if len(granules) != config.num_granules:
    raise ValueError(
      f"mesh.dcn={config.dcn} needs {config.num_granules} {_PLURAL[config.granule]}, the devices "
      f"span {len(granules)}"
    )
  per_granule = len(devices) // len(granules)
  ici = _ici_shape(config, per_granule)
  if math.prod(ici) != per_granule:
    raise ValueError(
      f"mesh {config}: the ICI shape {tuple(ici)} must cover the {per_granule} devices of each "
      f"{config.granule}"
    )
  return mesh_utils.create_hybrid_device_mesh(
    ici, config.dcn, devices, process_is_granule=config.granule == "process"
  )


def make_mesh(
  config: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """The (data, fsdp, tensor) mesh of `config`: `jax.make_mesh` on one slice or host (dcn all
  1), `mesh_utils.create_hybrid_device_mesh` across several. Axis types are Auto: shardings are
  declared at jit boundaries and XLA propagates them through the model."""
  devices = list(devices if devices is not None else jax.devices())
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if config.num_granules > 1:
    return Mesh(hybrid_device_array(config, devices), MESH_AXES, axis_types=axis_types)
  shape = _ici_shape(config, len(devices))
  if math.prod(shape) > len(devices):
    raise ValueError(f"mesh {config} needs {math.prod(shape)} devices, {len(devices)} given")
  devices = devices[: math.prod(shape)]  # a fully specified smaller mesh uses the first ones
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=axis_types, devices=devices)


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


def build_on_mesh(factory, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.Module:
  """`factory()` (a module, e.g. a randomly initialised Transformer) with every parameter
  created directly in its sharding on `mesh`: the init runs under jit with the rules' output
  shardings, so no device ever holds the whole model (a model larger than one device's memory
  is built this way, not built and then placed)."""
  graphdef, abstract = nnx.split(nnx.eval_shape(factory))
  shardings = state_shardings(abstract, mesh, rules)
  state = jax.jit(lambda: nnx.split(factory())[1], out_shardings=shardings)()
  return nnx.merge(graphdef, state)


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
