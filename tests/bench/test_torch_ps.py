"""The reference-style transformers PS (ps_jax.bench.torch_ps) computes what ps_jax's
Parallel-Synthesis computes: first-token logits agree in fp32 on tiny random models."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import helpers
import ps_jax
from ps_jax.bench import checks, paths, torch_models
from ps_jax.bench.torch_ps import TorchPS

TOL = 1e-3  # the brief's bound; measured ~5e-6 (fp32)


def random_adapter(config, seed: int) -> ps_jax.Adapter:
  """An adapter far from the identity: every mapper and LoRA weight random and non-zero."""
  adapter = ps_jax.Adapter.create(config, rank=4, alpha=8.0, seed=seed)
  graphdef, state = nnx.split(adapter)
  rng = np.random.default_rng(seed)
  pure = jax.tree.map(
    lambda x: (0.15 * rng.standard_normal(np.shape(x))).astype(np.float32),
    nnx.to_pure_dict(state),
  )
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


@pytest.mark.parametrize("family", ["llama", "qwen3", "llama3_tied"])
def test_torch_ps_first_logits_match_ps_jax(tiny, family):
  t, model = tiny(family)
  adapter = random_adapter(model.config, seed=1)
  branch_ids = helpers.random_prompts([20, 13, 7], seed=2)
  synth = helpers.random_prompts([9], seed=3)[0]
  drivers = paths.Drivers(model, None, adapter=adapter, torch_model=t.hf)
  got = checks.torch_ps_parity(drivers, branch_ids, synth)
  assert got["max_abs_diff"] < TOL and got["argmax_agrees"], got
  assert got["max_abs_logit"] > 0.5  # the comparison is not between near-zero logits

  # Worker-style branches whose keys sit after a prompt: re-encoding by -P_i must undo it.
  tps = drivers.torch_ps
  shifted = [
    tps.branch_kv(ids, prompt_len=p) for ids, p in zip(branch_ids, (5, 11, 3), strict=True)
  ]
  base = [tps.branch_kv(ids) for ids in branch_ids]
  assert not torch.allclose(shifted[0][0][0], base[0][0][0])
  a = tps.first_logits(shifted, synth, prompt_lens=[5, 11, 3])
  b = tps.first_logits(base, synth)
  assert float((a - b).abs().max()) < 1e-4
  # The base model is left alone: the LoRA is merged into a copy.
  assert tps.model is not t.hf and tps.base is t.hf


def test_without_adapter_parts_the_torch_model_is_shared(tiny):
  t, model = tiny("llama")
  adapter = ps_jax.Adapter(model.config, mapper=None, lora=None)
  tps = TorchPS(t.hf, adapter)
  assert tps.model is t.hf and tps.mapper is None
  drivers = paths.Drivers(model, None, adapter=adapter, torch_model=t.hf)
  got = checks.torch_ps_parity(drivers, helpers.random_prompts([12, 12], seed=4), [5, 6, 7])
  assert got["max_abs_diff"] < TOL, got


def test_random_pair_has_the_same_weights():
  config = ps_jax.ModelConfig(
    family="qwen3",
    vocab_size=256,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    rope_theta=1e6,
    tie_embeddings=True,
    qk_norm=True,
    max_position_embeddings=512,
    eos_token_ids=(2,),
  )
  model, hf = torch_models.random_pair(config, seed=3)
  assert model.config == config and hf.config.tie_word_embeddings
  ids = np.random.default_rng(0).integers(0, 256, (1, 24))
  with torch.no_grad():
    want = hf(torch.as_tensor(ids)).logits.numpy()
  got, _ = model(jnp.asarray(ids))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
  with pytest.raises(ValueError, match="round-trip"):  # a switch transformers cannot express
    torch_models.hf_config_of(dataclasses.replace(config, qk_norm=False))
