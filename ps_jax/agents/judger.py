"""The judger (the release's synthesizer of agent workflows): its own ReAct loop over the workers'
branches, ending in the final answer.

Per method (`ps_jax.synthesis.METHOD_TABLE`):
- cache methods (`pcw`, `parallel_synthesis`, ...): the branches are re-encoded, mapped and
  merged once (`synthesis.PrefixBuilder`, the same path as `synthesize`); every judger turn
  renders its chat and prefills it *after* that latent prefix, at positions Lmax, Lmax+1, ...,
  through the adapter's LoRA where the method uses one;
- text methods (`text`, `text_lora`): the caller puts the branch texts into the judger's prompt
  (see `conversations` of `run_judger`); turns run on the plain prompt (text_lora: with LoRA).
The judger may call tools as any ReAct agent (`run_react`); the release's GAIA judger is told
to make at most "one targeted check", MARBLE's is shown no tool.

TTFT of a judger run, as the release measures it: cache preparation (re-encode + mapper +
merge; 0 for text methods) plus the first turn's prefill and first token, device-synchronised,
compilation excluded. Later turns' times are kept in `turn_ttft_s`.

Deviation from the release: the release passes the same HF `DynamicCache` object as the latent
prefix to every judger turn, and the forward pass extends it in place, so from turn 2 on the
"fixed" prefix also holds turn 1's prompt and output KV, at positions that overlap the new
turn's. Here caches are values: every turn reads the same unchanged prefix (tested in
tests/agents/test_judger.py), i.e. the release's intended behaviour. Only judger runs with a
tool call (more than one turn) are affected. Like the release, each judger turn re-prefills
its own conversation (the prefix is not re-prefilled).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ps_jax.adapter import Adapter
from ps_jax.agents.react import AgentTrace, Message, Policy, ReactConfig, run_react
from ps_jax.agents.tools.registry import ToolRegistry
from ps_jax.agents.trajectories import agent_record
from ps_jax.buckets import DEFAULT_LENGTH_BUCKETS
from ps_jax.cache.branches import Branches
from ps_jax.generation import (
  SamplingConfig,
  check_count,
  decode_texts,
  encode_prompts,
  generate_ids,
  require_tokenizer,
  stop_ids_for,
)
from ps_jax.model import DEFAULT_PREFILL, PrefillConfig, Transformer

# The synthesis module's own prefix and adapter helpers, so the judger reads the branches
# exactly as `synthesize` does.
from ps_jax.synthesis import METHOD_TABLE, METHODS, PrefixBuilder, adapter_parts, check_caches


class JudgerPolicy:
  """A `Policy` for `run_react`: judger b (row b) reads example b's branches.

  Greedy decoding. `prefix`, `lmax` and `cache_prepare_s` are set for cache methods (None / 0
  for text methods). Every call records its turn's prompt ids and prefill + first-token time.
  """

  def __init__(
    self,
    model: Transformer,
    tokenizer,
    branches: Branches,
    method: str,
    *,
    adapter: Adapter | None = None,
    max_new_tokens: int = 256,
    length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
    prefill: PrefillConfig = DEFAULT_PREFILL,
  ):
    if method not in METHODS:
      raise ValueError(f"method={method!r}; expected one of {METHODS}")
    check_count("max_new_tokens", max_new_tokens)
    require_tokenizer(tokenizer, caller="JudgerPolicy", why="judger turns are chat-templated text")
    self.model, self.tokenizer, self.branches, self.method = model, tokenizer, branches, method
    self.max_new_tokens = max_new_tokens
    self.length_buckets, self.prefill = length_buckets, prefill
    self.stop_ids = stop_ids_for(model, tokenizer)
    spec = METHOD_TABLE[method]
    self.reads_cache = spec.reads == "cache"
    self.mapper, self.lora, self.lora_scale = adapter_parts(adapter, method, model)
    self.prefix = self.lmax = None
    self.cache_prepare_s = 0.0
    if self.reads_cache:
      check_caches(model, branches.caches)
      builder = PrefixBuilder.create(model.config, self.mapper, spec.reencode)
      (self.prefix, self.lmax), self.cache_prepare_s = builder.timed(branches.caches)
    self.turn_ttft_s: list[float] = []  # per turn: prefill + first token (prefix excluded)
    self.turn_prompt_ids: list[list[list[int]]] = []  # per turn, per row
    self.prompt_tokens = np.zeros(branches.batch_size, np.int64)  # first turn's, per row
    self.generated_tokens = np.zeros(branches.batch_size, np.int64)  # all turns, per row

  def reset(self, num_agents: int) -> None:
    if num_agents != self.branches.batch_size:
      raise ValueError(
        f"{num_agents} judger conversations for {self.branches.batch_size} examples of branches"
      )
    self.turn_ttft_s, self.turn_prompt_ids = [], []
    self.generated_tokens[:] = 0

  def __call__(self, conversations, active):
    # Every row runs (the prefix is batched per example); inactive rows are discarded.
    ids = encode_prompts(self.tokenizer, [list(c) for c in conversations])
    result = generate_ids(
      self.model,
      ids,
      max_new_tokens=self.max_new_tokens,
      stop_ids=self.stop_ids,
      sampling=SamplingConfig(),
      prefix=self.prefix,
      position_offsets=None if self.lmax is None else np.asarray(self.lmax),
      lora=self.lora,
      lora_scale=self.lora_scale,
      length_buckets=self.length_buckets,
      prefill=self.prefill,
    )
    if not self.turn_ttft_s:
      self.prompt_tokens = np.asarray(result.prompt_lengths, np.int64)
    self.turn_ttft_s.append(float(result.prefill_s))
    self.turn_prompt_ids.append(ids)
    self.generated_tokens += np.where(np.asarray(active), result.num_tokens, 0)
    texts = decode_texts(self.tokenizer, result, self.stop_ids)
    return [t if on else None for t, on in zip(texts, active, strict=True)]


@dataclasses.dataclass
class JudgerResult:
  method: str
  traces: list[AgentTrace]  # one judger per example
  answers: list[str]  # each judger's answer (`<answer>` content, else its last message)
  raw: list[str]  # each judger's final output (what the MARBLE scorer reads)
  ttft_s: float  # cache_prepare_s + the first turn's prefill and first token
  cache_prepare_s: float  # re-encode + mapper + merge (0 for text methods)
  turn_ttft_s: list[float]  # per judger turn, prefix preparation excluded
  prompt_tokens: list[int]  # per example, the first turn's judger prompt
  generated_tokens: list[int]  # per example, all turns


def run_judger(
  model: Transformer,
  tokenizer,
  branches: Branches,
  conversations: Sequence[Sequence[Message]],
  method: str,
  registry: ToolRegistry,
  *,
  adapter: Adapter | None = None,
  max_new_tokens: int = 256,
  react: ReactConfig | None = None,  # None: the release's 5 steps
  length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
  prefill: PrefillConfig = DEFAULT_PREFILL,
  policy: Policy | None = None,
) -> JudgerResult:
  """Runs one judger per example of `branches` (conversations[b]: its system + user messages,
  built for `method`: branch texts inside for text methods, none for cache methods).

  `policy` replaces the model's judger (e.g. a `ScriptedPolicy` in tests); the TTFT fields are
  then 0.
  """
  if len(conversations) != branches.batch_size:
    raise ValueError(
      f"{len(conversations)} judger conversations for {branches.batch_size} examples"
    )
  judger = (
    JudgerPolicy(
      model,
      tokenizer,
      branches,
      method,
      adapter=adapter,
      max_new_tokens=max_new_tokens,
      length_buckets=length_buckets,
      prefill=prefill,
    )
    if policy is None
    else None
  )
  traces = run_react(policy or judger, registry, conversations, react or ReactConfig())
  turns = judger.turn_ttft_s if judger is not None else []
  prepare = judger.cache_prepare_s if judger is not None else 0.0
  n = branches.batch_size
  return JudgerResult(
    method=method,
    traces=traces,
    answers=[t.answer for t in traces],
    raw=[t.final_output for t in traces],
    ttft_s=prepare + (turns[0] if turns else 0.0),
    cache_prepare_s=prepare,
    turn_ttft_s=list(turns),
    prompt_tokens=[int(x) for x in (judger.prompt_tokens if judger else np.zeros(n))],
    generated_tokens=[int(x) for x in (judger.generated_tokens if judger else np.zeros(n))],
  )


def judge_methods(
  model: Transformer,
  tokenizer,
  branches: Branches,
  registry: ToolRegistry,
  *,
  methods: Sequence[str],
  messages: Callable[[bool], Sequence[Message]],
  score: Callable[[str, str], Any],
  adapters: Mapping[str, Adapter],
  max_new_tokens: int,
  max_steps: int,
  policies: Mapping[str, Policy] | None = None,
) -> dict[str, dict[str, Any]]:
  """The case runners' judging step: one judger per method over one example's `branches`.

  messages(reads_text): the judger's conversation, with the branch texts for text methods or
  the latent placeholder for cache methods; score(answer, raw): the benchmark's score of the
  judger's answer and final output. Per method: score, raw, the judger's record, TTFTs, token
  counts, whether its adapter was trained, wall time.
  """
  out = {}
  for method in methods:
    conversation = messages(METHOD_TABLE[method].reads == "text")
    start = time.perf_counter()
    result = run_judger(
      model,
      tokenizer,
      branches,
      [conversation],
      method,
      registry,
      adapter=adapters.get(method),
      max_new_tokens=max_new_tokens,
      react=ReactConfig(max_steps=max_steps),
      policy=(policies or {}).get(method),
    )
    out[method] = dict(
      score=score(result.answers[0], result.raw[0]),
      raw=result.raw[0],
      judger=agent_record(result.traces[0]),
      ttft_s=result.ttft_s,
      cache_prepare_s=result.cache_prepare_s,
      turn_ttft_s=result.turn_ttft_s,
      prompt_tokens=result.prompt_tokens[0],
      generated_tokens=result.generated_tokens[0],
      adapter="trained" if method in adapters else "none",
      wall_s=time.perf_counter() - start,
    )
  return out
