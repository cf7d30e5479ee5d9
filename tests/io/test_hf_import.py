"""ps_jax.load on transformers folders: layouts that must load, bad input that must fail loudly."""

from __future__ import annotations

import copy
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import helpers
import ps_jax
from ps_jax.io.params import MissingTensorError

K_PROJ = "model.layers.1.self_attn.k_proj.weight"


@pytest.fixture(scope="module")
def llama_folder(tiny):
  return tiny("llama")[0]


@pytest.fixture
def copy_of(llama_folder, tmp_path):
  """A writable copy of the shared tiny Llama folder (to corrupt)."""
  dst = tmp_path / "model"
  shutil.copytree(llama_folder.path, dst)
  return dst


def _rewrite_tensors(folder, edit):
  path = os.path.join(folder, "model.safetensors")
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


def test_folder_without_tokenizer_gives_none(tiny):
  tiny_hf, model = tiny("llama")
  loaded, tokenizer = ps_jax.load(tiny_hf.path)
  assert tokenizer is None
  assert loaded.config == model.config and loaded.dtype == jnp.float32


def test_loaded_weights_are_the_saved_ones(tiny):
  """Spot checks of the name table and the [out, in] -> [in, out] transposes."""
  tiny_hf, model = tiny("qwen2")
  sd = {k: v.detach().numpy() for k, v in tiny_hf.hf.state_dict().items()}
  np.testing.assert_array_equal(model.embed[...], sd["model.embed_tokens.weight"])
  np.testing.assert_array_equal(model.lm_head[...], sd["lm_head.weight"].T)
  np.testing.assert_array_equal(
    model.blocks.attn.q.kernel[...][1], sd["model.layers.1.self_attn.q_proj.weight"].T
  )
  np.testing.assert_array_equal(
    model.blocks.attn.k.bias[...][0], sd["model.layers.0.self_attn.k_proj.bias"]
  )
  np.testing.assert_array_equal(
    model.blocks.mlp_norm.scale[...][1], sd["model.layers.1.post_attention_layernorm.weight"]
  )


def test_sharded_checkpoint_with_index(tmp_path, tiny):
  """model.safetensors.index.json + several shards load to the same parameters."""
  tiny_hf, model = tiny("llama")
  tiny_hf.hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="100KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  assert len(list(tmp_path.glob("*.safetensors"))) > 1
  sharded, _ = ps_jax.load(tmp_path)
  np.testing.assert_array_equal(
    sharded.blocks.mlp.down.kernel[...], model.blocks.mlp.down.kernel[...]
  )
  np.testing.assert_array_equal(sharded.lm_head[...], model.lm_head[...])


def test_bf16_checkpoint_and_dtype(tmp_path, tiny):
  import torch  # pylint: disable=import-outside-toplevel

  tiny_hf, _ = tiny("qwen3")
  # A copy: the shared fp32 model must not be rounded through bf16.
  copy.deepcopy(tiny_hf.hf).to(torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True)
  m32, _ = ps_jax.load(tmp_path)
  ref = tiny_hf.hf.model.layers[0].self_attn.q_norm.weight.detach()
  np.testing.assert_array_equal(
    m32.blocks.attn.q_norm.scale[...][0], ref.to(torch.bfloat16).float().numpy()
  )
  m16, _ = ps_jax.load(tmp_path, dtype=jnp.bfloat16)
  assert m16.dtype == jnp.bfloat16 and m16.blocks.attn.q.kernel[...].dtype == jnp.bfloat16


def test_unknown_model_type(copy_of):
  helpers.edit_config_json(copy_of, model_type="gpt2", architectures=["GPT2LMHeadModel"])
  with pytest.raises(ValueError, match=r"model_type='gpt2'.*GPT2LMHeadModel"):
    ps_jax.load(copy_of)


def test_missing_tensor_named(copy_of):
  _rewrite_tensors(copy_of, lambda t: t.pop(K_PROJ))
  with pytest.raises(MissingTensorError, match=f"missing tensor '{K_PROJ}'") as e:
    ps_jax.load(copy_of)
  assert "blocks/attn/k/kernel" in str(e.value)


def test_missing_lm_head_of_untied_model_named(copy_of):
  _rewrite_tensors(copy_of, lambda t: t.pop("lm_head.weight"))
  with pytest.raises(MissingTensorError, match="lm_head.weight"):
    ps_jax.load(copy_of)


def test_wrong_shape_named_with_both_shapes(copy_of):
  def edit(t):
    t[K_PROJ] = np.zeros((24, 64), np.float32)  # expected [K*H, D] = [32, 64]

  _rewrite_tensors(copy_of, edit)
  with pytest.raises(ValueError, match=K_PROJ) as e:
    ps_jax.load(copy_of)
  msg = str(e.value)
  assert "(24, 64)" in msg and "(64, 32)" in msg, msg  # stored (and converted) vs expected


def test_config_shape_mismatch_named(copy_of):
  """config.json disagreeing with the tensors (MLP width) is reported, not broadcast."""
  helpers.edit_config_json(copy_of, intermediate_size=96)
  with pytest.raises(ValueError, match=r"tensor 'model\.layers\.0\.mlp\.\w+_proj\.weight'") as e:
    ps_jax.load(copy_of)
  assert "128" in str(e.value) and "96" in str(e.value)


def test_nonexistent_paths():
  with pytest.raises((ValueError, FileNotFoundError), match="/no/such/folder"):
    ps_jax.load("/no/such/folder")
  with pytest.raises(FileNotFoundError, match="/no/such/model.gguf"):
    ps_jax.load("/no/such/model.gguf")
  with pytest.raises(ValueError, match="smollm2-135m-instruct"):  # lists the embedded names
    ps_jax.load("not-a-model-name")


def test_folder_without_config_or_weights(tmp_path, copy_of):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    ps_jax.load(tmp_path)  # exists, but empty
  os.remove(copy_of / "model.safetensors")
  with pytest.raises(FileNotFoundError, match=r"no \*.safetensors"):
    ps_jax.load(copy_of)


def test_unconsumed_tensor_raises(copy_of):
  """E.g. Llama with mlp_bias=True: the MLP biases exist but would be silently dropped."""

  def edit(t):
    t["model.layers.0.mlp.gate_proj.bias"] = np.ones((128,), np.float32)

  _rewrite_tensors(copy_of, edit)
  with pytest.raises(ValueError, match="model.layers.0.mlp.gate_proj.bias"):
    ps_jax.load(copy_of)


def test_config_json_is_the_one_parsed(copy_of):
  with open(copy_of / "config.json") as f:
    cfg = json.load(f)
  model, _ = ps_jax.load(copy_of)
  assert model.config.num_layers == cfg["num_hidden_layers"]
  assert model.config.rope_theta == cfg["rope_parameters"]["rope_theta"]


def test_source_is_recorded(llama_folder, tmp_path):
  """name_or_path / revision (PEFT's base_model_name_or_path / revision for adapters of the
  model): a folder's absolute path; a hub-cache snapshot's hub id and commit; the commit that
  huggingface_hub recorded for a local_dir download."""
  path = os.path.abspath(llama_folder.path)
  model, _ = ps_jax.load(os.path.relpath(path))
  assert (model.config.name_or_path, model.config.revision) == (path, None)
  commit = "0123456789abcdef0123456789abcdef01234567"
  snapshot = tmp_path / "hub" / "models--org--tiny-llama" / "snapshots" / commit
  shutil.copytree(path, snapshot)
  config = ps_jax.io.load_config(str(snapshot))
  assert (config.name_or_path, config.revision) == ("org/tiny-llama", commit)
  assert config == model.config  # provenance is not architecture
  local = tmp_path / "local"
  shutil.copytree(path, local)
  (local / ".cache" / "huggingface" / "download").mkdir(parents=True)
  (local / ".cache" / "huggingface" / "download" / "config.json.metadata").write_text(
    f'{commit}\n"etag"\n1700000000.0\n'
  )
  config = ps_jax.io.load_config(str(local))
  assert (config.name_or_path, config.revision) == (str(local), commit)
