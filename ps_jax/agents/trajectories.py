"""Fixed-trajectory mode: stored worker traces are re-prefilled into branch caches and
synthesised again, so a study can be re-scored (other methods, adapters, judger prompts)
without running the workers (the release's `gaia_sanity_eval`).

A stored agent (`agent_record`, JSON) holds its messages and, when it ran on a ps_jax model,
the token ids its cache held at the end (`token_ids`) and its branch slots in every memory
mode (`slots`). Re-prefilling those ids from position 0 with the frozen base model rebuilds the
live-captured branch (equal up to float rounding: tests/agents/test_judger.py). A record
without ids (a scripted agent, a trace from elsewhere) is re-rendered as the release does:
the chat template of the messages before its last assistant message (with the generation
prompt) followed by that message's tokens; `final_output` keeps the message, and
`full_prompt_output` the whole row (`each_turn_output` needs stored slots).

The case runners (MARBLE, GAIA) share `capture_workers` (records, branches and the record's
`workers` entry after the workers ran) and `rescored_record` (a record re-scored here).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ps_jax.agents.react import AgentTrace, ModelPolicy, Policy
from ps_jax.agents.session import MEMORY_MODES, AgentSession
from ps_jax.buckets import DEFAULT_LENGTH_BUCKETS, bucket
from ps_jax.cache.branches import BranchCaches, Branches
from ps_jax.generation import check_token_ids, encode_prompts, require_tokenizer
from ps_jax.model import Transformer
from ps_jax.workers import (  # pylint: disable=protected-access
  DEFAULT_BRANCH_BUCKETS,
  _prefill_rows,
  example_rows,
)


def agent_record(
  trace: AgentTrace, session: AgentSession | None = None, row: int = 0, **extra
) -> dict[str, Any]:
  """A JSON-able record of one agent: its trace and, given its session row, its cache's ids and
  branch slots per memory mode (what makes the re-prefill exact)."""
  record = {
    "messages": trace.messages,
    "answer": trace.answer,
    "final_output": trace.final_output,
    "stop_reason": trace.stop_reason,
    "steps": [
      {"output": s.output, "hallucinated_response": s.hallucinated_response, "calls": s.calls}
      for s in trace.steps
    ],
    "counts": dict(trace.counts),
    **extra,
  }
  if session is not None and session.turns[row]:
    record["token_ids"] = [int(t) for t in session.history[row]]
    record["slots"] = {m: session.branch_slots(row, m) for m in MEMORY_MODES}
  return record


def _rendered_row(tokenizer, record: Mapping[str, Any], mode: str) -> tuple[list[int], list[int]]:
  messages = list(record["messages"])
  last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
  if last is None:
    raise ValueError("the agent record has no assistant message to re-prefill")
  require_tokenizer(tokenizer, caller="branches_from_records", why="records without token_ids")
  prompt = encode_prompts(tokenizer, [messages[:last]])[0]
  output = list(tokenizer.encode(messages[last]["content"], add_special_tokens=False))
  if not output:
    raise ValueError("the agent record's last assistant message is empty")
  row = prompt + output
  if mode == "final_output":
    return row, list(range(len(prompt), len(row)))
  if mode == "full_prompt_output":
    return row, list(range(len(row)))
  raise ValueError(
    f"mode={mode!r} needs the record's stored slots (a trace from a ps_jax model run); "
    "records without token_ids serve final_output and full_prompt_output"
  )


def record_row(tokenizer, record: Mapping[str, Any], mode: str) -> tuple[list[int], list[int]]:
  """(token ids to prefill from position 0, the branch's slots in them) of one agent record."""
  if mode not in MEMORY_MODES:
    raise ValueError(f"mode={mode!r}; expected one of {MEMORY_MODES}")
  if record.get("token_ids") and record.get("slots"):
    row = [int(t) for t in record["token_ids"]]
    slots = [int(s) for s in record["slots"][mode]]
    if not slots or max(slots) >= len(row) or min(slots) < 0:
      raise ValueError(f"the record's {mode} slots lie outside its {len(row)} token ids")
    return row, slots
  return _rendered_row(tokenizer, record, mode)


def branches_from_records(
  model: Transformer,
  tokenizer,
  examples: Sequence[Sequence[Mapping[str, Any]]],
  mode: str = "final_output",
  *,
  branch_buckets: Sequence[int] = DEFAULT_BRANCH_BUCKETS,
  length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
) -> Branches:
  """Branches for `synthesize` / `run_judger`: examples[b] = example b's agent records (its
  branches, in order), each re-prefilled alone from position 0 and cut to its `mode` slots.
  Keys keep the positions they were computed at, as `capture_branches` returns them."""
  if not examples or any(not ex for ex in examples):
    raise ValueError("examples is empty or has an example without agents")
  groups = [len(ex) for ex in examples]
  rows, slots = [], []
  for b, ex in enumerate(examples):
    for r, record in enumerate(ex):
      row, s = record_row(tokenizer, record, mode)
      check_token_ids(row, model.config.vocab_size, what=f"example {b} agent {r}")
      rows.append(row)
      slots.append(s)
  limit = model.config.max_position_embeddings
  if max(len(r) for r in rows) > limit:
    raise ValueError(
      f"a stored agent row of {max(len(r) for r in rows)} tokens exceeds the model's "
      f"max_position_embeddings={limit}"
    )
  t = bucket(max(len(r) for r in rows), length_buckets, what="stored agent row (tokens)")
  tokens = np.zeros((len(rows), t), np.int32)
  for i, row in enumerate(rows):
    tokens[i, : len(row)] = row
  graphdef, params = nnx.split(model)
  k, v = _prefill_rows(
    graphdef, params, jnp.asarray(tokens), jnp.asarray([len(r) for r in rows], jnp.int32)
  )
  s_len = bucket(max(len(s) for s in slots), length_buckets, what="branch length (tokens)")
  r_len = bucket(max(groups), branch_buckets, what="number of branches")
  idx = np.zeros((len(rows), s_len), np.int32)
  for i, s in enumerate(slots):
    idx[i, : len(s)] = s
  flat = np.arange(len(rows))[:, None]
  where, present = example_rows(groups, r_len)
  lengths = np.array([len(s) for s in slots], np.int32)
  caches = BranchCaches(
    k=k[:, flat, idx][:, where],  # [L, B, R, S, K, H]
    v=v[:, flat, idx][:, where],
    lengths=jnp.asarray(np.where(present, lengths[where], 0), jnp.int32),
    positions=jnp.asarray(idx[where], jnp.int32),
    model_fingerprint=model.config.fingerprint,
  )
  token_ids = [[row[i] for i in s] for row, s in zip(rows, slots, strict=True)]
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


@dataclasses.dataclass
class CapturedWorkers:
  """What a case runner keeps of its workers: their records, their branches and the case
  record's `workers` entry."""

  agents: list[dict[str, Any]]  # `agent_record` per worker, in order
  branches: Branches  # one example: the workers' branches, in the same order
  record: dict[str, Any]  # the case record's "workers" entry
  capture_s: float  # the branch capture alone (live cut or re-prefill), wall time


def capture_workers(
  workers: Policy,
  traces: Sequence[AgentTrace],
  agent_ids: Sequence[str],
  *,
  model: Transformer,
  tokenizer,
  memory_mode: str,
  wall_s: float,
) -> CapturedWorkers:
  """Records and branches of one example's workers after `run_react`: live from the session's
  cache for a `ModelPolicy`, re-prefilled from the records (`branches_from_records`) for any
  other policy (e.g. scripted). `wall_s`: the workers' run time, kept in the record."""
  live = isinstance(workers, ModelPolicy)
  session = workers.session if live else None
  agents = [
    agent_record(t, session, n, agent_id=agent_id)
    for n, (t, agent_id) in enumerate(zip(traces, agent_ids, strict=True))
  ]
  start = time.perf_counter()
  if live:
    branches = workers.branches([len(agents)], memory_mode)
  else:
    branches = branches_from_records(model, tokenizer, [agents], memory_mode)
  capture_s = time.perf_counter() - start
  record = dict(
    policy=type(workers).__name__,
    memory_mode=memory_mode,
    branches_from="live cache" if live else "re-prefilled traces",
    agents=agents,
    turn_times=list(getattr(workers, "turn_times", [])),
    wall_s=wall_s,
  )
  return CapturedWorkers(agents, branches, record, capture_s)


def rescored_record(
  record: Mapping[str, Any], methods: Mapping[str, Any], wall_s: float
) -> dict[str, Any]:
  """A stored case record re-scored in fixed-trajectory mode: its `methods` replaced, its
  workers marked as re-prefilled, `rescored` set and `wall_s` the re-scoring's time."""
  workers = dict(record["workers"], branches_from="re-prefilled traces (fixed trajectory)")
  return dict(record, workers=workers, methods=methods, rescored=True, wall_s=wall_s)


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
  """One JSON record per line (e.g. per case: {"id", "agents": [agent_record, ...]})."""
  tmp = f"{os.fspath(path)}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  os.replace(tmp, path)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  out = []
  with open(path, encoding="utf-8") as f:
    for line, text in enumerate(f, 1):
      if text.strip():
        try:
          out.append(json.loads(text))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{line}: not JSON ({e})") from e
  return out
