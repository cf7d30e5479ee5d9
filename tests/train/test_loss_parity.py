"""The training loss against an independent cross-entropy, the method switches of the training
forward, and the per-head mapper ablation (tiny random model, fp32).

The independent reference: token ids built here from the tokenizer and the PromptTemplates,
one plain `model(tokens)` forward per row over the whole sequence, and the cross-entropy of the
answer tokens computed in float64 numpy from those full-sequence logits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import ps_jax as ps
from ps_jax.data import synthetic
from ps_jax.data.pipeline import PipelineConfig, tokenize_rows
from ps_jax.data.rows import Row
from ps_jax.mapper import MapperParam
from ps_jax.prompts import PromptTemplates
from ps_jax.synthesis import METHOD_TABLE, build_prefix, synthesis_logits
from ps_jax.train.loop import AdapterConfig, TrainConfig, make_adapter
from ps_jax.train.step import (
  OptimizerConfig,
  init_state,
  loss_fn,
  make_optimizer,
  split_adapter,
  train_step,
)
from ps_jax.workers import encode_branches
from train_helpers import TINY_SHAPE

pytestmark = pytest.mark.slow  # trains: runs long (scheduled first, tests/conftest.py)

TOL = 1e-5
CFG = PipelineConfig(
  batch_size=3, max_branches=3, branch_tokens=32, synth_tokens=96, target_tokens=16
)
TEMPLATES = PromptTemplates()
# One branch per row (the pcw/identity case), of different lengths; answers of 1-3 tokens.
SINGLE = [
  Row("Where does Ann live?", "Oslo", ("Ann lives in Oslo and works at the harbour.",)),
  Row("What colour is the car?", "dark red", ("The car is dark red.",)),
  Row(
    "Who won the match?",
    "Bo",
    ("Yesterday the long final went to extra time and in the end Bo won the match.",),
  ),
]


def _batch(examples):
  return {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}


def _chat_ids(tokenizer, messages) -> list[int]:
  ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _target_ids(tokenizer, row) -> list[int]:
  return tokenizer.encode(row.answer.strip(), add_special_tokens=False) + [tokenizer.eos_token_id]


def _reference_ce(model, sequences, num_targets, **forward_kwargs) -> float:
  """Token-mean CE of the last num_targets[i] tokens of each sequence, from the logits of one
  plain forward per sequence (float64 log-softmax)."""
  total, count = 0.0, 0
  for seq, n in zip(sequences, num_targets, strict=True):
    logits, _ = model(jnp.asarray([seq], jnp.int32), **forward_kwargs)
    logits = np.asarray(logits[0], np.float64)  # [T, V]
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    t = len(seq)
    for pos in range(t - n - 1, t - 1):  # the logits at pos predict token pos + 1
      total -= logp[pos, seq[pos + 1]]
      count += 1
  return total / count


def _loss(adapter, model, batch, method):
  graphdef, trainable, rest = split_adapter(adapter)
  loss, count = jax.jit(
    lambda tr, b: loss_fn(
      tr, model, graphdef, rest, b, target_tokens=CFG.target_tokens, method=method
    )
  )(nnx.to_pure_dict(trainable), batch)
  return float(loss), float(count)


def _random_lora(adapter, seed=0):
  """Gives the (zero-initialised) LoRA B matrices random values, so the LoRA is not a no-op."""
  key = jax.random.key(seed)
  for name in adapter.lora.b:
    key, sub = jax.random.split(key)
    b = adapter.lora.b[name]
    adapter.lora.b[name] = nnx.LoRAParam(0.5 * jax.random.normal(sub, b.shape, b.dtype))
  return adapter


def _random_mapper(adapter, seed=1):
  key = jax.random.key(seed)
  for name in ("w2", "b2"):
    key, sub = jax.random.split(key)
    x = getattr(adapter.mapper, name)
    setattr(adapter.mapper, name, MapperParam(jax.random.normal(sub, x.shape)))
  return adapter


@pytest.mark.parametrize("method", ["pcw", "parallel_synthesis"])
def test_cache_loss_of_one_branch_equals_ce_of_the_plain_forward(tiny_model, tokenizer, method):
  """Single branch, identity adapter (pcw; parallel_synthesis at init: mapper and LoRA are
  exact identities): the cache path equals a plain forward over [branch; synthesizer]."""
  examples = tokenize_rows(SINGLE, tokenizer, CFG).examples
  assert len(examples) == len(SINGLE)
  sequences, targets = [], []
  for row, ex in zip(SINGLE, examples, strict=True):
    branch = tokenizer.encode(row.contexts[0], add_special_tokens=False)
    synth = _chat_ids(tokenizer, TEMPLATES.latent_synthesizer_messages(row.query))
    target = _target_ids(tokenizer, row)
    assert list(ex["synth_tokens"][: ex["synth_lengths"]]) == synth + target  # the layout
    sequences.append(branch + synth + target)
    targets.append(len(target))
  adapter = make_adapter(tiny_model.config, AdapterConfig(rank=4, alpha=8.0), "parallel_synthesis")
  loss, count = _loss(adapter, tiny_model, _batch(examples), method)
  ref = _reference_ce(tiny_model, sequences, targets)
  print(f"{method} one-branch loss {loss:.8f} reference {ref:.8f} diff {abs(loss - ref):.2e}")
  assert count == sum(targets)
  assert abs(loss - ref) <= TOL


def _multi_rows():
  return synthetic.generate("find_fact", "train", 2, 0, (2, 3)) + synthetic.generate(
    "majority_vote", "train", 1, 0, 3
  )


def test_text_lora_loss_equals_ce_of_the_plain_forward_with_the_lora(tiny_model, tokenizer):
  """text_lora: the loss equals the CE of one plain forward over the text-synthesizer prompt
  (branch texts inside) + answer, with the same (non-zero) LoRA."""
  rows = _multi_rows()
  tokenized = tokenize_rows(rows, tokenizer, CFG, layout="text")
  assert tokenized.stats.valid == len(rows)
  examples = tokenized.examples
  assert examples[0]["synth_tokens"].shape == (CFG.max_branches * CFG.branch_tokens + 96,)
  assert "branch_tokens" not in examples[0]
  sequences, targets = [], []
  for row, ex in zip(rows, examples, strict=True):
    prompt = _chat_ids(tokenizer, TEMPLATES.text_synthesizer_messages(row.query, row.contexts))
    target = _target_ids(tokenizer, row)
    assert list(ex["synth_tokens"][: ex["synth_lengths"]]) == prompt + target
    sequences.append(prompt + target)
    targets.append(len(target))
  adapter = _random_lora(
    make_adapter(tiny_model.config, AdapterConfig(rank=4, alpha=8.0), "text_lora")
  )
  assert adapter.mapper is None
  loss, count = _loss(adapter, tiny_model, _batch(examples), "text_lora")
  lora = adapter.lora.weights(jnp.float32)
  ref = _reference_ce(tiny_model, sequences, targets, lora=lora, lora_scale=adapter.lora.scale)
  no_lora = _reference_ce(tiny_model, sequences, targets)
  print(f"text_lora loss {loss:.8f} reference {ref:.8f} diff {abs(loss - ref):.2e}")
  assert count == sum(targets)
  assert abs(loss - ref) <= TOL
  assert abs(no_lora - ref) > 1e-3  # the LoRA matters, so the match is not vacuous


def test_text_layout_skips_rows_whose_text_prompt_does_not_fit(tokenizer):
  rows = _multi_rows()
  short = dataclasses.replace(CFG, text_tokens=60)
  tokenized = tokenize_rows(rows, tokenizer, short, layout="text")
  assert tokenized.stats.valid == 0
  assert dict(tokenized.stats.skipped) == {"text_prompt:too_long": len(rows)}
  # A row the cache layout refuses is refused by the text layout too (the same rows train).
  too_many = Row("Q?", "A", tuple(f"Fact {i}." for i in range(CFG.max_branches + 1)))
  stats = tokenize_rows([too_many], tokenizer, CFG, layout="text").stats
  assert dict(stats.skipped) == {"contexts:too_many": 1}


def test_trained_cache_loss_equals_ce_of_the_inference_logits(tiny_model, tokenizer):
  """With a non-identity mapper and LoRA, loss_fn equals the CE of `synthesis_logits` (the
  inference forward) on branches from `encode_branches`, for every cache method; no_reencode
  equals parallel_synthesis on fixed-text branches (they start at position 0)."""
  rows = _multi_rows()
  examples = tokenize_rows(rows, tokenizer, CFG).examples
  batch = _batch(examples)
  adapter = _random_mapper(
    _random_lora(make_adapter(tiny_model.config, AdapterConfig(rank=4, alpha=8.0)))
  )
  branches = encode_branches(tiny_model, tokenizer, [list(r.contexts) for r in rows])
  lengths = np.asarray(batch["synth_lengths"])
  losses = {}
  for method in ("pcw", "mapper_only", "lora_only", "parallel_synthesis", "no_reencode"):
    loss, _ = _loss(adapter, tiny_model, batch, method)
    logits = synthesis_logits(
      tiny_model, branches, np.asarray(batch["synth_tokens"]), method, adapter, lengths
    )
    mask = np.asarray(batch["loss_mask"]) > 0
    tokens = np.asarray(batch["synth_tokens"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], jnp.asarray(tokens[:, 1:]))
    ref = float(np.sum(np.asarray(ce) * mask[:, :-1]) / mask.sum())
    print(f"{method} loss {loss:.8f} inference CE {ref:.8f} diff {abs(loss - ref):.2e}")
    assert abs(loss - ref) <= TOL
    losses[method] = loss
  assert len({round(v, 4) for k, v in losses.items() if k != "no_reencode"}) == 4
  assert abs(losses["no_reencode"] - losses["parallel_synthesis"]) <= TOL


def test_no_reencode_keeps_worker_positions(tiny_model, tokenizer):
  """Branches that sit after earlier tokens (keep_last: positions > 0): without re-encoding the
  keys are not rotated (they keep those positions); the synthesizer starts at Lmax either way."""
  texts = [["one two three four five six seven", "alpha beta gamma"]]
  branches = encode_branches(tiny_model, tokenizer, texts, keep_last=2)
  caches = branches.caches
  assert int(caches.positions[0, 0, 0]) > 0
  kept, lmax = build_prefix(tiny_model.config, caches, None, reencode=False)
  moved, lmax2 = build_prefix(tiny_model.config, caches, None, reencode=True)
  np.testing.assert_array_equal(kept.k, caches.merged().k)  # keys as computed
  np.testing.assert_array_equal(kept.v, moved.v)  # values are never rotated
  assert float(jnp.max(jnp.abs(moved.k - kept.k))) > 1e-3
  assert int(lmax[0]) == int(lmax2[0]) == 2  # Lmax of the kept tokens
  tokens = np.asarray([tokenizer.encode("Answer:", add_special_tokens=False)])
  a = synthesis_logits(tiny_model, branches, tokens, "parallel_synthesis")
  b = synthesis_logits(tiny_model, branches, tokens, "no_reencode")
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4
  assert not METHOD_TABLE["no_reencode"].reencode


def test_per_head_mapper_has_its_shape_and_one_step_trains_it(tiny_model, tokenizer):
  """The per-head ablation predicts 4 coefficients per KV head: w2 [hidden, 4K], coefficients
  [L, B, R, K, 4]; one AdamW step moves its output layer and makes the heads differ."""
  cfg = AdapterConfig(rank=4, alpha=8.0, per_head_mapper=True, mapper_hidden_dim=8)
  adapter = make_adapter(tiny_model.config, cfg)
  mapper = adapter.mapper
  num_layers, num_kv = tiny_model.config.num_layers, tiny_model.config.num_kv_heads
  assert mapper.w2.shape == (8, 4 * num_kv) and mapper.b2.shape == (4 * num_kv,)
  lengths = jnp.asarray([[5, 3, 0]])
  coeffs = mapper.coefficients(lengths)
  assert coeffs.shape == (num_layers, 1, 3, num_kv, 4)
  np.testing.assert_array_equal(coeffs, jnp.broadcast_to(jnp.array([1.0, 0, 1, 0]), coeffs.shape))

  examples = tokenize_rows(_multi_rows(), tokenizer, CFG).examples
  optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-2))
  graphdef, _, rest = split_adapter(adapter)
  state = init_state(adapter, optimizer)
  model_graphdef, model_params = nnx.split(tiny_model)
  step = jax.jit(
    lambda s, p, b: train_step(
      s,
      p,
      b,
      model_graphdef=model_graphdef,
      adapter_graphdef=graphdef,
      adapter_rest=rest,
      optimizer=optimizer,
      target_tokens=CFG.target_tokens,
    )
  )
  new, metrics = step(state, model_params, _batch(examples))
  assert bool(metrics["finite"])
  before, after = state.trainable["mapper"], new.trainable["mapper"]
  for name in ("w2", "b2"):
    assert float(jnp.max(jnp.abs(after[name] - before[name]))) > 1e-4, name
  nnx.update(adapter, new.trainable)
  coeffs = adapter.mapper.coefficients(lengths)
  assert coeffs.shape == (num_layers, 1, 3, num_kv, 4)
  heads = np.asarray(coeffs[:, 0, 0])  # [L, K, 4]
  assert np.max(np.abs(heads - heads[:, :1])) > 1e-5  # per-head coefficients, not shared


def test_train_config_accepts_the_trained_methods_only():
  for method in ("parallel_synthesis", "text_lora", "lora_only", "mapper_only", "no_reencode"):
    assert TrainConfig(num_steps=1, checkpoint_every=1, method=method).method == method
  for method in ("pcw", "text", "nope"):
    with pytest.raises(ValueError, match="train.method"):
      TrainConfig(num_steps=1, checkpoint_every=1, method=method)
  config = ps.io.load_config("smollm2-135m-instruct")
  config = dataclasses.replace(config, **TINY_SHAPE)
  parts = {
    m: make_adapter(config, AdapterConfig(rank=4), m)
    for m in ("parallel_synthesis", "text_lora", "lora_only", "mapper_only")
  }
  assert {m: (a.mapper is not None, a.lora is not None) for m, a in parts.items()} == {
    "parallel_synthesis": (True, True),
    "text_lora": (False, True),
    "lora_only": (False, True),
    "mapper_only": (True, False),
  }
  # One seed: every method starts from the same LoRA.
  np.testing.assert_array_equal(
    parts["text_lora"].lora.a["q"][...], parts["parallel_synthesis"].lora.a["q"][...]
  )


def test_worker_layout_branches_sit_after_their_prompt(tiny_model, tokenizer):
  """encode_branches(prefixes=...): each branch prefilled after its example's prefix, which is
  dropped; the same KV and positions as keeping the branch tail of prefix + branch. There
  re-encoding matters: no_reencode differs from parallel_synthesis."""
  texts = [["Ann lives in Oslo.", "Bo lives in Rome and likes it."], ["Cy is here."]]
  prefixes = [tokenizer.encode(p, add_special_tokens=False) for p in ("Where?", "Who is it?")]
  got = encode_branches(tiny_model, tokenizer, texts, prefixes=prefixes)
  for b, ex in enumerate(texts):
    for r, text in enumerate(ex):
      ids = tokenizer.encode(text, add_special_tokens=False)
      want = encode_branches(tiny_model, tokenizer, [[prefixes[b] + ids]], keep_last=len(ids))
      n = len(ids)
      assert got.token_ids[b][r] == ids and got.texts[b][r] == want.texts[0][0]
      assert int(got.caches.lengths[b, r]) == n
      np.testing.assert_array_equal(got.caches.positions[b, r, :n], len(prefixes[b]) + np.arange(n))
      np.testing.assert_allclose(
        got.caches.k[:, b, r, :n], want.caches.k[:, 0, 0, :n], atol=1e-6, rtol=0
      )
      np.testing.assert_allclose(
        got.caches.v[:, b, r, :n], want.caches.v[:, 0, 0, :n], atol=1e-6, rtol=0
      )
  tokens = np.asarray([tokenizer.encode("Answer:", add_special_tokens=False)] * 2)
  a = synthesis_logits(tiny_model, got, tokens, "parallel_synthesis")
  b = synthesis_logits(tiny_model, got, tokens, "no_reencode")
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4
