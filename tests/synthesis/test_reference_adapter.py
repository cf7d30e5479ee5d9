"""A reference-format adapter (PEFT LoRA folder + torch cache-mapper state dict), loaded with
`ps_jax.load_adapter`, gives the logits of the same computation done in torch.

The adapter has NON-ZERO weights everywhere (LoRA A and B, the mapper's output layer), so the
LoRA, the mapper, their scalings and their placement (mapper on branch K/V per branch and
layer; LoRA only on the synthesizer's tokens, never on branch encoding) all show in the logits.

Reference (torch_reference.py): branch caches from the PEFT model with the adapter disabled
(fixed-text branches: P_i = 0, no re-encoding), the reference mapper applied per branch and
layer with features [log1p(max(L_i,1)), log1p(max(N,1)), l/(nL-1)], concatenation in branch
order into a DynamicCache, then the synthesizer tokens through the PEFT model with the adapter
ON (lora_only, parallel_synthesis) or OFF (pcw, mapper_only) at positions Lmax + t.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pytest
from flax import nnx

import helpers
import ps_jax as ps
import torch_reference as tr
from ps_jax.mapper import CacheMapper, MapperParam
from synth_helpers import logits_np, max_diff, report, valid_rows_diff

TOL = 1e-4
RANKS = {"llama": 4, "qwen3": 16}
METHODS = ("pcw", "mapper_only", "lora_only", "parallel_synthesis")
# Every method compiles its own program: all four on llama, the full method on qwen3.
FAMILY_METHODS = {"llama": METHODS, "qwen3": ("pcw", "parallel_synthesis")}
USES = {
  "pcw": (False, False),
  "mapper_only": (True, False),
  "lora_only": (False, True),
  "parallel_synthesis": (True, True),
}
# Two examples with different N and branch lengths, batched; synth tokens right-padded.
BRANCH_LENGTHS = [[5, 9, 3], [7, 4]]
SYNTH_LENGTHS = [6, 4]


def _num_params(mapper) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(nnx.state(mapper, MapperParam)))


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
  """`reference(family)` -> (family, model, adapter, ours, ref, lengths, inputs), built once per
  family; inputs = (adapter folder, branches, synth tokens)."""
  built = {}

  def get(family):
    if family not in built:
      built[family] = _build(family, tiny, tmp_path_factory)
    return built[family]

  return get


def _build(family, tiny, tmp_path_factory):
  tiny_hf, model = tiny(family)
  peft_model = tr.random_peft_model(tiny_hf.hf, rank=RANKS[family], seed=5)
  mapper = tr.random_ref_mapper(seed=6)
  folder = tmp_path_factory.mktemp(f"reference_adapter_{family}")
  peft_model.save_pretrained(str(folder / "judger_lora"))
  tr.save_ref_mapper(mapper, str(folder))
  adapter = ps.load_adapter(str(folder), model.config)

  ids = helpers.random_prompts(sum(BRANCH_LENGTHS, []) + SYNTH_LENGTHS, seed=41)
  examples, i = [], 0
  for ls in BRANCH_LENGTHS:
    examples.append(ids[i : i + len(ls)])
    i += len(ls)
  synth = ids[i:]
  branches = ps.encode_branches(model, None, examples)
  tokens, lengths = helpers.right_pad(synth)
  methods = FAMILY_METHODS[family]
  ours = {
    m: logits_np(model, branches, tokens, m, adapter=adapter, lengths=lengths) for m in methods
  }

  with peft_model.disable_adapter():  # workers / branch encoding: adapter OFF
    kvs = [tr.fixed_text_kv(peft_model, ex) for ex in examples]
  ref = {}
  for m in methods:
    use_mapper, use_lora = USES[m]
    rows = []
    for kv, ls, s in zip(kvs, BRANCH_LENGTHS, synth, strict=True):
      with contextlib.nullcontext() if use_lora else peft_model.disable_adapter():
        rows.append(tr.synth_logits(peft_model, kv, ls, s, mapper=mapper if use_mapper else None))
    ref[m] = rows
  return family, model, adapter, ours, ref, lengths, (folder, branches, tokens)


@pytest.mark.parametrize("family,method", [(f, m) for f, ms in FAMILY_METHODS.items() for m in ms])
def test_reference_adapter_logits_match_torch(reference, family, method):
  _, _, _, ours, ref, lengths, _ = reference(family)
  d = max(max_diff(ours[method][b, :n], ref[method][b]) for b, n in enumerate(lengths))
  report(f"{family} reference adapter, {method} vs torch/peft", d)
  assert d <= TOL


@pytest.mark.parametrize("family", list(RANKS))
def test_adapter_parts_change_the_logits(reference, family):
  """The comparisons above are not vacuous: mapper and LoRA each move the logits a lot."""
  _, _, _, ours, _, lengths, _ = reference(family)
  d_all = valid_rows_diff(ours["parallel_synthesis"], ours["pcw"], lengths)
  print(f"\n[{family}] |parallel_synthesis-pcw|={d_all:.3f}")
  assert d_all > 1e-1
  if "mapper_only" in ours:
    d_map = valid_rows_diff(ours["mapper_only"], ours["pcw"], lengths)
    d_lora = valid_rows_diff(ours["lora_only"], ours["pcw"], lengths)
    d_both = valid_rows_diff(ours["parallel_synthesis"], ours["lora_only"], lengths)
    print(
      f"[{family}] |mapper_only-pcw|={d_map:.3f} |lora_only-pcw|={d_lora:.3f} "
      f"|parallel_synthesis-lora_only|={d_both:.3f}"
    )
    assert d_map > 1e-2 and d_lora > 1e-1 and d_both > 1e-2


@pytest.mark.parametrize("family", list(RANKS))
def test_loaded_adapter_structure(reference, family):
  _, model, adapter, *_ = reference(family)
  assert adapter.lora.rank == RANKS[family] and adapter.lora.scale == 2.0
  assert _num_params(adapter.mapper) == 260
  assert adapter.mapper.metadata_features == "both" and adapter.mapper.hidden_dim == 32
  assert model.config.num_layers == adapter.mapper.num_layers


@pytest.mark.parametrize("family", list(RANKS))
def test_reference_folder_loads_without_a_config(reference, family):
  """The release layout records no model shape: load_adapter(path) infers layers and widths
  from the LoRA tensors and gives the same logits as load_adapter(path, config)."""
  _, model, adapter, ours, _, lengths, (folder, branches, tokens) = reference(family)
  loaded = ps.load_adapter(str(folder))
  c = model.config
  assert loaded.model_shape.as_dict() == {
    "num_layers": c.num_layers,
    "hidden_size": c.hidden_size,
    "q_size": c.num_heads * c.head_dim,
    "kv_size": c.num_kv_heads * c.head_dim,
  }
  assert loaded.lora.rank == adapter.lora.rank and loaded.lora.scale == adapter.lora.scale
  got = logits_np(model, branches, tokens, "parallel_synthesis", adapter=loaded, lengths=lengths)
  d = valid_rows_diff(got, ours["parallel_synthesis"], lengths)
  report(f"{family} reference adapter without config vs with config", d)
  assert d == 0.0


# ------------------------------------------------------------------ the mapper on its own

MAPPER_LENGTHS = np.array([[5, 9, 3, 0], [7, 0, 0, 0], [1, 300, 0, 0]], np.int32)
NUM_LAYERS = 3


@pytest.mark.parametrize(
  "features,din", [("both", 3), ("length", 2), ("num_agents", 2), ("none", 1)]
)
def test_reference_mapper_coefficients_all_metadata_modes(tmp_path, features, din):
  """Loaded reference mapper == the torch reference formula, per branch and layer, for each
  metadata_features option (N counts only real branches; absent branches are irrelevant)."""
  cfg = ps.ModelConfig(
    family="llama",
    vocab_size=16,
    hidden_size=8,
    intermediate_size=16,
    num_layers=NUM_LAYERS,
    num_heads=2,
    num_kv_heads=2,
    head_dim=4,
  )
  ref = tr.random_ref_mapper(seed=7, metadata_features=features)
  tr.save_ref_mapper(ref, str(tmp_path))
  adapter = ps.load_adapter(str(tmp_path), cfg)
  assert adapter.lora is None
  mapper = adapter.mapper
  assert mapper.w1.shape == (din, 32) and mapper.w2.shape == (32, 4)
  assert _num_params(mapper) == din * 32 + 32 + 32 * 4 + 4  # 260 for "both"
  ours = np.asarray(mapper.coefficients(MAPPER_LENGTHS))  # [L, B, R, K, 4]
  d = 0.0
  for b, row in enumerate(MAPPER_LENGTHS):
    n_real = int((row > 0).sum())
    for r, length in enumerate(row):
      if length == 0:
        continue
      for layer in range(NUM_LAYERS):
        want = np.array(
          [float(c) for c in ref.coefficients(int(length), n_real, layer, NUM_LAYERS)]
        )
        d = max(d, max_diff(ours[layer, b, r], np.broadcast_to(want, (2, 4))))
  report(f"mapper coefficients ({features}) vs torch", d)
  assert d <= 1e-6


def test_fresh_mapper_is_identity_and_has_260_parameters():
  mapper = CacheMapper(4, 2, rngs=nnx.Rngs(0))
  assert _num_params(mapper) == 260
  coeffs = np.asarray(mapper.coefficients(MAPPER_LENGTHS))
  np.testing.assert_array_equal(coeffs, np.broadcast_to([1.0, 0.0, 1.0, 0.0], coeffs.shape))
  for features, din in (("length", 2), ("num_agents", 2), ("none", 1)):
    assert CacheMapper(4, 2, metadata_features=features, rngs=nnx.Rngs(0)).w1.shape[0] == din
