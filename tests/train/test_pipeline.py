"""The grain input pipeline (ps_jax.data.pipeline): order, resumable state, loss mask, sharding.

No jax program is compiled here; only SmolLM2's tokenizer is loaded (once per session).
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from ps_jax.data import synthetic
from ps_jax.data.pipeline import (
  PipelineConfig,
  TokenizeRow,
  make_dataset,
  resume_state,
  select_rows,
  tokenize_row,
  tokenize_rows,
)
from ps_jax.data.rows import Row, RowStats
from ps_jax.prompts import PromptTemplates

CFG = PipelineConfig(batch_size=4, max_branches=4, branch_tokens=32, synth_tokens=96, seed=0)
KEYS = ("branch_tokens", "branch_lengths", "synth_tokens", "synth_lengths", "loss_mask")


@pytest.fixture(scope="module")
def rows():
  return synthetic.generate("find_fact", "train", 7, 0, (2, 4)) + synthetic.generate(
    "majority_vote", "train", 6, 0, (3, 4)
  )


@pytest.fixture(scope="module")
def examples(rows, tokenizer):
  ts = tokenize_rows(rows, tokenizer, CFG)
  assert ts.stats.num_skipped == 0 and ts.stats.valid == len(rows) == 13
  # Mark each example with its row index so batch contents can be identified.
  return [dict(ex, row=np.int32(i)) for i, ex in enumerate(ts.examples)]


def _batches(ds_or_it, n):
  return [{k: np.asarray(v) for k, v in b.items()} for b in itertools.islice(ds_or_it, n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_order_is_deterministic_by_seed_and_each_epoch_is_a_permutation(examples):
  n = 10  # 40 examples: three full epochs of 13 and one more
  first = _batches(iter(make_dataset(examples, CFG)), n)
  again = _batches(iter(make_dataset(examples, CFG)), n)
  _assert_same(first, again)
  order = np.concatenate([b["row"] for b in first])
  other = np.concatenate(
    [
      b["row"]
      for b in _batches(
        iter(make_dataset(examples, PipelineConfig(**{**CFG.__dict__, "seed": 1}))), n
      )
    ]
  )
  assert not np.array_equal(order, other), "a different seed must give a different order"
  epochs = [order[13 * e : 13 * (e + 1)] for e in range(3)]
  for epoch in epochs:  # every row exactly once per epoch (batches straddle epochs)
    assert sorted(epoch) == list(range(13))
  assert not np.array_equal(epochs[0], epochs[1]), "each epoch is reshuffled"
  for b in first:
    assert set(KEYS) <= set(b)
    assert b["branch_tokens"].shape == (4, CFG.max_branches, CFG.branch_tokens)
    assert b["synth_tokens"].shape == b["loss_mask"].shape == (4, CFG.synth_tokens)


@pytest.mark.parametrize("skip", [0, 5])
def test_iterator_state_resumes_the_exact_batch_sequence(examples, skip):
  it = iter(make_dataset(examples, CFG))
  _batches(it, skip)
  state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores (JsonSave)
  expected = _batches(it, 6)  # crosses an epoch boundary for skip >= 1
  fresh = iter(make_dataset(examples, CFG))
  _batches(fresh, 1)  # a used iterator is overwritten by set_state, not advanced from
  fresh.set_state(state)
  _assert_same(_batches(fresh, 6), expected)


def test_loss_mask_selects_exactly_the_answer_and_end_of_turn(rows, tokenizer):
  templates = PromptTemplates()
  eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
  assert tokenizer.eos_token_id == eot
  for row in rows:
    ex = tokenize_row(row, tokenizer, CFG)
    synth, mask, n = ex["synth_tokens"], ex["loss_mask"], int(ex["synth_lengths"])
    answer = tokenizer.encode(row.answer.strip(), add_special_tokens=False)
    # The training sequence is what the chat template gives for the assistant's turn, cut
    # after its end-of-turn token.
    chat = tokenizer.apply_chat_template(
      templates.latent_synthesizer_messages(row.query)
      + [{"role": "assistant", "content": row.answer.strip()}],
      tokenize=True,
    )
    chat = list(chat["input_ids"] if hasattr(chat, "keys") else chat)
    assert list(synth[:n]) == chat[:n] and chat[n - 1] == eot
    assert np.all(synth[n:] == 0)
    # mask[t] = 1 <=> the logits at t predict a target token: exactly answer + end-of-turn.
    assert set(np.unique(mask)) <= {0.0, 1.0}
    targets = synth[1:][mask[:-1] == 1]
    assert list(targets) == answer + [eot], row
    assert mask.sum() == len(answer) + 1 and mask[-1] == 0
    first = int(np.argmax(mask))
    assert first == n - len(answer) - 2 and np.all(mask[first : n - 1] == 1)
    if "target_start" in ex:  # the loss window [target_start, target_start + A) of step.py
      assert int(ex["target_start"]) == first
      assert mask.sum() <= CFG.target_tokens
    # Branches: each context alone from position 0, no special tokens, zero padded.
    for r, ctx in enumerate(row.contexts):
      ids = tokenizer.encode(ctx, add_special_tokens=False)
      assert ex["branch_lengths"][r] == len(ids)
      assert list(ex["branch_tokens"][r, : len(ids)]) == ids
    assert np.all(ex["branch_lengths"][len(row.contexts) :] == 0)


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shares_interleave_to_the_one_process_batch(examples, process_count):
  """grain's ElasticIterator gives process p the rows p, p + P, ... of every global batch."""
  n = 7
  whole = _batches(iter(make_dataset(examples, CFG)), n)
  parts = [
    _batches(iter(make_dataset(examples, CFG, process_index=i, process_count=process_count)), n)
    for i in range(process_count)
  ]
  for step in range(n):
    for k in whole[step]:
      local = [p[step][k] for p in parts]
      assert all(len(x) == CFG.batch_size // process_count for x in local)
      interleaved = np.stack(local, axis=1).reshape(whole[step][k].shape)
      np.testing.assert_array_equal(interleaved, whole[step][k], err_msg=k)


def test_process_slices_resume_from_state(examples):
  """Each process's iterator state resumes its own share (multi-process checkpoints)."""
  it = iter(make_dataset(examples, CFG, process_index=1, process_count=2))
  _batches(it, 4)
  state = it.get_state()
  expected = _batches(it, 3)
  fresh = iter(make_dataset(examples, CFG, process_index=1, process_count=2))
  fresh.set_state(state)
  _assert_same(_batches(fresh, 3), expected)


def test_bad_process_split_and_empty_data_raise(examples):
  with pytest.raises(ValueError, match="not divisible"):
    make_dataset(examples, CFG, process_index=0, process_count=3)
  with pytest.raises(ValueError, match="no trainable examples"):
    make_dataset([], CFG)


# Rows that do not fit CFG's buckets, and the reasons they are counted under.
UNFIT = [
  (Row("Who?", "Ann", ("Ann was there. " * 40,)), "contexts:too_long"),
  (Row("Who?", "Ann", tuple(f"Fact {i}." for i in range(5))), "contexts:too_many"),
  (Row("Who?", "Ann " * 60, ("Ann was there.",)), "answer:too_long"),
  (Row("", "Ann", ("Ann was there.",)), "query:empty"),
]


def _with_unfit(rows):
  mixed = list(rows)
  for i, (row, _) in enumerate(UNFIT):
    mixed.insert(3 * i + 1, row)
  return mixed


def test_rows_tokenized_in_the_map_equal_pretokenized_examples(rows, tokenizer):
  """select_rows keeps the rows that fit (counting the others) and the pipeline's .map
  (TokenizeRow) then yields exactly the batches of the eagerly tokenized examples."""
  tokenize = TokenizeRow(tokenizer, CFG)
  kept, stats = select_rows(_with_unfit(rows), tokenize, stats=RowStats(valid=0))
  assert len(kept) == stats.valid == len(rows)
  assert dict(stats.skipped) == {reason: 1 for _, reason in UNFIT}
  assert [kept[i] for i in range(len(kept))] == list(rows)
  eager = tokenize_rows(rows, tokenizer, CFG).examples
  _assert_same(
    _batches(iter(make_dataset(kept, CFG, transform=tokenize)), 8),
    _batches(iter(make_dataset(eager, CFG)), 8),
  )


def test_worker_processes_same_batches_and_state_portable(rows, tokenizer):
  """Worker processes (grain mp_prefetch): the batches of the in-process pipeline, and a state
  that resumes with any worker count (grain's ElasticIterator keeps only the position)."""
  tokenize = TokenizeRow(tokenizer, CFG)
  kept, stats = select_rows(_with_unfit(rows), tokenize, worker_count=1)
  assert stats.valid == len(kept) == len(rows) and stats.num_skipped == len(UNFIT)
  in_process = _batches(iter(make_dataset(kept, CFG, transform=tokenize)), 6)
  workers = iter(make_dataset(kept, dataclasses.replace(CFG, worker_count=2), transform=tokenize))
  try:
    _assert_same(_batches(workers, 4), in_process[:4])
    state = json.loads(json.dumps(workers.get_state()))
  finally:
    workers.close()
  assert state == {"global_next_index": 4 * CFG.batch_size}
  resumed = iter(make_dataset(kept, CFG, transform=tokenize))
  resumed.set_state(state)
  _assert_same(_batches(resumed, 2), in_process[4:])


def test_checkpoint_state_of_the_previous_pipeline_resumes_exactly(examples):
  """Checkpoints written before the ElasticIterator hold {"next_index": global batches}."""
  it = iter(make_dataset(examples, CFG))
  _batches(it, 3)
  expected = _batches(it, 4)
  fresh = iter(make_dataset(examples, CFG))
  fresh.set_state(resume_state({"next_index": 3}, CFG))
  _assert_same(_batches(fresh, 4), expected)


def test_pipeline_config_rejects_negative_counts():
  with pytest.raises(ValueError, match="pipeline.worker_count=-1 must be >= 0"):
    PipelineConfig(worker_count=-1)
