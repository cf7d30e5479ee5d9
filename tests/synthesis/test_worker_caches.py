"""`run_workers` keeps, slot for slot, the KV of exactly the generated tokens at their positions.

Reference (transformers): prefill of (worker prompt + kept generated tokens) by the HF model,
the prompt part dropped: slot j of branch i must hold the key/value of generated token j,
post-RoPE at position P_i + j (P_i = the branch's prompt length). After
`BranchCaches.reencoded`, the keys must equal the HF prefill with position ids shifted by -P_i
(the generated tokens at 0..L_i-1; attention is unchanged since RoPE scores depend on relative
positions only). `encode_branches` of the same generated tokens agrees at layer 0 only: deeper
layers of a worker's tokens attended to its prompt, a fixed-text branch's did not.

The tokenizer is the tiny byte-level BPE of tests/helpers.py (with a chat template); prompts
are wrapped by a minimal template so they stay short. Model: llama3_tied (llama3 RoPE scaling,
so re-encoding by -P_i must use the scaled frequencies).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import helpers
import ps_jax as ps
import torch_reference as tr
from ps_jax.model.rope import inverse_frequencies
from ps_jax.prompts import PromptTemplates
from synth_helpers import max_diff, report

FAMILY = "llama3_tied"
TOL = 1e-4
MAX_NEW = 10
TEMPLATES = PromptTemplates(system=None, worker="{question}")
BUCKETS = dict(length_buckets=(16, 32, 64))
PER_BRANCH = [["What is two plus two?", "Name a fox."], ["Why is the sky blue?"]]
SHARED = ["One plus one is"]


@pytest.fixture(scope="module")
def tok():
  return helpers.tiny_tokenizer()


@pytest.fixture(scope="module")
def model_pair(tiny):
  return tiny(FAMILY)


def _workers(model, tok, prompts, rng, num_branches=3):
  return ps.run_workers(
    model,
    tok,
    prompts,
    num_branches=num_branches,
    max_new_tokens=MAX_NEW,
    rng=rng,
    temperature=1.0,
    top_p=0.95,
    templates=TEMPLATES,
    **BUCKETS,
  )


@pytest.fixture(scope="module")
def per_branch(model_pair, tok):
  return _workers(model_pair[1], tok, PER_BRANCH, jax.random.key(0))


@pytest.fixture(scope="module")
def shared(model_pair, tok):
  return _workers(model_pair[1], tok, SHARED, jax.random.key(1))


def _prompt_ids(tok, question: str) -> list[int]:
  ids = tok.apply_chat_template(
    [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
  )
  ids = ids["input_ids"] if hasattr(ids, "keys") else ids
  assert max(ids) < helpers.VOCAB
  return [int(t) for t in ids]


def _questions(prompts, branches):
  """questions[b][r] for each branch of each example."""
  if all(isinstance(p, str) for p in prompts):
    return [[p] * len(ids) for p, ids in zip(prompts, branches.token_ids, strict=True)]
  return prompts


def _check_against_transformers(tiny_hf, model, tok, prompts, branches, label):
  c = branches.caches
  k, v = np.asarray(c.k), np.asarray(c.v)  # [L, B, R, S, K, H]
  pos, lengths = np.asarray(c.positions), np.asarray(c.lengths)
  re = c.reencoded(inverse_frequencies(model.config))
  k_re = np.asarray(re.k)
  d_raw = d_re = 0.0
  for b, questions in enumerate(_questions(prompts, branches)):
    assert int((lengths[b] > 0).sum()) == len(questions)
    for r, q in enumerate(questions):
      prompt = _prompt_ids(tok, q)
      gen = branches.token_ids[b][r]
      n, p = len(gen), len(prompt)
      assert lengths[b, r] == n and n >= 1
      assert 2 not in gen  # a trailing stop token is not part of the branch
      np.testing.assert_array_equal(pos[b, r, :n], p + np.arange(n))
      full = prompt + gen
      ref = tr.slice_kv(tr.prefill_kv(tiny_hf.hf, full), p)
      ref_re = tr.slice_kv(
        tr.prefill_kv(tiny_hf.hf, full, position_ids=np.arange(len(full)) - p), p
      )
      for layer, ((rk, rv), (rk_re, _)) in enumerate(zip(ref, ref_re, strict=True)):
        ours_k = k[layer, b, r, :n].transpose(1, 0, 2)  # -> [K, T, H]
        ours_v = v[layer, b, r, :n].transpose(1, 0, 2)
        d_raw = max(d_raw, max_diff(ours_k, rk.numpy()), max_diff(ours_v, rv.numpy()))
        d_re = max(d_re, max_diff(k_re[layer, b, r, :n].transpose(1, 0, 2), rk_re.numpy()))
  report(f"{label}: worker K/V slots vs transformers prefill (positions P_i + j)", d_raw)
  report(f"{label}: re-encoded worker keys vs transformers at positions j", d_re)
  assert d_raw <= TOL and d_re <= TOL
  return re


def test_per_branch_prompt_worker_caches_match_transformers(model_pair, tok, per_branch):
  tiny_hf, model = model_pair
  lens = [len(_prompt_ids(tok, q)) for q in sum(PER_BRANCH, [])]
  assert len(set(lens)) == 3  # different P_i: each branch is re-encoded by its own offset
  _check_against_transformers(tiny_hf, model, tok, PER_BRANCH, per_branch, "per-branch prompts")


def test_shared_prompt_worker_caches_match_transformers(model_pair, tok, shared):
  tiny_hf, model = model_pair
  _check_against_transformers(tiny_hf, model, tok, SHARED, shared, "shared prompt x3")


def test_last_generated_token_kv_is_kept(per_branch, shared):
  """Every branch keeps all its generated tokens, the last included (no off-by-one): a branch
  that did not stop has exactly max_new_tokens slots."""
  for branches in (per_branch, shared):
    lengths = np.asarray(branches.caches.lengths)
    for b, ids in enumerate(branches.token_ids):
      for r, t in enumerate(ids):
        assert lengths[b, r] == len(t) <= MAX_NEW
  all_lengths = [len(t) for br in (per_branch, shared) for ids in br.token_ids for t in ids]
  assert MAX_NEW in all_lengths


def test_reencoded_worker_caches_vs_encode_branches(model_pair, per_branch):
  """Re-encoded worker K/V == encode_branches(generated tokens) at layer 0 (context-free);
  deeper layers differ because the worker's tokens attended to their prompt."""
  _, model = model_pair
  re = per_branch.caches.reencoded(inverse_frequencies(model.config))
  fixed = ps.encode_branches(model, None, per_branch.token_ids, **BUCKETS).caches
  np.testing.assert_array_equal(np.asarray(fixed.lengths), np.asarray(re.lengths))
  mask = np.asarray(re.mask())
  s = min(re.num_slots, fixed.num_slots)
  m = mask[..., :s]
  d0 = max(
    max_diff(np.asarray(re.k)[0, :, :, :s][m], np.asarray(fixed.k)[0, :, :, :s][m]),
    max_diff(np.asarray(re.v)[0, :, :, :s][m], np.asarray(fixed.v)[0, :, :, :s][m]),
  )
  d_deep = max_diff(np.asarray(re.k)[1:, :, :, :s][:, m], np.asarray(fixed.k)[1:, :, :, :s][:, m])
  report("re-encoded worker layer-0 K/V vs encode_branches of the same tokens", d0)
  print(f"\n(deeper layers differ by {d_deep:.3f}: worker tokens saw their prompt)")
  assert d0 <= TOL and d_deep > 1e-2


def test_branches_of_one_prompt_differ(shared):
  ids = shared.token_ids[0]
  assert len(ids) == 3
  assert len({tuple(t) for t in ids}) == 3, ids


def test_fixed_rng_is_deterministic(model_pair, tok, shared):
  _, model = model_pair
  again = _workers(model, tok, SHARED, jax.random.key(1))
  assert again.token_ids == shared.token_ids and again.texts == shared.texts
  for name in ("k", "v", "lengths", "positions"):
    np.testing.assert_array_equal(
      np.asarray(getattr(again.caches, name)), np.asarray(getattr(shared.caches, name))
    )
  other = _workers(model, tok, SHARED, jax.random.key(2))
  assert other.token_ids != shared.token_ids


# ------------------------------------------------------------ workers -> synthesize (end to end)

SYNTH_TEMPLATES = PromptTemplates(system=None, worker="{question}", latent_synthesizer="{question}")
SYNTH_NEW = 6


def test_synthesize_equals_greedy_over_synthesis_logits(model_pair, tok, per_branch):
  """`synthesize` (prefix build + prefill + while-loop decode, adapter on) answers exactly the
  greedy continuation computed from `synthesis_logits` over the chat-templated synthesizer
  prompt: the prompt sits at Lmax.. and decoding continues from Lmax + |Q|, in one path."""
  from synth_helpers import random_adapter  # pylint: disable=import-outside-toplevel

  _, model = model_pair
  adapter = random_adapter(model.config, seed=12)
  questions = ["So what is it?", "And the answer?"]
  result = ps.synthesize(
    model,
    tok,
    per_branch,
    questions,
    method="parallel_synthesis",
    adapter=adapter,
    max_new_tokens=SYNTH_NEW,
    templates=SYNTH_TEMPLATES,
    length_buckets=(16, 32, 64),
  )
  prompts = [_prompt_ids(tok, q) for q in questions]
  seqs = [list(p) for p in prompts]
  done = [False, False]
  width = max(len(p) for p in prompts) + SYNTH_NEW
  for _ in range(SYNTH_NEW):
    tokens, lengths = helpers.right_pad(seqs, width)
    logits = np.asarray(
      ps.synthesis_logits(
        model, per_branch, tokens, "parallel_synthesis", adapter=adapter, lengths=lengths
      )
    )
    for b, seq in enumerate(seqs):
      if not done[b]:
        seq.append(int(np.argmax(logits[b, len(seq) - 1])))
        done[b] = seq[-1] == tok.eos_token_id
  gens = [s[len(p) :] for s, p in zip(seqs, prompts, strict=True)]
  np.testing.assert_array_equal(result.prompt_tokens, [len(p) for p in prompts])
  np.testing.assert_array_equal(result.generated_tokens, [len(g) for g in gens])
  want = [
    tok.decode([t for t in g if t != tok.eos_token_id], skip_special_tokens=True) for g in gens
  ]
  assert result.texts == want
  assert result.ttft_s > 0
