"""Sharded forward on 8 fake CPU devices == the 1-device forward; the rules table really shards;
loading and random init create parameters directly in their shardings;
rules presets and overrides from the config; hybrid (ICI x DCN) device layouts."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import helpers
import ps_jax
from ps_jax import distributed
from ps_jax.experiment import train_config
from ps_jax.sharding import (
  DEFAULT_RULES,
  LOGICAL_AXES,
  MESH_AXES,
  RULE_PRESETS,
  MeshConfig,
  batch_sharding,
  build_on_mesh,
  hybrid_device_array,
  logical_to_spec,
  make_mesh,
  rules_from_config,
  shard_model,
  sharded_forward,
  state_shardings,
)


def test_eight_fake_devices():
  assert jax.device_count() == 8, (
    "tests/conftest.py must set XLA_FLAGS=--xla_force_host_platform_device_count=8 before "
    "jax is imported"
  )


@pytest.fixture(scope="module")
def setup(tiny):
  _, model = tiny("qwen2")
  tokens = np.asarray(helpers.random_prompts([16] * 4, seed=5), np.int32)  # B=4
  positions = np.broadcast_to(np.arange(16, dtype=np.int32), (4, 16))
  ref = helpers.jit_forward(model)(tokens, np.full((4,), 16, np.int32))
  return model, tokens, positions, ref


def _flat(state):
  return {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}


@pytest.mark.parametrize(
  "mesh_config,expect",
  [
    (
      MeshConfig(data=1, fsdp=4, tensor=2),
      {
        "embed": P("tensor", "fsdp"),  # [V, D]
        "blocks/attn/q/kernel": P(None, "fsdp", "tensor"),  # [L, D, N*H]
        "blocks/mlp/down/kernel": P(None, "tensor", "fsdp"),  # [L, F, D]
        "blocks/attn/q/bias": P(None, "tensor"),
        "lm_head": P("fsdp", "tensor"),
      },
    ),
    (
      MeshConfig(data=2, fsdp=2, tensor=2),
      {
        "embed": P("tensor", "fsdp"),
        "blocks/attn/k/kernel": P(None, "fsdp", "tensor"),
      },
    ),
  ],
)
def test_sharded_forward_equals_single_device(setup, mesh_config, expect):
  model, tokens, positions, ref = setup
  mesh = make_mesh(mesh_config)
  assert dict(mesh.shape) == {
    "data": mesh_config.data,
    "fsdp": mesh_config.fsdp,
    "tensor": mesh_config.tensor,
  }
  forward, params = sharded_forward(model, mesh)
  flat = _flat(params)
  for name, spec in expect.items():
    arr = flat[name][...]
    assert arr.sharding.spec == spec, name
    assert len(arr.sharding.device_set) == 8
  q = flat["blocks/attn/q/kernel"][...]
  # fsdp=4 x tensor=2 splits the [L, 64, 64] kernel into 8 different [L, 16, 32] blocks.
  shard_shapes = {s.data.shape for s in q.addressable_shards}
  assert shard_shapes == {(q.shape[0], 64 // mesh_config.fsdp, 64 // mesh_config.tensor)}
  logits = forward(params, jnp.asarray(tokens), jnp.asarray(positions))
  assert logits.sharding.spec == P(("data", "fsdp"), None, None)
  diff = float(np.abs(np.asarray(logits) - ref).max())
  print(f"\n[mesh {dict(mesh.shape)}] sharded vs 1-device logits: {diff:.1e}")
  assert diff <= 1e-5


def test_shard_model_in_place(setup):
  model, tokens, positions, ref = setup
  mesh = make_mesh(MeshConfig(fsdp=-1))  # fsdp takes all 8 devices
  assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  sharded = nnx.clone(model)
  shard_model(sharded, mesh)
  embed = sharded.embed[...]
  assert embed.sharding.spec[1] == "fsdp"  # ("tensor", "fsdp"); tensor has size 1 here
  assert {s.data.shape for s in embed.addressable_shards} == {(helpers.VOCAB, 64 // 8)}
  logits, _ = helpers.jit_model(sharded)(jnp.asarray(tokens), jnp.asarray(positions))
  assert float(np.abs(np.asarray(logits) - ref).max()) <= 1e-5


def test_logical_to_spec_drops_axes_that_do_not_divide():
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  # 3 kv heads * 64 = 192 is divisible by 2; 3 kv heads as their own dim is not.
  assert logical_to_spec(("embed", "kv_heads"), (576, 192), mesh) == P("fsdp", "tensor")
  assert logical_to_spec(("layers", "kv_heads", "head_dim"), (30, 3, 64), mesh) == P(
    None, None, None
  )
  # batch -> (data, fsdp): a batch of 2 keeps data only, a batch of 4 both, a batch of 1 none.
  assert logical_to_spec(("batch",), (4,), mesh) == P(("data", "fsdp"))
  assert logical_to_spec(("batch",), (2,), mesh) == P("data")
  assert logical_to_spec(("batch",), (1,), mesh) == P(None)
  # A mesh axis is used at most once per array; unknown / None names stay replicated.
  assert logical_to_spec(("embed", "embed"), (64, 64), mesh) == P("fsdp", None)
  assert logical_to_spec((None, "nonsense"), (4, 4), mesh) == P(None, None)
  # Odd vocab on tensor=2 (49153) is replicated rather than failing.
  assert logical_to_spec(("vocab", "embed"), (49153, 576), mesh) == P(None, "fsdp")


def test_every_parameter_gets_a_valid_sharding(tiny):
  _, model = tiny("qwen3")
  mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
  state = nnx.state(model)
  shardings = _flat(state_shardings(state, mesh))
  for name, var in _flat(state).items():
    spec = shardings[name].spec
    for dim, axes in zip(var.shape, tuple(spec) + (None,) * (var.ndim - len(spec)), strict=True):
      axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
      assert dim % int(np.prod([mesh.shape[a] for a in axes])) == 0, name


def test_batch_sharding_and_mesh_errors():
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  assert batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)
  with pytest.raises(ValueError, match="at most one axis"):
    make_mesh(MeshConfig(data=-1, fsdp=-1))
  with pytest.raises(ValueError, match="not divisible by 3"):
    make_mesh(MeshConfig(data=1, fsdp=-1, tensor=3))
  with pytest.raises(ValueError, match="needs 16 devices, 8 given"):
    make_mesh(MeshConfig(data=2, fsdp=4, tensor=2))
  small = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2))  # a smaller mesh: the first devices
  assert list(small.devices.flat) == jax.devices()[:4]


# --- rules from the config (presets, overrides) and meshes from the config (ICI x DCN) ---


def test_presets_cover_the_logical_axes_and_the_configs_agree():
  from configs import common, demo

  assert common.LOGICAL_AXES == LOGICAL_AXES
  for name, rules in RULE_PRESETS.items():
    assert [a for a, _ in rules] == list(LOGICAL_AXES), name
    assert dict(rules)["batch"] == ("data", "fsdp"), name
  assert RULE_PRESETS["fsdp"] == DEFAULT_RULES
  c = demo.get_config()
  assert rules_from_config(c.sharding) == DEFAULT_RULES  # the demo's preset, no override
  assert rules_from_config(None) == DEFAULT_RULES
  # launch.train's TrainConfig carries the config's rules and mesh.
  c.sharding.preset = "tensor"
  c.mesh.dcn.data = 2
  cfg = train_config(c)
  assert cfg.rules == RULE_PRESETS["tensor"] and cfg.mesh.dcn == (2, 1, 1)


def test_rules_from_config_presets_and_overrides():
  from configs import common

  s = common.sharding_section("tensor")
  assert dict(rules_from_config(s))["embed"] is None
  s.rules.embed = ("fsdp",)  # one rule overridden
  s.rules.mlp = ()  # () = replicated
  s.rules.batch = ("data",)
  table = dict(rules_from_config(s))
  assert table["embed"] == "fsdp" and table["mlp"] is None and table["batch"] == "data"
  assert table["q_heads"] == "tensor"  # the rest is the preset's
  # A config.json round trip gives lists and nulls.
  assert dict(rules_from_config({"preset": "data", "rules": {"embed": ["fsdp", "tensor"]}}))[
    "embed"
  ] == ("fsdp", "tensor")
  with pytest.raises(ValueError, match="sharding.preset='zero3'"):
    rules_from_config({"preset": "zero3"})
  with pytest.raises(ValueError, match="sharding.rules.embd: unknown logical axis"):
    rules_from_config({"preset": "fsdp", "rules": {"embd": ("fsdp",)}})
  with pytest.raises(ValueError, match="'model' is not one of"):
    rules_from_config({"preset": "fsdp", "rules": {"embed": "model"}})
  with pytest.raises(ValueError, match="names a mesh axis twice"):
    rules_from_config({"preset": "fsdp", "rules": {"embed": ("fsdp", "fsdp")}})


@pytest.mark.parametrize(
  "preset,expect",
  [
    ("fsdp", {"embed": P("tensor", "fsdp"), "blocks/mlp/down/kernel": P(None, "tensor", "fsdp")}),
    ("tensor", {"embed": P("tensor", None), "blocks/mlp/down/kernel": P(None, "tensor", None)}),
    ("data", {"embed": P(None, None), "blocks/mlp/down/kernel": P(None, None, None)}),
  ],
)
def test_presets_shard_the_parameters(setup, preset, expect):
  model = setup[0]
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  rules = rules_from_config({"preset": preset})
  flat = _flat(state_shardings(nnx.state(model), mesh, rules))
  for name, spec in expect.items():
    assert flat[name].spec == spec, (preset, name)
  assert batch_sharding(mesh, 2, rules).spec == P(("data", "fsdp"), None)


def test_tensor_preset_forward_equals_single_device(setup):
  model, tokens, positions, ref = setup
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=8))  # 4 heads x 16 = 64 over 8 devices
  forward, params = sharded_forward(model, mesh, rules_from_config({"preset": "tensor"}))
  q = _flat(params)["blocks/attn/q/kernel"][...]
  assert q.sharding.spec == P(None, None, "tensor")
  logits = forward(params, jnp.asarray(tokens), jnp.asarray(positions))
  assert float(np.abs(np.asarray(logits) - ref).max()) <= 1e-5


def test_mesh_config_from_config():
  from configs import common

  m = common.mesh_section(data=1, fsdp=-1, tensor=2)
  m.dcn.data = 2
  config = MeshConfig.from_config(m)
  assert config == MeshConfig(data=1, fsdp=-1, tensor=2, dcn=(2, 1, 1), granule="slice")
  assert MeshConfig.from_config({"data": 1, "fsdp": 4, "tensor": 2}).dcn == (1, 1, 1)
  assert MeshConfig.from_config({"fsdp": 4, "dcn": [1, 2, 1]}).dcn == (1, 2, 1)
  with pytest.raises(ValueError, match="mesh.dcn: unknown axes"):
    MeshConfig.from_config({"fsdp": 4, "dcn": {"model": 2}})
  with pytest.raises(ValueError, match="mesh.granule='host'"):
    MeshConfig(granule="host")
  with pytest.raises(ValueError, match="mesh.dcn=.*sizes >= 1"):
    MeshConfig(dcn=(0, 1, 1))


@dataclasses.dataclass(frozen=True)
class _FakeDevice:  # what create_hybrid_device_mesh reads of a device
  id: int
  slice_index: int
  process_index: int = 0
  platform: str = "cpu"
  device_kind: str = "cpu"


def test_hybrid_device_array_puts_slices_on_the_dcn_axis():
  # 2 slices of 4 devices; ICI (data=1, fsdp=2, tensor=2) x DCN (data=2).
  devices = [_FakeDevice(i, slice_index=i // 4) for i in range(8)]
  config = MeshConfig(data=1, fsdp=-1, tensor=2, dcn=(2, 1, 1))
  arr = hybrid_device_array(config, devices)
  assert arr.shape == (2, 2, 2)
  for d in range(2):  # each half of the data axis is one whole slice
    assert {dev.slice_index for dev in arr[d].flat} == {d}
  assert sorted(dev.id for dev in arr.flat) == list(range(8))
  # The same devices as the mesh of real devices: the (data, fsdp, tensor) Mesh builds.
  real = jax.devices()
  mesh = Mesh(np.vectorize(lambda dev: real[dev.id], otypes=[object])(arr), MESH_AXES)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  # fsdp x tensor across the slices, data within: also possible (dcn on fsdp).
  arr = hybrid_device_array(MeshConfig(data=2, fsdp=1, tensor=2, dcn=(1, 2, 1)), devices)
  assert {dev.slice_index for dev in arr[:, 0].flat} == {0}
  assert {dev.slice_index for dev in arr[:, 1].flat} == {1}


def test_hybrid_mesh_errors():
  devices = [_FakeDevice(i, slice_index=i // 4) for i in range(8)]
  with pytest.raises(ValueError, match=r"needs 4 slices, the devices span 2"):
    hybrid_device_array(MeshConfig(fsdp=-1, dcn=(4, 1, 1)), devices)
  with pytest.raises(ValueError, match=r"ICI shape \(1, 2, 1\) must cover the 4 devices"):
    hybrid_device_array(MeshConfig(fsdp=2, dcn=(2, 1, 1)), devices)
  # Real CPU devices carry no slice index; one process is one granule.
  with pytest.raises(ValueError, match="carry no slice_index"):
    make_mesh(MeshConfig(fsdp=-1, dcn=(2, 1, 1)))
  with pytest.raises(ValueError, match="needs 2 processes, the devices span 1"):
    make_mesh(MeshConfig(fsdp=-1, dcn=(2, 1, 1), granule="process"))


_HYBRID_WORKER = """
import sys
import jax
i, port = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=i)
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from ps_jax.sharding import MeshConfig, make_mesh
mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1, dcn=(2, 1, 1), granule="process"))
procs = np.vectorize(lambda d: d.process_index)(mesh.devices)
assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 1}, mesh.shape
assert (procs[0] == 0).all() and (procs[1] == 1).all(), procs
rows = jax.make_array_from_process_local_data(
  NamedSharding(mesh, P("data")), np.full((1, 4), i + 1.0, np.float32)
)
total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(rows)
print("total", float(total))
"""


def test_hybrid_mesh_across_two_real_processes(tmp_path):
  """granule="process" (multi-node GPU): 2 processes x 2 CPU devices; the DCN (data) axis
  splits the processes, fsdp runs within each, and a reduction over the mesh sees both."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", XLA_FLAGS="")
  env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", _HYBRID_WORKER, str(i), str(port)],
      env=env,
      cwd=repo,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=120))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-3000:]
    assert "total 12.0" in out, out  # 4 x 1.0 from process 0 + 4 x 2.0 from process 1


def _placed_as_the_rules_say(model, mesh):
  """Every parameter has the sharding state_shardings gives it on `mesh`."""
  state = nnx.state(model)
  want = _flat(state_shardings(state, mesh))
  for name, var in _flat(state).items():
    assert var[...].sharding.is_equivalent_to(want[name], var.ndim), name
  return _flat(state)


def test_load_and_random_init_create_parameters_in_their_shardings(tiny):
  t, model = tiny("qwen2")
  mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
  loaded, _ = ps_jax.load(t.path, dtype=jnp.float32, mesh=mesh)
  flat = _placed_as_the_rules_say(loaded, mesh)
  q = flat["blocks/attn/q/kernel"][...]
  assert {s.data.shape for s in q.addressable_shards} == {(q.shape[0], 64 // 4, 64 // 2)}
  for name, var in _flat(nnx.state(model)).items():
    np.testing.assert_array_equal(np.asarray(flat[name][...]), np.asarray(var[...]), name)

  def factory():
    return ps_jax.Transformer(model.config, dtype=jnp.float32, rngs=nnx.Rngs(3))

  built = _placed_as_the_rules_say(build_on_mesh(factory, mesh), mesh)
  for name, var in _flat(nnx.state(factory())).items():
    np.testing.assert_allclose(np.asarray(built[name][...]), np.asarray(var[...]), atol=1e-7)

  # What launch.train evaluates with: the whole model back on one device, values unchanged.
  local = distributed.local_replica(loaded)
  for name, var in _flat(nnx.state(local)).items():
    assert var[...].sharding.device_set == {jax.local_devices()[0]}, name
    np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(flat[name][...]), name)
