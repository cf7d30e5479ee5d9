"""GGUF import: llama.cpp's q/k permutation, tiny GGUF files written in-process, errors."""

from __future__ import annotations

import dataclasses
import os

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

import helpers
import ps_jax
from ps_jax.io.gguf_import import load_gguf, unpermute_rows

PROMPTS = helpers.random_prompts([7, 13, 3], seed=9)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(heads=st.integers(1, 6), half=st.integers(1, 8), cols=st.integers(0, 5))
def test_unpermute_inverts_llamacpp_permute(heads, half, cols):
  shape = (heads * 2 * half,) + ((cols,) if cols else ())  # 2-D kernels and 1-D biases
  w = np.random.default_rng(heads * 100 + half).normal(size=shape).astype(np.float32)
  permuted = helpers.llamacpp_permute(w, heads)
  np.testing.assert_array_equal(unpermute_rows(permuted, heads), w)
  if half > 1:  # a real permutation (with half == 1 it is the identity)
    assert not np.array_equal(permuted, w)


def test_unpermute_row_order():
  """Per head, llama.cpp interleaves the two rotate-half halves: rows (0, 2, 1, 3) for H=4."""
  w = np.arange(8, dtype=np.float32)[:, None]  # 2 heads, head_dim 4
  np.testing.assert_array_equal(helpers.llamacpp_permute(w, 2)[:, 0], [0, 2, 1, 3, 4, 6, 5, 7])


@pytest.fixture(scope="module")
def llama_gguf(tiny, tmp_path_factory):
  tiny_hf, model = tiny("llama")
  path = helpers.write_tiny_gguf(tiny_hf, tmp_path_factory.mktemp("gguf") / "tiny.gguf")
  tokens, lengths = helpers.right_pad(PROMPTS, 16)
  ref = helpers.jit_forward(model)(tokens, lengths)
  return tiny_hf, model, path, tokens, lengths, ref


def test_tiny_gguf_equals_safetensors(llama_gguf):
  _, model, path, tokens, lengths, ref = llama_gguf
  from_gguf = load_gguf(path, dtype=np.float32)
  # GGUF stores the epsilon as float32; everything else is the same config.
  assert from_gguf.config.rms_norm_eps == pytest.approx(model.config.rms_norm_eps, rel=1e-6)
  assert dataclasses.replace(from_gguf.config, rms_norm_eps=model.config.rms_norm_eps) == (
    model.config
  )
  diff = helpers.valid_max_abs_diff(helpers.jit_forward(from_gguf)(tokens, lengths), ref, lengths)
  print(f"\n[gguf] tiny llama: logits max|gguf-safetensors| = {diff:.1e}")
  assert diff <= 1e-5


def test_writer_agrees_with_transformers_gguf_loader(llama_gguf):
  """transformers reads our tiny GGUF to the same logits: the test file is llama.cpp's layout."""

  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel

  _, _, path, tokens, lengths, ref = llama_gguf
  hf = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
  ).eval()
  diff = helpers.valid_max_abs_diff(helpers.hf_logits(hf, tokens, lengths), ref, lengths)
  print(f"\n[gguf] transformers on our tiny GGUF vs ps_jax on safetensors: {diff:.1e}")
  assert diff <= 1e-4


def test_tied_gguf_and_tokenizer(tmp_path):
  """No output.weight -> tied embeddings; an embedded gpt2 tokenizer comes back from ps.load."""
  tiny_hf = helpers.tiny_hf_model("llama", tmp_path, tie_word_embeddings=True)
  tokenizer = helpers.tiny_tokenizer()
  path = helpers.write_tiny_gguf(tiny_hf, tmp_path / "tied.gguf", tokenizer=tokenizer)
  model, gguf_tok = ps_jax.load(path)
  assert model.config.tie_embeddings and model.lm_head is None
  assert model.config.vocab_size == helpers.VOCAB and model.config.eos_token_ids == (2,)
  text = "What is the capital of France?"
  assert gguf_tok.encode(text, add_special_tokens=False) == tokenizer.encode(
    text, add_special_tokens=False
  )
  assert gguf_tok.eos_token_id == 2 and gguf_tok.chat_template == tokenizer.chat_template
  tokens, lengths = helpers.right_pad(PROMPTS, 16)
  ref = helpers.hf_logits(tiny_hf.hf, tokens, lengths)
  diff = helpers.valid_max_abs_diff(helpers.jit_forward(model)(tokens, lengths), ref, lengths)
  assert diff <= 1e-4


def test_gguf_without_tokenizer_gives_none(llama_gguf):
  _, _, path, *_ = llama_gguf
  model, tokenizer = ps_jax.load(path)
  assert tokenizer is None and model.config.num_layers == 2


def test_llama3_rope_freqs_not_silently_ignored(tiny, tmp_path):
  """A llama3-scaled model as llama.cpp writes it must load exactly or fail loudly."""
  tiny_hf, model = tiny("llama3_tied")
  path = helpers.write_tiny_gguf(tiny_hf, tmp_path / "llama3.gguf")
  try:
    from_gguf = load_gguf(str(path), dtype=np.float32)
  except ValueError as e:
    assert "rope_freqs" in str(e)
    return
  tokens, lengths = helpers.right_pad(PROMPTS, 16)
  ref = helpers.jit_forward(model)(tokens, lengths)
  got = helpers.jit_forward(from_gguf)(tokens, lengths)
  assert helpers.valid_max_abs_diff(got, ref, lengths) <= 1e-5


def test_unsupported_gguf_architecture_named(tmp_path):
  import gguf  # pylint: disable=import-outside-toplevel

  path = str(tmp_path / "qwen.gguf")
  w = gguf.GGUFWriter(path, "qwen2")
  w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match="'qwen2' is not supported"):
    load_gguf(path, dtype=np.float32)


def test_gguf_missing_tensor_named(tiny, tmp_path):
  """A GGUF without one block tensor: the error names the GGUF tensor name."""
  import gguf  # pylint: disable=import-outside-toplevel

  tiny_hf, _ = tiny("llama")
  full = helpers.write_tiny_gguf(tiny_hf, tmp_path / "full.gguf")
  reader = gguf.GGUFReader(full)
  path = str(tmp_path / "broken.gguf")
  w = gguf.GGUFWriter(path, "llama")
  for field in reader.fields.values():
    if field.name.startswith("llama.") or field.name == "general.file_type":
      w.add_key_value(field.name, field.contents(), field.types[0])
  for t in reader.tensors:
    if t.name != "blk.1.attn_k.weight":
      w.add_tensor(t.name, np.asarray(t.data))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(KeyError, match="blk.1.attn_k.weight"):
    load_gguf(path, dtype=np.float32)


def test_gguf_source_is_recorded(llama_gguf, tmp_path):
  """name_or_path (PEFT's base_model_name_or_path for adapters of the model): the file's
  absolute path; the hub repository the file names as its conversion source; the hub id of an
  embedded model."""
  tiny_hf, _, path, *_ = llama_gguf
  config = ps_jax.io.load_config(os.path.relpath(path))
  assert (config.name_or_path, config.revision) == (os.path.abspath(path), None)
  sourced = helpers.write_tiny_gguf(
    tiny_hf,
    tmp_path / "sourced.gguf",
    metadata={"general.source.repo_url": "https://huggingface.co/org/tiny-llama"},
  )
  model, _ = ps_jax.load(sourced)
  assert (model.config.name_or_path, model.config.revision) == ("org/tiny-llama", None)
  assert model.config == config  # provenance is not architecture
  smollm2 = ps_jax.io.load_config("smollm2-135m-instruct")
  assert smollm2.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
