"""Branches from workers (decoded by the frozen base model) or from fixed texts.

Both routes keep, per branch, exactly the KV of the branch's own tokens (a worker's prompt KV
is dropped: its output tokens already attended to it) together with the RoPE positions those
keys were computed at; the synthesizer re-encodes them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ps_jax.buckets import DEFAULT_LENGTH_BUCKETS, bucket
from ps_jax.cache import KVCache
from ps_jax.cache.branches import BranchCaches, Branches, gather_slots
from ps_jax.generation import (
  SamplingConfig,
  check_count,
  check_token_ids,
  encode_prompts,
  generate_ids,
  require_tokenizer,
  stop_ids_for,
)
from ps_jax.model import Transformer
from ps_jax.prompts import PromptTemplates
from ps_jax.typing import Array

DEFAULT_BRANCH_BUCKETS = (1, 2, 4, 8)


def run_workers(
  model: Transformer,
  tokenizer,
  prompts: Sequence[str] | Sequence[Sequence[str]],
  num_branches: int = 3,
  max_new_tokens: int = 256,
  rng: Array | None = None,
  *,
  temperature: float = 0.6,
  top_p: float = 0.95,
  templates: PromptTemplates = PromptTemplates(),
  branch_buckets: Sequence[int] = DEFAULT_BRANCH_BUCKETS,
  length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
) -> Branches:
  """Decodes the workers of every example together and returns their Branches.

  prompts[b] is either one question (its worker prompt is prefilled once and sampled
  num_branches times) or a list of per-branch questions (prefilled as a batch). A trailing
  stop token is not part of a branch.
  """
  check_count("num_branches", num_branches)
  check_count("max_new_tokens", max_new_tokens)
  sampling = SamplingConfig(temperature, top_p)
  if not prompts:
    raise ValueError("prompts is empty")
  shared = all(isinstance(p, str) for p in prompts)
  if shared:
    questions, per_row = list(prompts), num_branches
    branches_per_example = [num_branches] * len(prompts)
  else:
    if any(isinstance(p, str) or not p for p in prompts):
      raise ValueError(
        "prompts must be all questions (str) or all non-empty lists of per-branch questions"
      )
    questions = [q for p in prompts for q in p]
    per_row, branches_per_example = 1, [len(p) for p in prompts]
  _check_branch_count(branches_per_example, branch_buckets)
  require_tokenizer(
    tokenizer,
    caller="run_workers",
    why="the worker prompts are text in a chat template and branch outputs are decoded to text",
  )
  ids = encode_prompts(tokenizer, [templates.worker_messages(q) for q in questions])
  stops = stop_ids_for(model, tokenizer)
  result = generate_ids(
    model,
    ids,
    max_new_tokens=max_new_tokens,
    stop_ids=stops,
    sampling=sampling,
    rng=rng,
    num_samples=per_row,
    length_buckets=length_buckets,
  )
  kept = result.num_tokens.copy()
  ends_with_stop = np.array(
    [
      n > 0 and int(row[n - 1]) in stops
      for row, n in zip(result.tokens, result.num_tokens, strict=True)
    ]
  )
  kept[ends_with_stop] -= 1
  token_ids = [[int(t) for t in row[:n]] for row, n in zip(result.tokens, kept, strict=True)]
  texts = [tokenizer.decode(t, skip_special_tokens=True) for t in token_ids]
  # Generated token j of a row sits in cache slot prompt_length + j, at that position.
  return _assemble(
    model,
    result.cache.k,
    result.cache.v,
    starts=result.prompt_lengths,
    lengths=kept,
    token_ids=token_ids,
    texts=texts,
    branches_per_example=branches_per_example,
    branch_buckets=branch_buckets,
    length_buckets=length_buckets,
  )


def encode_branches(
  model: Transformer,
  tokenizer,
  examples: Sequence[Sequence[str | Sequence[int]]],
  *,
  keep_last: int | None = None,
  prefixes: Sequence[Sequence[int]] | None = None,
  branch_buckets: Sequence[int] = DEFAULT_BRANCH_BUCKETS,
  length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
) -> Branches:
  """Fixed-text branches: each branch (a string or token ids) prefilled alone from position 0
  by the base model. keep_last=E keeps only each branch's last E tokens (at their positions).

  prefixes[b] (token ids, e.g. example b's chat-templated worker prompt) is prefilled before
  each branch of example b and then dropped, as `run_workers` drops a worker's prompt: the
  branch keys sit at positions P_b, P_b + 1, ... and have attended to the prefix, the layout
  of a worker's output after its prompt.
  """
  if not examples:
    raise ValueError("examples is empty")
  if keep_last is not None:
    check_count("keep_last", keep_last)
  if prefixes is not None and len(prefixes) != len(examples):
    raise ValueError(f"{len(prefixes)} prefixes for {len(examples)} examples")
  counts = [len(ex) for ex in examples]
  _check_branch_count(counts, branch_buckets)
  rows: list[list[int]] = []
  prefix_lengths: list[int] = []
  for b, ex in enumerate(examples):
    prefix = [] if prefixes is None else [int(t) for t in prefixes[b]]
    check_token_ids(prefix, model.config.vocab_size, what=f"prefixes[{b}]")
    for r, branch in enumerate(ex):
      if isinstance(branch, str):
        require_tokenizer(
          tokenizer,
          caller="encode_branches",
          why=f"example {b} branch {r} is text (give it as token ids, or the tokenizer)",
        )
      ids = (
        list(tokenizer.encode(branch, add_special_tokens=False))
        if isinstance(branch, str)
        else [int(t) for t in branch]
      )
      if not ids:
        raise ValueError(f"example {b} branch {r} is empty")
      check_token_ids(ids, model.config.vocab_size, what=f"example {b} branch {r}")
      rows.append(prefix + ids)
      prefix_lengths.append(len(prefix))
  lengths = np.array([len(r) for r in rows], np.int32)
  s = bucket(int(lengths.max()), length_buckets, what="branch length (tokens)")
  tokens = np.zeros((len(rows), s), np.int32)
  for i, r in enumerate(rows):
    tokens[i, : len(r)] = r
  graphdef, params = nnx.split(model)
  k, v = _prefill_rows(graphdef, params, jnp.asarray(tokens), jnp.asarray(lengths))
  starts = np.asarray(prefix_lengths, np.int32)
  if keep_last is not None:
    starts = np.maximum(lengths - keep_last, starts)
  kept = lengths - starts
  token_ids = [r[st:] for r, st in zip(rows, starts, strict=True)]
  texts = (
    [tokenizer.decode(t, skip_special_tokens=True) for t in token_ids]
    if tokenizer is not None
    else ["" for _ in token_ids]
  )
  return _assemble(
    model,
    k,
    v,
    starts=starts,
    lengths=kept,
    token_ids=token_ids,
    texts=texts,
    branches_per_example=counts,
    branch_buckets=branch_buckets,
    length_buckets=length_buckets,
  )


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _prefill_rows(graphdef, params, tokens, lengths):
  """k, v [L, N, S, K, H] of each row prefilled alone from position 0 (no adapter)."""
  model = nnx.merge(graphdef, params)
  n, s = tokens.shape
  cache = KVCache.init(model.config, n, s, model.dtype)
  positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (n, s))
  _, cache = model.prefill(tokens, positions, cache, lengths=lengths)  # chunked, as generation
  return cache.k, cache.v


def branch_caches_from_tokens(model: Transformer, tokens: Array, lengths: Array) -> BranchCaches:
  """Fixed-text BranchCaches from bucket-padded branch tokens [B, R, S] and lengths [B, R].

  Each branch is prefilled alone from position 0 by the frozen base model (no adapter, no
  gradient). Pure: the training step calls it under jit.
  """
  b, r, s = tokens.shape
  cache = KVCache.init(model.config, b * r, s, model.dtype)
  _, cache = model.hidden_states(
    tokens.reshape(b * r, s), None, cache, lengths=lengths.reshape(b * r), read_cache=False
  )
  k, v = jax.lax.stop_gradient((cache.k, cache.v))  # [L, B*R, S, K, H]
  shape = (k.shape[0], b, r, s, *k.shape[3:])
  return BranchCaches(
    k=k.reshape(shape),
    v=v.reshape(shape),
    lengths=lengths.astype(jnp.int32),
    positions=jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, r, s)),
    model_fingerprint=model.config.fingerprint,
  )


def _check_branch_count(counts: Sequence[int], branch_buckets: Sequence[int]) -> None:
  for b, n in enumerate(counts):
    if n == 0:
      raise ValueError(f"example {b} has zero branches")
    if n > max(branch_buckets):
      raise ValueError(
        f"example {b} has {n} branches, above the configured maximum "
        f"{max(branch_buckets)} (branch_buckets)"
      )


def example_rows(counts: Sequence[int], num_branches: int) -> tuple[np.ndarray, np.ndarray]:
  """(rows, present), both [B, R]: the flat row (branches of all examples, in order) that
  holds example b's branch r, 0 where example b has fewer than R branches (present False)."""
  row_of = np.full((len(counts), num_branches), -1, np.int32)
  start = 0
  for ex, count in enumerate(counts):
    row_of[ex, :count] = np.arange(start, start + count)
    start += count
  present = row_of >= 0
  return np.where(present, row_of, 0), present


def _assemble(
  model,
  k,
  v,
  *,
  starts,
  lengths,
  token_ids,
  texts,
  branches_per_example,
  branch_buckets,
  length_buckets,
) -> Branches:
  """Cuts each flat row's branch slots out of k, v [L, N, S_in, K, H] into [B, R, S] layout."""
  s = bucket(max(int(lengths.max()), 1), length_buckets, what="branch length (tokens)")
  r = bucket(max(branches_per_example), branch_buckets, what="number of branches")
  rows, present = example_rows(branches_per_example, r)
  starts_j = jnp.asarray(starts, jnp.int32)
  k_rows = gather_slots(k, starts_j, s)[:, rows]  # [L, B, R, S, K, H]
  v_rows = gather_slots(v, starts_j, s)[:, rows]
  caches = BranchCaches(
    k=k_rows,
    v=v_rows,
    lengths=jnp.asarray(np.where(present, np.asarray(lengths)[rows], 0), jnp.int32),
    positions=jnp.asarray(np.asarray(starts)[rows][..., None] + np.arange(s), jnp.int32),
    model_fingerprint=model.config.fingerprint,
  )
  nested_ids, nested_texts, i = [], [], 0
  for n in branches_per_example:
    nested_ids.append(token_ids[i : i + n])
    nested_texts.append(texts[i : i + n])
    i += n
  return Branches(token_ids=nested_ids, texts=nested_texts, caches=caches)
