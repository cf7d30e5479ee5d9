"""One GAIA task end to end, as the release's `toolcall` pipeline runs it.

1. N identical workers (the release: 3) run the ReAct loop on the release's worker prompt
   (`react.worker_messages`: "Target Question: ...", the attachment paths) with the tools
   search, visit, (PythonInterpreter), parse_file, batched as one session.
2. Their branches are captured once (`final_output`) and shared by the methods: live from the
   session cache for a model policy, re-prefilled from the traces otherwise.
3. The judger ("Task Summarizer") per method: the same tool system prompt, the release's
   summarizer prompt with the workers' final outputs as "[Sub-agent i]:" text, or
   "[provided through KV memory]" for cache methods; it may make one targeted tool call.
4. The prediction (`extract_answer_text` of the judger's answer) scored by the release's
   normalised exact match and by GAIA's official quasi-exact match (`ps_jax.agents.gaia`).

Offline, search/visit answer from the configured backend (replay store or local corpus; a miss
is an explicit, counted `[offline]` text); the prompts keep them, so they match the release.
`rescore_task` re-runs the judgers on a stored record (fixed-trajectory mode).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ps_jax.adapter import Adapter
from ps_jax.agents.gaia import GaiaTask, extract_answer_text, score_official, score_release
from ps_jax.agents.judger import judge_methods
from ps_jax.agents.protocol import system_prompt
from ps_jax.agents.react import Policy, ReactConfig, run_react, worker_messages
from ps_jax.agents.session import MEMORY_MODES
from ps_jax.agents.tools.registry import ToolRegistry
from ps_jax.agents.trajectories import (
  branches_from_records,
  capture_workers,
  rescored_record,
)
from ps_jax.synthesis import METHODS

FIXED_DATE = "2026-01-01"  # prompts do not change by the day (the release uses today's date)
LATENT_CONTEXT = "[provided through KV memory]"
SUMMARIZER = (
  "You are a Task Summarizer.\n\n"
  "Use the previous agents' contexts as reference. They may be provided as explicit text or "
  "through KV memory.\n\n"
  "Reason over their answers and evidence step by step, compare the candidate answers, and give "
  "the best possible final answer. If two or more agents give the same plausible answer, use it "
  "directly. If only one agent gives a plausible answer, consider whether its evidence fits the "
  "question instead of dismissing it just because it is a minority answer.\n\n"
  "Use tools only when the previous agents do not give any plausible direct answer, or when all "
  "candidate answers are clearly unsupported. If you use a tool, use only the listed tools, make "
  "one targeted check, and then answer.\n\n"
  "Content from Previous Agents:\n{contexts}\n\n"
  "Input Question:\n{question}\n{attachments}\n\n"
  "Guidelines:\n"
  "- prefer synthesizing prior agents over starting from scratch\n"
  "- if agents disagree, choose the best-supported answer, not necessarily the majority answer\n"
  "- if agents agree on a plausible answer, do not verify it with tools\n"
  "- if uncertain, still choose the most plausible answer from the prior agents' work\n"
  "- prefer a direct short candidate answer over refusals, tool traces, or generic explanations\n"
  "- do not output an empty response, markdown fence, tool schema, raw XML, or raw tool "
  "response\n"
  "- output only the final answer inside <answer>YOUR_FINAL_ANSWER</answer>\n\n"
  "Your response:"
)


def worker_contexts(outputs: Sequence[str]) -> str:
  """The text method's context: "[Sub-agent i]:\\n<final output>\\n\\n" per worker."""
  return "".join(f"[Sub-agent {i}]:\n{out}\n\n" for i, out in enumerate(outputs, 1)).strip()


def judger_messages(
  task: GaiaTask, registry: ToolRegistry, contexts: str, date: str = FIXED_DATE
) -> list[dict[str, str]]:
  """The Task Summarizer's conversation: the tool system prompt and its user prompt;
  `contexts` is `worker_contexts(...)` (text) or LATENT_CONTEXT (cache methods)."""
  files = [str(f) for f in task.files]
  attachments = "\nAttached files (use parse_file if needed):\n" + "\n".join(files) if files else ""
  user = SUMMARIZER.format(
    contexts=contexts.strip() or "[none yet]", question=task.question, attachments=attachments
  )
  return [
    {"role": "system", "content": system_prompt(registry.tools_block(), date)},
    {"role": "user", "content": user},
  ]


@dataclasses.dataclass(frozen=True)
class GaiaConfig:
  methods: tuple[str, ...] = ("text", "pcw", "parallel_synthesis")
  num_workers: int = 3  # the release's parallel_kv_num_parallel_agents
  max_steps: int = 5
  judger_max_steps: int = 5
  judger_max_new_tokens: int = 256
  memory_mode: str = "final_output"
  date: str = FIXED_DATE

  def __post_init__(self):
    bad = [m for m in self.methods if m not in METHODS]
    if bad or not self.methods:
      raise ValueError(f"methods={self.methods}: each one of {METHODS}")
    if self.memory_mode not in MEMORY_MODES:
      raise ValueError(f"memory_mode={self.memory_mode!r}; expected one of {MEMORY_MODES}")
    if self.num_workers < 1:
      raise ValueError(f"num_workers={self.num_workers}: expected >= 1")


def score(task: GaiaTask, answer: str) -> dict[str, Any]:
  """Both scorers on the judger's answer (None where the gold is withheld)."""
  pred = extract_answer_text(answer)
  if not task.scorable:
    return dict(prediction=pred, gold=None, correct=None, correct_official=None)
  return dict(
    prediction=pred,
    gold=task.gold,
    correct=bool(score_release(pred, task.gold)),
    correct_official=bool(score_official(pred, task.gold)),
  )


def _judge(task, agents, branches, *, model, tokenizer, config, registry, adapters, policies):
  text_context = worker_contexts([a["final_output"] for a in agents])
  return judge_methods(
    model,
    tokenizer,
    branches,
    registry,
    methods=config.methods,
    messages=lambda reads_text: judger_messages(
      task, registry, text_context if reads_text else LATENT_CONTEXT
    ),
    score=lambda answer, raw: score(task, answer),
    adapters=adapters,
    max_new_tokens=config.judger_max_new_tokens,
    max_steps=config.judger_max_steps,
    policies=policies,
  )


def run_task(
  task: GaiaTask,
  *,
  model,
  tokenizer,
  workers: Policy,
  registry: ToolRegistry,
  config: GaiaConfig = GaiaConfig(),
  adapters: Mapping[str, Adapter] | None = None,
  judger_policies: Mapping[str, Policy] | None = None,
) -> dict[str, Any]:
  """One task: workers with `registry`'s tools, then a judger per method, both scores.
  `workers`: a ModelPolicy (live capture) or any Policy (branches re-prefilled by `model`)."""
  start = time.perf_counter()
  conv = worker_messages(registry, task.question, [str(f) for f in task.files], date=config.date)
  traces = run_react(
    workers, registry, [conv] * config.num_workers, ReactConfig(max_steps=config.max_steps)
  )
  workers_s = time.perf_counter() - start
  captured = capture_workers(
    workers,
    traces,
    [f"sub_agent_{n + 1}" for n in range(len(traces))],
    model=model,
    tokenizer=tokenizer,
    memory_mode=config.memory_mode,
    wall_s=workers_s,
  )
  methods = _judge(
    task,
    captured.agents,
    captured.branches,
    model=model,
    tokenizer=tokenizer,
    config=config,
    registry=registry,
    adapters=dict(adapters or {}),
    policies=judger_policies,
  )
  return dict(
    task_id=task.task_id,
    level=task.level,
    files=[str(f) for f in task.files],
    workers=captured.record,
    methods=methods,
    wall_s=time.perf_counter() - start,
  )


def rescore_task(
  record: Mapping[str, Any],
  task: GaiaTask,
  *,
  model,
  tokenizer,
  registry: ToolRegistry,
  config: GaiaConfig = GaiaConfig(),
  adapters: Mapping[str, Adapter] | None = None,
  judger_policies: Mapping[str, Policy] | None = None,
) -> dict[str, Any]:
  """Fixed-trajectory mode: the judgers on a stored record's re-prefilled worker traces. The
  judger keeps its tools (as the release's sanity mode), served by `registry`."""
  if record["task_id"] != task.task_id:
    raise ValueError(f"record of task {record['task_id']!r} given with task {task.task_id!r}")
  start = time.perf_counter()
  agents = record["workers"]["agents"]
  branches = branches_from_records(model, tokenizer, [agents], config.memory_mode)
  methods = _judge(
    task,
    agents,
    branches,
    model=model,
    tokenizer=tokenizer,
    config=config,
    registry=registry,
    adapters=dict(adapters or {}),
    policies=judger_policies,
  )
  return rescored_record(record, methods, wall_s=time.perf_counter() - start)
