"""grain input pipeline: rows -> tokenized, bucket-padded training examples -> batches.

An example holds the branch token ids [R, S] (each context prefilled alone from position 0),
the synthesizer tokens [T] (chat-templated latent prompt + answer + end-of-turn), a loss
mask [T] that selects the positions whose *next* token is a target token, and the first such
position (target_start: the loss window is [target_start, target_start + A)).

The pipeline (`make_dataset`) is a grain MapDataset: rows -> shuffle(seed) -> repeat ->
`.map(TokenizeRow)` (a grain MapTransform) -> grain's ElasticIterator, which shards each
global batch across JAX processes (grain.sharding.ShardByJaxProcess), batches, reads ahead in
`read_threads` threads (grain.ReadOptions) and, with `worker_count` > 0, tokenizes in that
many grain worker processes (mp_prefetch; 0 = in this process, the default: workers are
separate Python processes that take seconds to start and pay off when tokenization, not the
step, is the bottleneck). Order is deterministic by seed and does not depend on the number of
processes or workers; the iterator state is checkpointable and resumes with any of them.

Layouts. "cache" (the cache methods) is the example above. "text" (the trained text baseline,
`text_lora`) holds only synth_tokens [text_tokens]: the text-synthesizer prompt with the branch
texts pasted in (the same PromptTemplates the `text` method uses at inference) + answer +
end-of-turn, with the same loss_mask / target_start fields. A text example is made only from a
row that also fits the cache layout, so both layouts train on the same rows; a row whose text
prompt does not fit `text_tokens` is skipped as "text_prompt:too_long".

Rows that cannot be trained on (malformed, a branch or prompt longer than its bucket) are
skipped and counted: `select_rows` runs the same transform over all rows once, before
training, so the pipeline draws only rows that fit (every batch is full) and the skip counts
are known from the first step.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from ps_jax.data.rows import MalformedRow, Row, RowStats, validate
from ps_jax.prompts import PromptTemplates

_SCAN_CHUNK = 64  # rows per element of the select_rows pass (fewer round trips to workers)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  batch_size: int = 4  # global batch (all processes)
  max_branches: int = 4  # R: branches are padded to this count
  branch_tokens: int = 64  # S: branch length bucket
  synth_tokens: int = 128  # T: synthesizer prompt + target
  target_tokens: int = 32  # A: answer + end-of-turn (the loss window)
  # T_text: text layout's prompt (branch texts inside) + target; 0 = the cache layout's token
  # budget per example, max_branches * branch_tokens + synth_tokens
  text_tokens: int = 0
  seed: int = 0
  shuffle: bool = True
  repeat: bool = True  # loop over epochs (training); False = one pass of full batches (eval)
  worker_count: int = 0  # grain worker processes that tokenize; 0 = in this process
  worker_buffer_size: int = 2  # batches each worker prepares ahead
  read_threads: int = 1  # threads per process reading ahead (grain.ReadOptions.num_threads)
  prefetch_batches: int = 4  # batches read ahead per process (ReadOptions.prefetch_buffer_size)

  def __post_init__(self):
    for name in ("worker_count", "read_threads", "prefetch_batches"):
      if getattr(self, name) < 0:
        raise ValueError(f"pipeline.{name}={getattr(self, name)} must be >= 0")
    if self.worker_buffer_size < 1:
      raise ValueError(f"pipeline.worker_buffer_size={self.worker_buffer_size} must be >= 1")
    if self.text_tokens < 0:
      raise ValueError(f"pipeline.text_tokens={self.text_tokens} must be >= 0 (0 = default)")

  @property
  def text_length(self) -> int:
    """The text layout's sequence length (`text_tokens`, or its default)."""
    return self.text_tokens or self.max_branches * self.branch_tokens + self.synth_tokens

  def sequence_tokens(self, layout: str = "cache") -> int:
    """Padded tokens one example of `layout` puts through the model (branches + synthesizer,
    or the text sequence)."""
    check_layout(layout)
    if layout == "text":
      return self.text_length
    return self.max_branches * self.branch_tokens + self.synth_tokens


LAYOUTS = ("cache", "text")


def check_layout(layout: str) -> None:
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}")


@dataclasses.dataclass
class TokenizedSet:
  examples: list[dict[str, np.ndarray]]
  stats: RowStats


def tokenize_row(
  row: Row,
  tokenizer,
  cfg: PipelineConfig,
  templates: PromptTemplates = PromptTemplates(),
  layout: str = "cache",
) -> dict[str, np.ndarray]:
  """One training example of `layout` ("cache" or "text", see the module docstring); raises
  MalformedRow for a row that does not fit the buckets (a text example: those of both)."""
  check_layout(layout)
  example = _cache_example(row, tokenizer, cfg, templates)
  if layout == "text":
    return _text_example(row, tokenizer, cfg, templates)
  return example


def _target_ids(row: Row, tokenizer) -> list[int]:
  return tokenizer.encode(row.answer.strip(), add_special_tokens=False) + [tokenizer.eos_token_id]


def _synth_fields(prompt: list[int], target: list[int], length: int) -> dict[str, np.ndarray]:
  """synth_tokens [length] = prompt + target (right-padded) and its loss fields."""
  ids = prompt + target
  synth = np.zeros((length,), np.int32)
  synth[: len(ids)] = ids
  loss_mask = np.zeros((length,), np.float32)
  loss_mask[len(prompt) - 1 : len(ids) - 1] = 1.0  # logits at t predict token t + 1
  return {
    "synth_tokens": synth,
    "synth_lengths": np.int32(len(ids)),
    "loss_mask": loss_mask,
    "target_start": np.int32(len(prompt) - 1),
  }


def _text_example(row: Row, tokenizer, cfg: PipelineConfig, templates: PromptTemplates):
  """The text layout of a row (already checked against the cache layout)."""
  prompt = _ids(
    tokenizer.apply_chat_template(
      templates.text_synthesizer_messages(row.query, row.contexts),
      add_generation_prompt=True,
      tokenize=True,
    )
  )
  target = _target_ids(row, tokenizer)
  if len(prompt) + len(target) > cfg.text_length:
    raise MalformedRow(
      "text_prompt",
      "too_long",
      f"text prompt + answer have {len(prompt) + len(target)} tokens > "
      f"text_tokens={cfg.text_length}",
    )
  return _synth_fields(prompt, target, cfg.text_length)


def _cache_example(row: Row, tokenizer, cfg: PipelineConfig, templates: PromptTemplates):
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
  target = _target_ids(row, tokenizer)
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
  return {
    "branch_tokens": branch,
    "branch_lengths": branch_lengths,
    **_synth_fields(prompt, target, cfg.synth_tokens),
  }


def _ids(encoded) -> list[int]:
  return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def tokenize_rows(
  rows: Sequence[Row],
  tokenizer,
  cfg: PipelineConfig,
  templates: PromptTemplates = PromptTemplates(),
  stats: RowStats | None = None,
  layout: str = "cache",
) -> TokenizedSet:
  """Tokenizes every row, skipping (and counting) those that cannot be trained on."""
  stats = stats if stats is not None else RowStats()
  examples = []
  for row in rows:
    try:
      examples.append(tokenize_row(row, tokenizer, cfg, templates, layout))
    except MalformedRow as e:
      stats.skip(e.reason)
      continue
    stats.valid += 1
  return TokenizedSet(examples, stats)


class TokenizeRow(grain.transforms.Map):
  """grain MapTransform: Row -> training example of `layout` (`tokenize_row`). Picklable (the
  tokenizer travels to grain's worker processes); raises MalformedRow for a row that does not
  fit."""

  def __init__(
    self,
    tokenizer,
    cfg: PipelineConfig,
    templates: PromptTemplates = PromptTemplates(),
    layout: str = "cache",
  ):
    check_layout(layout)
    self.tokenizer = tokenizer
    self.cfg = cfg
    self.templates = templates
    self.layout = layout

  def map(self, element: Row) -> dict[str, np.ndarray]:
    return tokenize_row(element, self.tokenizer, self.cfg, self.templates, self.layout)


class _SkipReason(grain.transforms.Map):
  """The empty string for a row that `tokenize` accepts, else the reason it is skipped."""

  def __init__(self, tokenize: TokenizeRow):
    self.tokenize = tokenize

  def map(self, element: Row) -> str:
    try:
      self.tokenize.map(element)
    except MalformedRow as e:
      return e.reason
    return ""


class _Subset(Sequence):
  """rows[index[i]]: the rows `select_rows` kept, without copying them."""

  def __init__(self, rows: Sequence[Row], index: Sequence[int]):
    self.rows = rows
    self.index = np.asarray(index, np.int64)

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, i: int) -> Row:
    return self.rows[int(self.index[i])]


def _multiprocessing(worker_count: int, buffer_size: int) -> grain.MultiprocessingOptions | None:
  if not worker_count:
    return None
  from absl import flags  # pylint: disable=import-outside-toplevel

  # grain's worker start-up reads an absl flag; outside an absl app (tests, notebooks) the
  # flags are unparsed, which grain 0.2 treats as an error. Their defaults are what we want.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=buffer_size)


def select_rows(
  rows: Sequence[Row],
  tokenize: TokenizeRow,
  *,
  stats: RowStats | None = None,
  worker_count: int = 0,
) -> tuple[Sequence[Row], RowStats]:
  """(the rows `tokenize` accepts, in order; stats with the others counted by reason).

  One pass of the pipeline's own transform over every row, in `worker_count` grain worker
  processes (0 = this process). Every process of a multi-process run makes the same pass, so
  all of them draw from the same rows.
  """
  stats = stats if stats is not None else RowStats()
  ds = grain.MapDataset.source(rows).map(_SkipReason(tokenize))
  ds = ds.batch(_SCAN_CHUNK, batch_fn=list).to_iter_dataset(
    grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  )
  options = _multiprocessing(worker_count, 2)
  if options is not None:
    ds = ds.mp_prefetch(options)
  keep = []
  iterator = iter(ds)
  try:
    index = 0
    for chunk in iterator:
      for reason in chunk:
        if reason:
          stats.skip(reason)
        else:
          keep.append(index)
          stats.valid += 1
        index += 1
  finally:
    iterator.close()
  return (rows if len(keep) == len(rows) else _Subset(rows, keep)), stats


def make_dataset(
  elements: Sequence[Any],
  cfg: PipelineConfig,
  *,
  transform: grain.transforms.Map | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> grain.IterDataset:
  """Batches of this process's share of every global batch of `cfg.batch_size`.

  elements: examples, or rows with `transform=TokenizeRow(...)` (rows `select_rows` kept:
  a row that does not fit raises here). Sharding: grain.sharding.ShardByJaxProcess, or the
  given process_index/process_count. grain's ElasticIterator hands process p the elements
  p, p + P, ... of each global batch, so every process steps through the same global order
  and the global batch (up to the order of its rows) does not depend on the process count.
  Its state, {"global_next_index": elements read by all processes}, is the same on every
  process and resumes with any process or worker count. With repeat=False the dataset is one
  pass of full global batches (a remainder smaller than batch_size is left out), so every
  process gets the same number of batches: none runs out while another waits for it in a
  collective.

  A process reads and transforms only its own rows; the training loop joins the processes'
  batches into one global array with `ps_jax.distributed.global_batch`, and each process
  checkpoints its iterator's state (ps_jax.train.checkpoint).
  """
  if not len(elements):
    raise ValueError("no trainable examples (all rows were skipped?)")
  if process_index is None and process_count is None:
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  else:
    shard = grain.sharding.ShardOptions(process_index or 0, process_count or 1, True)
  if cfg.batch_size % shard.shard_count:
    raise ValueError(
      f"batch_size={cfg.batch_size} is not divisible by the {shard.shard_count} processes"
    )
  ds = grain.MapDataset.source(elements)
  if cfg.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  if cfg.repeat:
    ds = ds.repeat()
  else:
    ds = ds[: len(ds) // cfg.batch_size * cfg.batch_size]
  if transform is not None:
    ds = ds.map(transform)
  return grain.experimental.ElasticIterator(
    ds,
    cfg.batch_size,
    shard,
    read_options=grain.ReadOptions(
      num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch_batches
    ),
    multiprocessing_options=_multiprocessing(cfg.worker_count, cfg.worker_buffer_size),
  )


def resume_state(state: dict[str, Any], cfg: PipelineConfig) -> dict[str, Any]:
  """A checkpointed pipeline state in today's form. Checkpoints written before the pipeline
  used grain's ElasticIterator count global batches ({"next_index": n}); the order of the
  rows is unchanged, so the position converts exactly."""
  if "next_index" in state and "global_next_index" not in state:
    return {"global_next_index": int(state["next_index"]) * cfg.batch_size}
  return dict(state)


def skip_counts(stats: RowStats) -> dict[str, int]:
  return dict(collections.Counter(stats.skipped))
