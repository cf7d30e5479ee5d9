"""`pcw` (training-free Parallel Context Windows layout) vs sequential prefill and transformers.

1. One branch, no adapter: the synthesizer tokens placed at L + t over the branch's cache see
   exactly what they would see at the end of the plain concatenation [branch; synth], so their
   logits equal the plain forward's (ps_jax and transformers), for every tiny family.
2. Several branches of different lengths: logits equal a reference built entirely with
   transformers (each branch's past_key_values from position 0, concatenated in branch order
   into a DynamicCache, synth tokens at explicit positions Lmax + t).
3. Branches whose keys are NOT at positions 0.. (encode_branches(keep_last=E) keeps each
   branch's last E tokens at their original positions, so the synthesizer must re-encode them
   by -start): equal a transformers reference that computes those keys directly at the target
   positions (position_ids shifted by -start; RoPE attention depends on relative positions
   only, so the hidden states are unchanged). This is where rope_theta and llama3 scaling matter.
"""

from __future__ import annotations

import numpy as np
import pytest

import helpers
import ps_jax as ps
import torch_reference as tr
from synth_helpers import logits_np, max_diff, report

FAMILIES = list(helpers.FAMILIES)
TOL = 1e-4
# One length bucket for the multi-branch and the keep_last tests: both compile the same programs.
BUCKETS = dict(length_buckets=(64,))


@pytest.mark.parametrize("family", FAMILIES)
def test_single_branch_pcw_equals_plain_forward_of_concatenation(tiny, family):
  tiny_hf, model = tiny(family)
  branch, synth = helpers.random_prompts([9, 6], seed=11)
  branches = ps.encode_branches(model, None, [[branch]])
  ours = logits_np(model, branches, [synth], "pcw")[0]  # [6, V]
  ref = helpers.hf_logits(tiny_hf.hf, np.array([branch + synth], np.int32))[0, 9:]
  d = max_diff(ours, ref)
  report(f"{family} 1 branch pcw vs transformers plain forward of [branch; synth]", d)
  assert np.std(ref) > 0.5  # logits have real spread: the comparison is meaningful
  assert d <= TOL


def test_single_branch_identity_adapter_equals_sequential_prefill(tiny):
  """ps_jax's own plain forward of [branch; synth] == pcw == parallel_synthesis with a fresh
  adapter (mapper output layer and LoRA B zero: the identity) == parallel_synthesis with no
  adapter."""
  _, model = tiny("llama")
  branch, synth = helpers.random_prompts([9, 6], seed=11)
  branches = ps.encode_branches(model, None, [[branch]])
  pcw = logits_np(model, branches, [synth], "pcw")[0]
  concat = np.array([branch + synth], np.int32)
  plain = helpers.jit_forward(model)(concat, np.array([concat.shape[1]], np.int32))[0, 9:]
  ident = ps.Adapter.create(model.config, rank=4, alpha=8.0, seed=3)
  d_ident = max_diff(
    pcw, logits_np(model, branches, [synth], "parallel_synthesis", adapter=ident)[0]
  )
  d_none = max_diff(pcw, logits_np(model, branches, [synth], "parallel_synthesis")[0])
  d_plain = max_diff(pcw, plain)
  report("llama 1 branch pcw vs ps_jax plain forward", d_plain)
  report("llama identity adapter parallel_synthesis vs pcw", d_ident)
  assert d_plain <= TOL and d_ident <= 1e-6 and d_none == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_branch_pcw_matches_transformers_reference(tiny, family):
  tiny_hf, model = tiny(family)
  *branch_ids, synth = helpers.random_prompts([7, 12, 4, 6], seed=21)
  branches = ps.encode_branches(model, None, [branch_ids], **BUCKETS)
  assert np.asarray(branches.caches.lengths).tolist() == [[7, 12, 4, 0]]  # R bucket 4
  ours = logits_np(model, branches, [synth], "pcw")[0]

  kvs = tr.fixed_text_kv(tiny_hf.hf, branch_ids)
  ref = tr.synth_logits(tiny_hf.hf, kvs, [7, 12, 4], synth)
  d = max_diff(ours, ref)
  report(f"{family} 3 branches pcw vs transformers", d)
  # Not the single-sequence answer: the three windows overlap in position space.
  seq = helpers.hf_logits(tiny_hf.hf, np.array([sum(branch_ids, []) + synth]))[0, -6:]
  assert max_diff(ref, seq) > 1e-2
  assert d <= TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_reencoded_branches_match_transformers_at_shifted_positions(tiny, family):
  tiny_hf, model = tiny(family)
  full_lengths, keep = [40, 63, 5], 8
  *full_ids, synth = helpers.random_prompts(full_lengths + [6], seed=31)
  branches = ps.encode_branches(model, None, [full_ids], keep_last=keep, **BUCKETS)
  starts = [max(n - keep, 0) for n in full_lengths]  # 32, 55, 0
  kept = [n - s for n, s in zip(full_lengths, starts, strict=True)]  # 8, 8, 5
  pos = np.asarray(branches.caches.positions)[0]
  for r, (s, n) in enumerate(zip(starts, kept, strict=True)):
    np.testing.assert_array_equal(pos[r, :n], s + np.arange(n))
  ours = logits_np(model, branches, [synth], "pcw")[0]

  kvs = [
    tr.slice_kv(tr.prefill_kv(tiny_hf.hf, ids, position_ids=np.arange(len(ids)) - s), s)
    for ids, s in zip(full_ids, starts, strict=True)
  ]
  ref = tr.synth_logits(tiny_hf.hf, kvs, kept, synth)
  # Without re-encoding (keys left at their original positions) the answer would differ.
  kvs_raw = [
    tr.slice_kv(tr.prefill_kv(tiny_hf.hf, ids), s) for ids, s in zip(full_ids, starts, strict=True)
  ]
  stale = tr.synth_logits(tiny_hf.hf, kvs_raw, kept, synth)
  d = max_diff(ours, ref)
  report(f"{family} keep_last re-encoded pcw vs transformers", d)
  assert max_diff(ref, stale) > 1e-3
  assert d <= TOL
