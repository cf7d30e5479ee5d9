"""Sharded forward on 8 fake CPU devices == the 1-device forward; the rules table really shards."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import helpers
from ps_jax.sharding import (
  MeshConfig,
  batch_sharding,
  logical_to_spec,
  make_mesh,
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
