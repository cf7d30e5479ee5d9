"""Cache continuation for multi-turn agents, and capture of their branch caches.

An `AgentSession` holds one KV cache for a batch of agents (row n = agent n) and, per row, the
token ids its slots hold (`history`). A new turn gives each agent's full conversation as token
ids (the chat template rendered with the generation prompt); the session keeps the longest
common prefix of those ids and its history, rolls the row's end_index back to it (a cut
hallucinated `<tool_response>` or a re-tokenised assistant message is the only thing ever
re-prefilled), prefills the rest after it (`Transformer.prefill` continues a cache) and decodes.
The history is never re-prefilled: a continued turn costs its new tokens only. The release
re-prefills every turn; the logits are the same (tests/agents/test_session.py).

Slot = RoPE position here: every row starts at slot 0 and grows contiguously.

`capture_branches` cuts each agent's branch out of the session cache in the release's memory
modes and returns `Branches` for `ps_jax.synthesize` (re-encoding is the synthesizer's job).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ps_jax.buckets import DEFAULT_LENGTH_BUCKETS, bucket
from ps_jax.cache import KVCache
from ps_jax.cache.branches import BranchCaches, Branches
from ps_jax.generation import (
  DecodeState,
  SamplingConfig,
  _decode,
  check_count,
  check_token_ids,
  sample,
)
from ps_jax.model import DEFAULT_PREFILL, PrefillConfig, Transformer
from ps_jax.typing import Array
from ps_jax.workers import DEFAULT_BRANCH_BUCKETS, example_rows

MEMORY_MODES = ("final_output", "each_turn_output", "full_prompt_output")


@dataclasses.dataclass
class Turn:
  """Where one turn of one agent sits in its cache (slots = positions)."""

  prompt_start: int  # first slot prefilled this turn (after the reused prefix)
  output_start: int  # first generated token's slot
  output_len: int  # generated tokens kept (a trailing stop token excluded)


def grow_cache(cache: KVCache, max_len: int) -> KVCache:
  """The cache with its slot axis zero-padded to max_len (content and end_index unchanged)."""
  extra = max_len - cache.max_len
  if extra <= 0:
    return cache
  pad = ((0, 0), (0, 0), (0, extra), (0, 0), (0, 0))
  return cache.replace(k=jnp.pad(cache.k, pad), v=jnp.pad(cache.v, pad))


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "prefill", "all_logits"))
def _extend(graphdef, params, cache, tokens, lengths, rng, *, sampling, prefill, all_logits):
  """Prefills tokens [B, T] (right-padded, lengths [B], 0 = row untouched) after each row's
  end_index at positions end_index + t; samples each row's next token."""
  model = nnx.merge(graphdef, params)
  b, t = tokens.shape
  positions = cache.end_index[:, None] + jnp.arange(t)[None, :]
  hidden, cache = model.prefill(tokens, positions, cache, lengths=lengths, config=prefill)
  last = hidden[jnp.arange(b), jnp.maximum(lengths - 1, 0)]  # [B, D]
  rng, key = jax.random.split(rng)
  first = sample(model.logits(last), key, sampling)
  logits = model.logits(hidden) if all_logits else None  # [B, T, V]
  return DecodeState(first, cache.end_index, cache, rng), logits


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
  n = min(len(a), len(b))
  i = 0
  while i < n and a[i] == b[i]:
    i += 1
  return i


class AgentSession:
  """One growing KV cache for a batch of agents; see the module docstring."""

  def __init__(
    self,
    model: Transformer,
    num_agents: int,
    *,
    stop_ids: Sequence[int],
    sampling: SamplingConfig | None = None,
    rng: Array | None = None,
    length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
    prefill: PrefillConfig = DEFAULT_PREFILL,
    capacity: int | None = None,
  ):
    """capacity: initial cache slots (default the smallest length bucket); the cache grows by
    length buckets when a turn needs more, each new size compiling the prefill and decode once."""
    check_count("num_agents", num_agents)
    if not stop_ids:
      raise ValueError("stop_ids is empty: give at least one EOS id")
    self.model = model
    self.num_agents = num_agents
    self.stop_ids = [int(s) for s in stop_ids]
    self.sampling = sampling or SamplingConfig()
    self.rng = jax.random.key(0) if rng is None else rng
    self.length_buckets = tuple(length_buckets)
    self.prefill = prefill
    self.graphdef, self.params = nnx.split(model)
    slots = bucket(capacity or 1, self.length_buckets, what="capacity")
    self.cache = KVCache.init(model.config, num_agents, slots, model.dtype)
    self.history: list[list[int]] = [[] for _ in range(num_agents)]
    self.turns: list[list[Turn]] = [[] for _ in range(num_agents)]
    self.prefilled_tokens = np.zeros(num_agents, np.int64)  # tokens prefilled, all turns
    self.reprefilled_tokens = np.zeros(num_agents, np.int64)  # history tokens rolled back (dropped)
    self._state: DecodeState | None = None
    self._turn_start = np.zeros(num_agents, np.int64)  # [N] first slot prefilled by extend

  def extend(
    self, ids: Sequence[Sequence[int] | None], *, reserve: int = 0, return_logits: bool = False
  ) -> Array | None:
    """Makes row n hold ids[n] (None: row untouched) and samples each row's next token.

    Keeps the common prefix of ids[n] with the row's history, prefills the rest. `reserve`
    slots are kept free after the longest row (for decoding). With return_logits, returns
    the logits [B, T, V] of the prefilled tokens (row n's new tokens at [0, new_n)).
    """
    if len(ids) != self.num_agents:
      raise ValueError(f"{len(ids)} id lists for a session of {self.num_agents} agents")
    ends = np.asarray(self.cache.end_index).copy()
    deltas: list[list[int]] = []
    for n, row in enumerate(ids):
      if row is None:
        deltas.append([])
        continue
      row = [int(t) for t in row]
      if not row:
        raise ValueError(f"agent {n}: empty token ids")
      check_token_ids(row, self.model.config.vocab_size, what=f"agent {n} turn")
      keep = min(_common_prefix(self.history[n], row), len(row) - 1)  # >= 1 token to prefill
      self.reprefilled_tokens[n] += len(self.history[n]) - keep
      self.prefilled_tokens[n] += len(row) - keep
      self.history[n] = row
      ends[n] = keep
      deltas.append(row[keep:])
      for turn in self.turns[n]:  # a rolled-back output keeps only its surviving slots
        turn.output_len = max(0, min(turn.output_len, keep - turn.output_start))
    limit = self.model.config.max_position_embeddings
    longest = max(len(h) for h in self.history) + reserve
    if longest > limit:
      raise ValueError(
        f"an agent's context of {longest} tokens (turn + reserve={reserve}) exceeds the "
        f"model's max_position_embeddings={limit}"
      )
    t = bucket(max(max(len(d) for d in deltas), 1), self.length_buckets, what="turn length")
    need = int(max(ends.max() + t, longest))
    cache = self.cache.replace(end_index=jnp.asarray(ends, jnp.int32))
    if need > cache.max_len:
      cache = grow_cache(cache, bucket(need, self.length_buckets, what="agent context"))
    tokens = np.zeros((self.num_agents, t), np.int32)
    for n, d in enumerate(deltas):
      tokens[n, : len(d)] = d
    lengths = np.array([len(d) for d in deltas], np.int32)
    self._state, logits = _extend(
      self.graphdef,
      self.params,
      cache,
      jnp.asarray(tokens),
      jnp.asarray(lengths),
      self.rng,
      sampling=self.sampling,
      prefill=self.prefill,
      all_logits=return_logits,
    )
    self.rng = self._state.rng
    self.cache = self._state.cache
    self._turn_start = ends
    return logits

  def decode(self, active: Sequence[bool], max_new_tokens: int) -> list[list[int] | None]:
    """Decodes after the last `extend`; returns each active row's generated ids (a final stop
    token included). Inactive rows decode too (one batch) and are rolled back afterwards."""
    check_count("max_new_tokens", max_new_tokens)
    if self._state is None:
      raise ValueError("decode() needs a preceding extend()")
    before = np.asarray(self._state.cache.end_index)
    need = int(before.max()) + max_new_tokens
    cache = self._state.cache
    if need > cache.max_len:
      cache = grow_cache(cache, bucket(need, self.length_buckets, what="agent context"))
    out, num, cache = _decode(
      self.graphdef,
      self.params,
      cache,
      self._state.replace(cache=None),
      jnp.asarray(self.stop_ids, jnp.int32),
      None,
      None,
      max_new_tokens=max_new_tokens,
      sampling=self.sampling,
      lora_scale=0.0,
    )
    self._state = None
    out, num = np.asarray(out), np.asarray(num)
    active_np = np.asarray(active, bool)
    ends = np.where(active_np, np.asarray(cache.end_index), before)
    self.cache = cache.replace(end_index=jnp.asarray(ends, jnp.int32))
    results: list[list[int] | None] = []
    for n in range(self.num_agents):
      if not active_np[n]:
        results.append(None)
        continue
      gen = [int(x) for x in out[n, : num[n]]]
      kept = len(gen) - (1 if gen and gen[-1] in self.stop_ids else 0)
      self.turns[n].append(Turn(int(self._turn_start[n]), int(before[n]), kept))
      self.history[n] = self.history[n] + gen
      results.append(gen)
    return results

  def turn(
    self, ids: Sequence[Sequence[int] | None], max_new_tokens: int
  ) -> list[list[int] | None]:
    """extend + decode for the rows whose ids are not None."""
    self.extend(ids, reserve=max_new_tokens)
    return self.decode([x is not None for x in ids], max_new_tokens)

  def branch_slots(self, n: int, mode: str = "final_output") -> list[int]:
    """Cache slots of agent n's branch in a memory mode (see capture_branches)."""
    if mode not in MEMORY_MODES:
      raise ValueError(f"mode={mode!r}; expected one of {MEMORY_MODES}")
    turns = self.turns[n]
    if not turns:
      raise ValueError(f"agent {n} has no decoded turn to capture")
    last = turns[-1]
    if mode == "final_output":
      return list(range(last.output_start, last.output_start + last.output_len))
    if mode == "full_prompt_output":
      return list(range(0, last.output_start + last.output_len))
    return [s for t in turns for s in range(t.output_start, t.output_start + t.output_len)]


def capture_branches(
  session: AgentSession,
  tokenizer,
  groups: Sequence[int],
  mode: str = "final_output",
  *,
  branch_buckets: Sequence[int] = DEFAULT_BRANCH_BUCKETS,
  length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
) -> Branches:
  """Branches for `synthesize`: agents grouped into examples (groups[b] consecutive agents form
  example b's branches), each branch the agent's slots in `mode`:

    final_output        the last turn's generated tokens (the release's default);
    each_turn_output    every turn's generated tokens, in order;
    full_prompt_output  the whole last prompt (system, question, trajectory) plus its output.

  Keys keep the positions they were computed at (= their slots); the synthesizer re-encodes
  them to [0, L). each_turn_output's turns therefore become contiguous there (the release
  keeps the gaps between turns; a deviation). An empty branch (a turn that produced only a
  stop token) is an error, as in encode_branches.
  """
  if sum(groups) != session.num_agents:
    raise ValueError(
      f"groups {list(groups)} do not cover the session's {session.num_agents} agents"
    )
  slots = [session.branch_slots(n, mode) for n in range(session.num_agents)]
  for n, s in enumerate(slots):
    if not s:
      raise ValueError(f"agent {n}: its {mode} branch is empty (no generated token kept)")
  s_len = bucket(max(len(s) for s in slots), length_buckets, what="branch length (tokens)")
  r = bucket(max(groups), branch_buckets, what="number of branches")
  idx = np.zeros((session.num_agents, s_len), np.int32)
  for n, s in enumerate(slots):
    idx[n, : len(s)] = s
  k = session.cache.k[:, np.arange(session.num_agents)[:, None], idx]  # [L, N, S, K, H]
  v = session.cache.v[:, np.arange(session.num_agents)[:, None], idx]
  rows, present = example_rows(groups, r)
  lengths = np.array([len(s) for s in slots], np.int32)
  caches = BranchCaches(
    k=k[:, rows],
    v=v[:, rows],
    lengths=jnp.asarray(np.where(present, lengths[rows], 0), jnp.int32),
    positions=jnp.asarray(idx[rows], jnp.int32),
    model_fingerprint=session.model.config.fingerprint,
  )
  token_ids = [[session.history[n][i] for i in s] for n, s in enumerate(slots)]
  texts = [
    tokenizer.decode(t, skip_special_tokens=True) if tokenizer is not None else ""
    for t in token_ids
  ]
  nested_ids, nested_texts, start = [], [], 0
  for count in groups:
    nested_ids.append(token_ids[start : start + count])
    nested_texts.append(texts[start : start + count])
    start += count
  return Branches(token_ids=nested_ids, texts=nested_texts, caches=caches)
