"""grain input pipeline: rows -> tokenized, bucket-padded training examples -> batches.

An example holds the branch token ids [R, S] (each context prefilled alone from position 0),
the synthesizer tokens [T] (chat-templated latent prompt + answer + end-of-turn), a loss
mask [T] that selects the positions whose *next* token is a target token, and the first such
position (target_start: the loss window is [target_start, target_start + A)). Rows that cannot be
trained on (malformed, a branch or prompt longer than its bucket) are skipped and counted.
Order is deterministic by seed; the iterator state is checkpointable; each process reads
its own shard of every global batch.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import grain
import numpy as np

from ps_jax.data.rows import MalformedRow, Row, RowStats, validate
from ps_jax.prompts import PromptTemplates


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  batch_size: int = 4  # global batch (all processes)
  max_branches: int = 4  # R: branches are padded to this count
  branch_tokens: int = 64  # S: branch length bucket
  synth_tokens: int = 128  # T: synthesizer prompt + target
  target_tokens: int = 32  # A: answer + end-of-turn (the loss window)
  seed: int = 0
  shuffle: bool = True
  repeat: bool = True  # loop over epochs (training); False = one pass (evaluation)


@dataclasses.dataclass
class TokenizedSet:
  examples: list[dict[str, np.ndarray]]
  stats: RowStats


def tokenize_row(
  row: Row, tokenizer, cfg: PipelineConfig, templates: PromptTemplates = PromptTemplates()
) -> dict[str, np.ndarray]:
  """One training example; raises MalformedRow for a row that does not fit the buckets."""
  validate(row)
  if len(row.contexts) > cfg.max_branches:
    raise MalformedRow(
      "contexts", "too_many", f"{len(row.contexts)} branches > max_branches={cfg.max_branches}"
    )
  branch = np.zeros((cfg.max_branches, cfg.branch_tokens), np.int32)
  branch_lengths = np.zeros((cfg.max_branches,), np.int32)
  for r, ctx in enumerate(row.contexts):
    ids = tokenizer.encode(ctx, add_special_tokens=False)
    if len(ids) > cfg.branch_tokens:
      raise MalformedRow(
        "contexts",
        "too_long",
        f"contexts[{r}] has {len(ids)} tokens > branch_tokens={cfg.branch_tokens}",
      )
    branch[r, : len(ids)] = ids
    branch_lengths[r] = len(ids)
  prompt = _ids(
    tokenizer.apply_chat_template(
      templates.latent_synthesizer_messages(row.query), add_generation_prompt=True, tokenize=True
    )
  )
  target = tokenizer.encode(row.answer.strip(), add_special_tokens=False) + [tokenizer.eos_token_id]
  ids = prompt + target
  if len(target) > cfg.target_tokens:
    raise MalformedRow(
      "answer", "too_long", f"answer has {len(target)} tokens > target_tokens={cfg.target_tokens}"
    )
  if len(ids) > cfg.synth_tokens:
    raise MalformedRow(
      "answer",
      "too_long",
      f"prompt + answer have {len(ids)} tokens > synth_tokens={cfg.synth_tokens}",
    )
  synth = np.zeros((cfg.synth_tokens,), np.int32)
  synth[: len(ids)] = ids
  loss_mask = np.zeros((cfg.synth_tokens,), np.float32)
  loss_mask[len(prompt) - 1 : len(ids) - 1] = 1.0  # logits at t predict token t + 1
  return {
    "branch_tokens": branch,
    "branch_lengths": branch_lengths,
    "synth_tokens": synth,
    "synth_lengths": np.int32(len(ids)),
    "loss_mask": loss_mask,
    "target_start": np.int32(len(prompt) - 1),
  }


def _ids(encoded) -> list[int]:
  return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def tokenize_rows(
  rows: Sequence[Row],
  tokenizer,
  cfg: PipelineConfig,
  templates: PromptTemplates = PromptTemplates(),
  stats: RowStats | None = None,
) -> TokenizedSet:
  """Tokenizes every row, skipping (and counting) those that cannot be trained on."""
  stats = stats if stats is not None else RowStats()
  examples = []
  for row in rows:
    try:
      examples.append(tokenize_row(row, tokenizer, cfg, templates))
    except MalformedRow as e:
      stats.skip(e.reason)
      continue
    stats.valid += 1
  return TokenizedSet(examples, stats)


def make_dataset(
  examples: Sequence[dict[str, np.ndarray]],
  cfg: PipelineConfig,
  *,
  process_index: int = 0,
  process_count: int = 1,
) -> grain.IterDataset:
  """Batches of this process's share: each global batch is split evenly across processes."""
  if not examples:
    raise ValueError("no trainable examples (all rows were skipped?)")
  if cfg.batch_size % process_count:
    raise ValueError(
      f"batch_size={cfg.batch_size} is not divisible by the {process_count} processes"
    )
  ds = grain.MapDataset.source(list(examples))
  if cfg.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  if cfg.repeat:
    ds = ds.repeat()
  # Global batches first, then this process's contiguous slice of each: every process
  # steps through the same global order, so the global batch is independent of the count.
  ds = ds.batch(cfg.batch_size, drop_remainder=cfg.repeat)
  local = cfg.batch_size // process_count
  lo, hi = process_index * local, (process_index + 1) * local
  ds = ds.map(lambda batch: {k: v[lo:hi] for k, v in batch.items()})
  return ds.to_iter_dataset()


def skip_counts(stats: RowStats) -> dict[str, int]:
  return dict(collections.Counter(stats.skipped))
