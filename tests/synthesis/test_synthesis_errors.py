"""Bad input raises an error whose message names the problem and the limit; nothing is silently
mis-computed."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import helpers
import ps_jax as ps
import torch_reference as tr
from ps_jax.model import ModelConfig


def _config(family):
  return ModelConfig.from_hf(helpers.tiny_hf_config(family).to_dict())


@pytest.fixture(scope="module")
def llama(tiny):
  return tiny("llama")[1]


@pytest.fixture(scope="module")
def llama_branches(llama):
  ids = helpers.random_prompts([9, 6], seed=11)
  return ps.encode_branches(llama, None, [ids[:1]]), [ids[1]]


# ------------------------------------------------------------------ branches


def test_no_examples(llama):
  with pytest.raises(ValueError, match="examples is empty"):
    ps.encode_branches(llama, None, [])


def test_zero_branches(llama):
  with pytest.raises(ValueError, match="example 1 has zero branches"):
    ps.encode_branches(llama, None, [[[5, 6]], []])


def test_empty_branch(llama):
  with pytest.raises(ValueError, match="example 0 branch 1 is empty"):
    ps.encode_branches(llama, None, [[[5, 6], []]])


def test_branch_longer_than_largest_length_bucket(llama):
  with pytest.raises(ValueError, match=r"branch length \(tokens\) is 20, above the largest "
                                       r"configured bucket 16"):
    ps.encode_branches(llama, None, [[[5] * 20]], length_buckets=(8, 16))


def test_more_branches_than_largest_branch_bucket(llama):
  with pytest.raises(ValueError, match=r"example 0 has 3 branches, above the configured maximum "
                                       r"2 \(branch_buckets\)"):
    ps.encode_branches(llama, None, [[[5], [6], [7]]], branch_buckets=(1, 2))
  with pytest.raises(ValueError, match="example 0 has 9 branches, above the configured maximum 8"):
    ps.run_workers(llama, None, ["q"], num_branches=9)


def test_caches_from_a_different_model(tiny, llama_branches):
  branches, synth = llama_branches
  qwen2 = tiny("qwen2")[1]
  for b in (branches, branches.caches):
    with pytest.raises(ValueError, match="branch caches come from a different model"):
      ps.synthesis_logits(qwen2, b, synth, method="pcw")
  with pytest.raises(ValueError, match="branch caches come from a different model"):
    ps.synthesize(qwen2, None, branches, ["q"], method="pcw")


# ------------------------------------------------------------------ methods


def test_unknown_method(llama, llama_branches):
  branches, synth = llama_branches
  with pytest.raises(ValueError, match=r"method='latent'; expected one of \('text', 'pcw'"):
    ps.synthesis_logits(llama, branches, synth, method="latent")
  with pytest.raises(ValueError, match="method='latent'; expected one of"):
    ps.synthesize(llama, None, branches, ["q"], method="latent")
  with pytest.raises(ValueError, match="synthesis_logits serves the cache methods"):
    ps.synthesis_logits(llama, branches, synth, method="text")


# ------------------------------------------------------------------ adapters


@pytest.mark.parametrize("other", ["qwen3", "llama3_tied"])  # head_dim 32 | 3 layers
def test_adapter_for_a_different_model(llama, llama_branches, other):
  branches, synth = llama_branches
  adapter = ps.Adapter.create(_config(other), rank=4, alpha=8.0)
  with pytest.raises(ValueError, match="adapter was made for a model with"):
    ps.synthesis_logits(llama, branches, synth, method="parallel_synthesis", adapter=adapter)


def test_orbax_adapter_for_a_different_model(llama, tmp_path):
  ps.save_adapter(ps.Adapter.create(_config("qwen3"), rank=4, alpha=8.0), str(tmp_path),
                  format="orbax")
  with pytest.raises(ValueError, match="adapter was made for a model with"):
    ps.load_adapter(str(tmp_path), llama.config)


@pytest.fixture(scope="module")
def peft_dirs(tiny, tmp_path_factory):
  """Reference-format LoRA folders made by peft for other tiny models."""
  out = {}
  for family in ("qwen3", "llama3_tied", "llama"):
    folder = tmp_path_factory.mktemp(f"peft_{family}")
    tr.random_peft_model(tiny(family)[0].hf, rank=4, seed=1).save_pretrained(
        str(folder / "judger_lora"))
    out[family] = folder
  return out


def test_reference_lora_with_wrong_shapes(llama, peft_dirs):
  # qwen3's q_proj is 64 -> 128 (head_dim 32); the llama model's is 64 -> 64.
  with pytest.raises(ValueError, match=r"q_proj.lora_B.weight' has shape \(128, 4\), "
                                       r"expected \(64, 4\) for this model"):
    ps.load_adapter(str(peft_dirs["qwen3"]), llama.config)


def test_reference_lora_with_too_few_layers(peft_dirs):
  with pytest.raises(ValueError, match=r"missing tensor .*layers\.2\.self_attn"):
    ps.load_adapter(str(peft_dirs["llama"]), _config("llama3_tied"))


def test_reference_lora_with_too_many_layers(llama, peft_dirs):
  # llama3_tied has 3 layers with the same per-layer shapes as the 2-layer llama.
  with pytest.raises(ValueError, match="layer"):
    ps.load_adapter(str(peft_dirs["llama3_tied"]), llama.config)


def test_reference_lora_with_other_target_modules(tiny, tmp_path, llama):
  from peft import LoraConfig, get_peft_model  # pylint: disable=import-outside-toplevel
  import copy  # pylint: disable=import-outside-toplevel
  pm = get_peft_model(copy.deepcopy(tiny("llama")[0].hf),
                      LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
  pm.save_pretrained(str(tmp_path / "judger_lora"))
  with pytest.raises(ValueError, match="target_modules"):
    ps.load_adapter(str(tmp_path), llama.config)


def test_reference_mapper_with_wrong_shapes(llama, tmp_path):
  # A "both" config (3 input features) with a 2-feature state dict.
  mapper = tr.random_ref_mapper(seed=2, metadata_features="length")
  tr.save_ref_mapper(mapper, str(tmp_path), config=False)
  (tmp_path / "cache_mapper_config.json").write_text(
      '{"hidden_dim": 32, "metadata_features": "both"}')
  with pytest.raises(ValueError, match=r"'net.0.weight' has shape \(32, 2\), expected \(32, 3\)"):
    ps.load_adapter(str(tmp_path), llama.config)


def test_unknown_metadata_features(llama, tmp_path):
  tr.save_ref_mapper(tr.random_ref_mapper(seed=2), str(tmp_path), config=False)
  (tmp_path / "cache_mapper_config.json").write_text('{"metadata_features": "everything"}')
  with pytest.raises(ValueError, match="metadata_features='everything'"):
    ps.load_adapter(str(tmp_path), llama.config)


def test_not_an_adapter_folder(llama, tmp_path):
  with pytest.raises(FileNotFoundError, match="cache_mapper.pt"):
    ps.load_adapter(str(tmp_path), llama.config)
  with pytest.raises(ValueError, match="format='zip'"):
    ps.save_adapter(ps.Adapter.create(llama.config), str(tmp_path), format="zip")


@pytest.mark.parametrize("num_rows", [2, 3])
def test_synth_tokens_batch_must_match_branches(tiny, llama, llama_branches, num_rows):
  branches, synth = llama_branches  # 1 example
  if num_rows == 3:
    ids = helpers.random_prompts([4, 5], seed=3)
    branches = ps.encode_branches(llama, None, [ids[:1], ids[1:]])  # 2 examples
  with pytest.raises(ValueError, match="synth_tokens"):
    ps.synthesis_logits(llama, branches, jnp.asarray(synth * num_rows), method="pcw")


@pytest.mark.parametrize("where", ["branch", "synth"])
def test_token_ids_outside_the_vocabulary(llama, llama_branches, where):
  branches, synth = llama_branches
  with pytest.raises(ValueError, match="vocab"):
    if where == "branch":
      ps.encode_branches(llama, None, [[[5, helpers.VOCAB + 44, 7]]])
    else:
      ps.synthesis_logits(llama, branches, [[5, helpers.VOCAB + 743]], method="pcw")
