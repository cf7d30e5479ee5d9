"""The ReAct loop of the release (`toolcall/react_agent.py`) over a pluggable policy.

Per step, for every agent still running: the policy writes the next assistant message; it is
stripped and cut at the first `<tool_response>` (a hallucinated observation); every
`<tool_call>` block is parsed and run, each result sent back as a user message
`<tool_response>\\n...\\n</tool_response>` (malformed calls and tool errors too, as text), and
the agent continues. Without a tool call the agent stops: its answer is the first `<answer>`
of the message, else the whole message. When the step budget is spent on a tool call, the
release stops with the last tool response as the final output (`force_final_answer=True`
instead asks once more for an answer, without tools).

Policies: `policy.reset(num_agents)`, then `policy(conversations, active) -> list[str | None]`
(one message per active agent). `ModelPolicy` runs a ps_jax model with per-agent caches that
carry across turns (`AgentSession`); `ScriptedPolicy` replays fixed strings (tests).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import jax

from ps_jax.agents.protocol import (
  cut_at_tool_response,
  extract_answer,
  parse_tool_calls,
  system_prompt,
  tool_response_message,
  worker_prompt,
)
from ps_jax.agents.session import AgentSession, capture_branches
from ps_jax.agents.tools.registry import ToolOutput, ToolRegistry
from ps_jax.buckets import DEFAULT_LENGTH_BUCKETS
from ps_jax.generation import SamplingConfig, encode_prompts, require_tokenizer, stop_ids_for
from ps_jax.model import DEFAULT_PREFILL, PrefillConfig, Transformer

Message = dict[str, str]
FORCE_FINAL = (
  "You have used all your tool steps. Do not call tools. Give the final answer now, only "
  "inside <answer>...</answer>."
)


class Policy(Protocol):
  def reset(self, num_agents: int) -> None: ...

  def __call__(
    self, conversations: Sequence[Sequence[Message]], active: Sequence[bool]
  ) -> list[str | None]: ...


class ScriptedPolicy:
  """A fake model: agent n's k-th turn is scripts[n][k] ("" once its script runs out)."""

  def __init__(self, scripts: Sequence[Sequence[str]]):
    self.scripts = [list(s) for s in scripts]
    self.calls: list[int] = []
    self.seen: list[list[list[Message]]] = []  # conversations each agent was shown per turn

  def reset(self, num_agents: int) -> None:
    if num_agents != len(self.scripts):
      raise ValueError(f"{len(self.scripts)} scripts for {num_agents} agents")
    self.calls = [0] * num_agents
    self.seen = [[] for _ in range(num_agents)]

  def __call__(self, conversations, active):
    out: list[str | None] = []
    for n, (conv, on) in enumerate(zip(conversations, active, strict=True)):
      if not on:
        out.append(None)
        continue
      self.seen[n].append([dict(m) for m in conv])
      k = self.calls[n]
      self.calls[n] += 1
      out.append(self.scripts[n][k] if k < len(self.scripts[n]) else "")
    return out


class ModelPolicy:
  """A ps_jax model behind the chat template; each agent's cache carries across its turns."""

  def __init__(
    self,
    model: Transformer,
    tokenizer,
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
    prefill: PrefillConfig = DEFAULT_PREFILL,
    capacity: int | None = None,  # initial cache slots per agent (see AgentSession)
  ):
    require_tokenizer(tokenizer, caller="ModelPolicy", why="turns are chat-templated text")
    self.model, self.tokenizer = model, tokenizer
    self.max_new_tokens = max_new_tokens
    self.sampling = SamplingConfig(temperature, top_p)
    self.seed = seed
    self.length_buckets, self.prefill, self.capacity = length_buckets, prefill, capacity
    self.stop_ids = stop_ids_for(model, tokenizer)
    self.session: AgentSession | None = None

  def reset(self, num_agents: int) -> None:
    self.session = AgentSession(
      self.model,
      num_agents,
      stop_ids=self.stop_ids,
      sampling=self.sampling,
      rng=jax.random.key(self.seed),
      length_buckets=self.length_buckets,
      prefill=self.prefill,
      capacity=self.capacity,
    )

  def __call__(self, conversations, active):
    ids = [
      encode_prompts(self.tokenizer, [list(c)])[0] if on else None
      for c, on in zip(conversations, active, strict=True)
    ]
    outs = self.session.turn(ids, self.max_new_tokens)
    return [
      None
      if o is None
      else self.tokenizer.decode([t for t in o if t not in self.stop_ids], skip_special_tokens=True)
      for o in outs
    ]

  def branches(self, groups: Sequence[int], mode: str = "final_output"):
    """The agents' branch caches after a run (see session.capture_branches)."""
    return capture_branches(self.session, self.tokenizer, groups, mode)


@dataclasses.dataclass(frozen=True)
class ReactConfig:
  max_steps: int = 5  # the release's max_tool_steps
  force_final_answer: bool = False  # release: False (budget spent -> last tool response)


@dataclasses.dataclass
class StepRecord:
  output: str  # the assistant message as kept (stripped, cut at a hallucinated response)
  hallucinated_response: bool
  calls: list[dict[str, Any]]  # name, arguments, parsed_by, status, response


@dataclasses.dataclass
class AgentTrace:
  messages: list[Message]
  steps: list[StepRecord] = dataclasses.field(default_factory=list)
  answer: str = ""
  final_output: str = ""  # what a text synthesizer reads for this agent (release semantics)
  stop_reason: str = ""  # "answer" | "no_tool_call" | "budget" | "forced_answer"
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def worker_messages(
  registry: ToolRegistry, question: str, files: Sequence[str] = (), *, date: str | None = None
) -> list[Message]:
  """The release's worker conversation: tool system prompt + target question (+ files)."""
  return [
    {"role": "system", "content": system_prompt(registry.tools_block(), date)},
    {"role": "user", "content": worker_prompt(question, files)},
  ]


def _run_call(registry: ToolRegistry, call) -> ToolOutput:
  if call.error is not None:
    return ToolOutput(
      f"Tool call error: {call.error}. Call a tool as <tool_call>\n"
      '{"name": "tool_name", "arguments": {...}}\n</tool_call>',
      "malformed",
    )
  return registry.call(call.name, call.arguments)


def run_react(
  policy: Policy,
  registry: ToolRegistry,
  conversations: Sequence[Sequence[Message]],
  config: ReactConfig = ReactConfig(),
) -> list[AgentTrace]:
  """Runs every agent's loop in lockstep (one policy call per step for all running agents)."""
  if config.max_steps < 1:
    raise ValueError(f"max_steps={config.max_steps}: expected >= 1")
  n = len(conversations)
  traces = [AgentTrace(messages=[dict(m) for m in c]) for c in conversations]
  active = [True] * n
  policy.reset(n)
  for step in range(1, config.max_steps + 1):
    outs = policy([t.messages for t in traces], active)
    for i, (trace, text) in enumerate(zip(traces, outs, strict=True)):
      if not active[i]:
        continue
      text, hallucinated = cut_at_tool_response(text or "")
      if hallucinated:
        trace.counts["hallucinated_response"] += 1
      trace.messages.append({"role": "assistant", "content": text})
      calls = parse_tool_calls(text)
      record = StepRecord(text, hallucinated, [])
      trace.steps.append(record)
      if calls:
        for call in calls:
          out = _run_call(registry, call)
          trace.counts["tool_calls"] += 1
          trace.counts[out.status] += 1
          record.calls.append(
            dict(
              name=call.name,
              arguments=call.arguments,
              parsed_by=call.how,
              status=out.status,
              response=out.text,
            )
          )
          trace.messages.append(tool_response_message(out.text))
        if step == config.max_steps:
          active[i] = False
          trace.stop_reason = "budget"
          trace.final_output = trace.messages[-1]["content"]
          trace.answer = extract_answer(trace.final_output) or trace.final_output
        continue
      active[i] = False
      answer = extract_answer(text)
      trace.stop_reason = "answer" if answer is not None else "no_tool_call"
      trace.answer = answer if answer is not None else text
      trace.final_output = text
    if not any(active):
      break
  if config.force_final_answer:
    forced = [t.stop_reason == "budget" for t in traces]
    if any(forced):
      for t, f in zip(traces, forced, strict=True):
        if f:
          t.messages.append({"role": "user", "content": FORCE_FINAL})
      outs = policy([t.messages for t in traces], forced)
      for t, f, text in zip(traces, forced, outs, strict=True):
        if f:
          text, hallucinated = cut_at_tool_response(text or "")
          if hallucinated:
            t.counts["hallucinated_response"] += 1
          t.messages.append({"role": "assistant", "content": text})
          t.steps.append(StepRecord(text, hallucinated, []))
          t.stop_reason = "forced_answer"
          t.final_output = text
          answer = extract_answer(text)
          t.answer = answer if answer is not None else text
  return traces
