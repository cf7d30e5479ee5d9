"""The real SmolLM2-135M-Instruct (30 layers, 9 query / 3 KV heads, tied embeddings) with the
paper's adapter shape (LoRA r=16, alpha=32 on q/k/v/o; 260-parameter mapper), all weights
random and non-zero, in the reference file layout: every cache method's logits over three
text branches (tokenized by the model's own tokenizer) equal the transformers/peft/torch
reference. Tolerance 1e-3 as in tests/parity/test_smollm2_parity.py (GGUF-dequantized fp32
weights, 30 layers, logits of magnitude ~20).
"""

from __future__ import annotations

import pytest

import ps_jax as ps
import torch_reference as tr
from synth_helpers import logits_np, max_diff, report

pytestmark = pytest.mark.slow

BRANCHES = [
  "Paris is the capital and largest city of France.",
  "The Eiffel Tower was completed in 1889.",
  "France borders Belgium, Germany, Switzerland, Italy and Spain.",
]
SYNTH = "Question: which city is the capital of France? Answer:"
# (mapper_only and lora_only are covered on the tiny models; each method compiles a program.)
USES = {"pcw": (False, False), "parallel_synthesis": (True, True)}


def test_smollm2_reference_adapter_all_methods(smollm2, smollm2_hf, tmp_path):
  model, tok = smollm2
  peft_model = tr.random_peft_model(smollm2_hf, rank=16, seed=8, scale=0.05)
  mapper = tr.random_ref_mapper(seed=9)
  peft_model.save_pretrained(str(tmp_path / "judger_lora"))
  tr.save_ref_mapper(mapper, str(tmp_path))
  adapter = ps.load_adapter(str(tmp_path), model.config)
  assert adapter.lora.rank == 16 and adapter.lora.scale == 2.0

  branches = ps.encode_branches(model, tok, [BRANCHES])
  synth = list(tok.encode(SYNTH, add_special_tokens=False))
  branch_ids = branches.token_ids[0]
  lengths = [len(b) for b in branch_ids]
  with peft_model.disable_adapter():
    kvs = tr.fixed_text_kv(peft_model, branch_ids)
  worst, outs = 0.0, {}
  for method, (use_mapper, use_lora) in USES.items():
    ours = outs[method] = logits_np(model, branches, [synth], method, adapter=adapter)[0]
    if use_lora:
      ref = tr.synth_logits(peft_model, kvs, lengths, synth, mapper=mapper if use_mapper else None)
    else:
      with peft_model.disable_adapter():
        ref = tr.synth_logits(
          peft_model, kvs, lengths, synth, mapper=mapper if use_mapper else None
        )
    d = max_diff(ours, ref)
    report(f"SmolLM2 {method} vs transformers/peft/torch", d)
    worst = max(worst, d)
    assert (ours.argmax(-1) == ref.argmax(-1)).all(), method
  assert worst <= 1e-3
  # The adapter is far from the identity on the real model too.
  assert max_diff(outs["parallel_synthesis"], outs["pcw"]) > 1e-1
