"""launch.scaling_plan on a tiny shape: the same function that plans the 14B step compiles a
tiny one on the 8 fake CPU devices; its memory split and FLOP count are checked."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import scaling
from launch import scaling_plan
from ps_jax.data.pipeline import PipelineConfig
from ps_jax.model.config import ModelConfig
from ps_jax.sharding import MeshConfig
from ps_jax.train.loop import AdapterConfig
from ps_jax.train.step import OptimizerConfig

TINY = ModelConfig(
  family="qwen3",
  vocab_size=256,
  hidden_size=32,
  intermediate_size=64,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
  qk_norm=True,
)
PIPE = PipelineConfig(
  batch_size=8, max_branches=2, branch_tokens=16, synth_tokens=16, target_tokens=4
)


def test_hlo_matmul_flops_counts_scan_bodies_by_trip_count():
  w = jnp.ones((5, 8, 16), jnp.float32)  # 5 layers of [8, 16]

  def f(x, w):  # x [4, 8] through 5 layers x @ w[l][:, :8]
    def body(x, wl):
      return jnp.tanh(x @ wl[:, :8]), None

    return jax.lax.scan(body, x, w)[0]

  compiled = jax.jit(f).lower(jnp.ones((4, 8)), w).compile()
  expected = 5 * 2 * 4 * 8 * 8
  assert scaling_plan.hlo_matmul_flops(compiled.as_text()) == expected
  # What the report does not use: cost_analysis counts the while body once.
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  assert cost["flops"] < expected


@pytest.fixture(scope="module")
def row():
  return scaling_plan.plan_layout(
    TINY,
    dtype=jnp.bfloat16,
    mesh_config=MeshConfig(data=1, fsdp=8, tensor=1),
    preset="fsdp",
    pipeline=PIPE,
    adapter_config=AdapterConfig(rank=4, alpha=8.0),
    optimizer_config=OptimizerConfig(),
  )


def test_memory_split_adds_up_and_base_is_sharded(row):
  b = row["per_device_bytes"]
  parts = ("base_params", "adapter", "optimizer_state", "step_counter", "batch")
  assert sum(b[k] for k in parts) == b["arguments"]
  assert b["temp"] > 0
  # bf16 base parameters: fsdp=8 splits every [.., embed, ..] weight 8 ways; the norm scales
  # over head_dim ([L, 8]) stay replicated.
  total = row["base_param_count"] * 2
  assert total / 8 <= b["base_params"] < total / 8 + 4 * TINY.num_layers * TINY.head_dim * 2
  # The batch of 8 rows is split over the 8 devices.
  assert row["batch_spec"] == "P(('data', 'fsdp'), None)"


def test_no_optimizer_state_for_the_frozen_base(row):
  assert row["optimizer_state_shapes_are_trainable"]
  assert row["optimizer_state_count"] == 2 * row["trainable_param_count"]
  assert row["trainable_param_count"] < row["base_param_count"] / 10


def test_flops_match_the_analytic_count(row):
  total = scaling_plan.analytic_flops(TINY, PIPE)["total"]
  ratio = row["per_device_flops"] * 8 / total
  print(f"\ncompiled x 8 / analytic matmul FLOPs: {ratio:.3f}")
  assert 0.9 <= ratio <= 1.3  # LoRA matmuls and the adapter's gradients are not in the count


def test_render_and_config(row):
  c = scaling.get_config("steps=short")
  skip = ("rope_scaling", "name_or_path", "revision")
  c.model.shape = {
    f.name: getattr(TINY, f.name) for f in dataclasses.fields(TINY) if f.name not in skip
  }
  rows = [dict(row, target="h100x8", layout="fsdp8", step="short")]
  meta = {"machine": "test", "date": "2026-12-02", "jax": jax.__version__, "cpu_cores": 2}
  text = scaling_plan.render(c, rows, meta)
  assert "| h100x8 | fsdp8 | (1, 8, 1) | fsdp |" in text
  assert "The frozen base carries no optimizer state" in text
  assert math.isclose(
    scaling_plan.step_time(row, 1e12, 0.5), row["per_device_flops"] / 5e11, rel_tol=1e-12
  )
  with pytest.raises(ValueError, match="not one of"):
    scaling.get_config("steps=nope")
  assert np.isfinite(row["per_device_cost_analysis_flops"])
