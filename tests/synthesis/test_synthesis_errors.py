"""Bad input raises an error whose message names the problem and the limit; nothing is silently
mis-computed."""

from __future__ import annotations

import re

import jax.numpy as jnp
import pytest

import helpers
import ps_jax as ps
import torch_reference as tr
from ps_jax.adapter import ModelShape
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
  with pytest.raises(
    ValueError,
    match=r"branch length \(tokens\) is 20, above the largest "
    r"configured bucket 16",
  ):
    ps.encode_branches(llama, None, [[[5] * 20]], length_buckets=(8, 16))


def test_more_branches_than_largest_branch_bucket(llama):
  with pytest.raises(
    ValueError,
    match=r"example 0 has 3 branches, above the configured maximum "
    r"2 \(branch_buckets\)",
  ):
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
  with pytest.raises(
    ValueError, match=r"method='latent'; expected one of \('text', 'text_lora', 'pcw'"
  ):
    ps.synthesis_logits(llama, branches, synth, method="latent")
  with pytest.raises(ValueError, match="method='latent'; expected one of"):
    ps.synthesize(llama, None, branches, ["q"], method="latent")
  for method in ("text", "text_lora"):
    with pytest.raises(ValueError, match="synthesis_logits serves the cache methods"):
      ps.synthesis_logits(llama, branches, synth, method=method)


def test_text_lora_needs_an_adapter_with_a_lora(llama):
  from ps_jax.synthesis import adapter_parts  # pylint: disable=import-outside-toplevel

  no_lora = ps.Adapter(llama.config, mapper=None, lora=None)
  for adapter in (None, no_lora):
    with pytest.raises(ValueError, match="method='text_lora' decodes the text prompt with a"):
      adapter_parts(adapter, "text_lora", llama)


# ------------------------------------------------------------------ arguments

_TOKENIZER = object()  # never used: the argument checks come before any text work


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(num_branches=0), r"num_branches=0 is outside the allowed range: an integer >= 1"),
    (dict(num_branches=-2), r"num_branches=-2 is outside the allowed range: an integer >= 1"),
    (dict(max_new_tokens=0), r"max_new_tokens=0 is outside the allowed range: an integer >= 1"),
    (
      dict(temperature=-0.1),
      r"temperature=-0\.1 is outside the allowed range: a finite number "
      r">= 0",
    ),
    (dict(top_p=0.0), r"top_p=0\.0 is outside the allowed range \(0, 1\]"),
    (dict(top_p=1.01), r"top_p=1\.01 is outside the allowed range \(0, 1\]"),
  ],
)
def test_run_workers_bad_arguments(llama, kwargs, match):
  with pytest.raises(ValueError, match=match):
    ps.run_workers(llama, _TOKENIZER, ["q"], **kwargs)


def test_run_workers_needs_a_tokenizer(llama):
  with pytest.raises(
    ValueError,
    match=r"run_workers: tokenizer=None, but the worker prompts "
    r"are text",
  ):
    ps.run_workers(llama, None, ["q"], num_branches=2, max_new_tokens=2)


@pytest.mark.parametrize("method", ["text", "pcw"])
def test_synthesize_bad_arguments(llama, llama_branches, method):
  branches, _ = llama_branches
  with pytest.raises(
    ValueError,
    match=r"max_new_tokens=0 is outside the allowed range: an "
    r"integer >= 1",
  ):
    ps.synthesize(llama, _TOKENIZER, branches, ["q"], method=method, max_new_tokens=0)
  with pytest.raises(ValueError, match=r"synthesize: tokenizer=None, but the questions are text"):
    ps.synthesize(llama, None, branches, ["q"], method=method, max_new_tokens=2)


def test_encode_branches_needs_a_tokenizer_only_for_text(llama):
  with pytest.raises(
    ValueError,
    match=r"encode_branches: tokenizer=None, but example 0 branch 1 "
    r"is text",
  ):
    ps.encode_branches(llama, None, [[[5, 6], "some text"]])
  assert ps.encode_branches(llama, None, [[[5, 6]]]).texts == [[""]]  # ids need no tokenizer
  with pytest.raises(ValueError, match=r"keep_last=0 is outside the allowed range"):
    ps.encode_branches(llama, None, [[[5, 6]]], keep_last=0)


# ------------------------------------------------------------------ adapters


@pytest.mark.parametrize("other", ["qwen3", "llama3_tied"])  # head_dim 32 | 3 layers
def test_adapter_for_a_different_model(llama, llama_branches, other):
  branches, synth = llama_branches
  adapter = ps.Adapter.create(_config(other), rank=4, alpha=8.0)
  with pytest.raises(ValueError, match="adapter was made for a model with"):
    ps.synthesis_logits(llama, branches, synth, method="parallel_synthesis", adapter=adapter)


@pytest.mark.parametrize("fmt", ["orbax", "peft"])
def test_saved_adapter_for_a_different_model(llama, tmp_path, fmt):
  """The shape recorded in adapter.json against the given model: both shapes are named."""
  qwen3 = _config("qwen3")
  ps.save_adapter(ps.Adapter.create(qwen3, rank=4, alpha=8.0), str(tmp_path), format=fmt)
  recorded, given = (re.escape(str(ModelShape.of(c))) for c in (qwen3, llama.config))
  with pytest.raises(
    ValueError, match=f"adapter was made for a model with {recorded}, but this model has {given}"
  ):
    ps.load_adapter(str(tmp_path), llama.config)
  assert ps.load_adapter(str(tmp_path)).model_shape == ModelShape.of(qwen3)  # no config needed


def test_corrupt_adapter_json(llama, tmp_path):
  ps.save_adapter(ps.Adapter.create(llama.config, rank=4, alpha=8.0), str(tmp_path))
  (tmp_path / "adapter.json").write_text('{"model_shape": {"num_layers": "two"}}')
  with pytest.raises(ValueError, match=r"adapter.json: model_shape .* positive integers"):
    ps.load_adapter(str(tmp_path))
  (tmp_path / "adapter.json").write_text('{"model_shape": ')
  with pytest.raises(ValueError, match=r"adapter.json: not valid JSON"):
    ps.load_adapter(str(tmp_path))


@pytest.fixture(scope="module")
def peft_dirs(tiny, tmp_path_factory):
  """Reference-format LoRA folders made by peft for other tiny models."""
  out = {}
  for family in ("qwen3", "llama3_tied", "llama"):
    folder = tmp_path_factory.mktemp(f"peft_{family}")
    tr.random_peft_model(tiny(family)[0].hf, rank=4, seed=1).save_pretrained(
      str(folder / "judger_lora")
    )
    out[family] = folder
  return out


def test_reference_lora_with_wrong_shapes(llama, peft_dirs):
  # qwen3's q_proj is 64 -> 128 (head_dim 32); the llama model's is 64 -> 64.
  with pytest.raises(
    ValueError,
    match=r"q_proj.lora_B.weight' has shape \(128, 4\), "
    r"expected \(64, 4\) for this model",
  ):
    ps.load_adapter(str(peft_dirs["qwen3"]), llama.config)


def test_reference_lora_with_too_few_layers(peft_dirs):
  with pytest.raises(ValueError, match=r"missing tensor .*layers\.2\.self_attn"):
    ps.load_adapter(str(peft_dirs["llama"]), _config("llama3_tied"))


def test_reference_lora_with_too_many_layers(llama, peft_dirs):
  # llama3_tied has 3 layers with the same per-layer shapes as the 2-layer llama.
  with pytest.raises(ValueError, match="layer"):
    ps.load_adapter(str(peft_dirs["llama3_tied"]), llama.config)


def test_inferred_reference_lora_for_a_different_model(llama, llama_branches, peft_dirs):
  """Without a config the shape comes from the LoRA tensors (no head split); a model whose
  widths differ is refused, naming both shapes."""
  adapter = ps.load_adapter(str(peft_dirs["qwen3"]))
  assert adapter.model_shape.as_dict() == {
    "num_layers": 2,
    "hidden_size": 64,
    "q_size": 128,
    "kv_size": 64,
  }
  branches, synth = llama_branches
  with pytest.raises(
    ValueError,
    match=re.escape(
      f"adapter was made for a model with {adapter.model_shape}, but this model has "
      f"{ModelShape.of(llama.config)}"
    ),
  ):
    ps.synthesis_logits(llama, branches, synth, method="lora_only", adapter=adapter)


def test_reference_lora_with_other_target_modules(tiny, tmp_path, llama):
  import copy  # pylint: disable=import-outside-toplevel

  from peft import LoraConfig, get_peft_model  # pylint: disable=import-outside-toplevel

  pm = get_peft_model(
    copy.deepcopy(tiny("llama")[0].hf),
    LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
  )
  pm.save_pretrained(str(tmp_path / "judger_lora"))
  with pytest.raises(ValueError, match="target_modules"):
    ps.load_adapter(str(tmp_path), llama.config)


def test_reference_mapper_with_wrong_shapes(llama, tmp_path):
  # A "both" config (3 input features) with a 2-feature state dict.
  mapper = tr.random_ref_mapper(seed=2, metadata_features="length")
  tr.save_ref_mapper(mapper, str(tmp_path), config=False)
  (tmp_path / "cache_mapper_config.json").write_text(
    '{"hidden_dim": 32, "metadata_features": "both"}'
  )
  with pytest.raises(ValueError, match=r"'net.0.weight' has shape \(32, 2\), expected \(32, 3\)"):
    ps.load_adapter(str(tmp_path), llama.config)


def test_unknown_metadata_features(llama, tmp_path):
  tr.save_ref_mapper(tr.random_ref_mapper(seed=2), str(tmp_path), config=False)
  (tmp_path / "cache_mapper_config.json").write_text('{"metadata_features": "everything"}')
  with pytest.raises(ValueError, match="metadata_features='everything'"):
    ps.load_adapter(str(tmp_path), llama.config)


def test_peft_export_with_a_part_missing(llama, tmp_path):
  """Our export records its parts: a lost cache_mapper.pt is an error, not an identity map."""
  ps.save_adapter(ps.Adapter.create(llama.config, rank=4, alpha=8.0), str(tmp_path), format="peft")
  (tmp_path / "cache_mapper.pt").unlink()
  with pytest.raises(
    FileNotFoundError, match="adapter.json records a mapper but cache_mapper.pt is missing"
  ):
    ps.load_adapter(str(tmp_path))
  with pytest.raises(ValueError, match="per-head mapper .* format='orbax'"):
    ps.save_adapter(
      ps.Adapter.create(llama.config, per_head_mapper=True),
      str(tmp_path / "per_head"),
      format="peft",
    )
  assert not (tmp_path / "per_head").exists()


def test_reference_mapper_alone_needs_the_config(llama, tmp_path):
  """A bare cache_mapper.pt does not say the layer count (its layer feature needs it)."""
  tr.save_ref_mapper(tr.random_ref_mapper(seed=2), str(tmp_path))
  with pytest.raises(
    ValueError,
    match=r"does not say how many layers .* pass the model's "
    r"config: load_adapter\(path, model.config\)",
  ):
    ps.load_adapter(str(tmp_path))
  assert ps.load_adapter(str(tmp_path), llama.config).mapper.num_layers == 2


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
