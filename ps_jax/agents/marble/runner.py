"""One MARBLE case end to end, as the release's `marble_db` pipeline runs it.

1. The environment (`setup_case`): a fresh `sysbench` database, the case's init SQL,
   pg_stat_statements reset, ps_jax's own anomaly triggers, the settle sleep.
2. The 5 role agents (agent1..agent5, one per candidate root cause; the release's fixed-profile
   plan: each agent's task is its profile, no planner call, no chat) run their ReAct loops with
   `query_db`, batched as one session (one policy call per step for all running agents; the
   release runs them one after another against the same database, so an agent's queries show in
   pg_stat_statements for the next ones; here they interleave step by step).
3. Their branches are captured once (`final_output` by default) and shared by the methods:
   live from the session's cache for a model policy, re-prefilled from the traces
   (`trajectories.branches_from_records`) otherwise.
4. The judger runs per method (`run_judger`): its empty system prompt and the release's user
   prompt (agents' outputs as text, or "[provided through KV memory]"), up to 5 turns.
5. `score_case` (the release's label scorer) per method; TTFT per worker turn and per method.

The returned record is JSON (saved per case by launch.agent) and carries every worker's trace
and cache ids, so `rescore_case` re-runs the judgers on it without workers or database
(fixed-trajectory mode).

Worker turn TTFT: the wall time of the turn's prefill and first token (the session's extend,
device-synchronised); a turn that compiled a new program is flagged `compiled` and left out of
the summary's medians.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from ps_jax.adapter import Adapter
from ps_jax.agents import session as session_lib
from ps_jax.agents.judger import judge_methods
from ps_jax.agents.marble.cases import MarbleCase
from ps_jax.agents.marble.env import SETTLE_S, query_tool, setup_case
from ps_jax.agents.marble.scoring import score_case
from ps_jax.agents.react import ModelPolicy, Policy, ReactConfig, run_react
from ps_jax.agents.session import MEMORY_MODES
from ps_jax.agents.tools.query_db import QueryDB
from ps_jax.agents.tools.registry import ToolRegistry
from ps_jax.agents.trajectories import (
  branches_from_records,
  capture_workers,
  rescored_record,
)
from ps_jax.generation import encode_prompts
from ps_jax.synthesis import METHODS

# --- the release's prompts (marble_db/prompts.py) ---

ROLE_PLAY = (
  'You are "{agent_id}": "{profile}"\n'
  "As a role-playing agent, you embody a dynamic character with unique traits, motivations, "
  "and skills.\n"
  "Your goal is to engage not only with users but also with other agents in the environment. "
  "Collaborate, compete, or form alliances as you navigate through immersive storytelling and "
  "challenges. Interact meaningfully with fellow agents, contributing to the evolving narrative "
  "and responding creatively to their actions. Maintain consistency with your character's "
  "background and personality, and be prepared to adapt to the evolving dynamics of the "
  "scenario.\n"
  "Remember, your responses should enhance the experience and encourage user engagement while "
  "enriching interactions with other agents."
)
DB_TOOL_SYSTEM = (
  "You are a database diagnosis assistant with tool-use capability.\n"
  "Current date: {date}\n\n"
  "You may call one or more tools to solve the assigned database diagnosis task.\n"
  "Tool signatures are listed below:\n<tools>\n{tools}\n</tools>\n\n"
  "When you need a tool, output exactly one tool call using XML tags:\n"
  '<tool_call>\n{{"name": "tool_name", "arguments": {{...}}}}\n</tool_call>\n\n'
  "Tool outputs will be returned in:\n<tool_response>\n...tool output...\n</tool_response>\n\n"
  "When you are ready to finish, answer directly in plain text or JSON.\n"
  "    Never fabricate tool outputs."
)
# The release's f-string keeps the source's 4-space indent on the inner lines.
WORKER_USER = (
  "Agent ID: {agent_id}\n"
  "    Task: {task}\n\n"
  "    Use the available tools if needed, then provide your final response in plain text.\n"
  "    Start your final response with exactly:\n"
  "    This is the response from {agent_id}:"
)
JUDGER_ANALYSIS = (
  "You are the final database diagnosis judger.\n"
  "You are given the prior agents' investigations, including their findings, cited evidence, "
  "and any reported tool-use results.\n"
  "Your job is to inspect and summarize those investigations carefully, and produce the best "
  "final diagnosis.\n\n"
  "Work in this order:\n"
  "1. inspect the current task background and the allowed label set\n"
  "2. inspect what each previous agent investigated and what evidence they found\n"
  "3. choose the most strongly supported root causes and summarize why"
)
JUDGER_OUTPUT = (
  "Decide which root causes are best supported by the agents' findings.\n"
  "Before the final answer, write a short Rationale based on the previous agents' diagnoses.\n"
  "Briefly summarize what the agents found, compare the competing explanations, and choose the "
  "root causes that seem most likely overall.\n"
  "Use the agents' SQL/tool evidence when it is available, but do not require perfect evidence "
  "for every selected label.\n"
  "If some findings are weak or conflicting, make the best diagnosis from the strongest "
  "available signals rather than returning no answer.\n"
  "Do not invent row counts, lock states, SQL queries, tables, indexes, or agent conclusions "
  "that were not in the prior investigations.\n"
  "Return the final selected root-cause labels inside exactly one <answer>...</answer> block.\n"
  "Inside the answer block, output only a JSON array of labels.\n"
  "The answer array must contain at most {n} labels.\n"
  "If only one label is well supported, return a one-element array.\n"
  "Choose labels only from this list:\n{labels}\n"
  "Do not put justification inside the <answer> block.\n"
  "Do not wrap the answer in Markdown fences.\n"
  "Do not output more than one <answer> block."
)
LATENT_INVESTIGATIONS = "[provided through KV memory]"
_TASK_CUTS = ("The planner should", "Agents can also chat", "Please make the decision after")
FIXED_DATE = "2026-01-01"  # prompts do not change by the day (the release uses today's date)


def worker_messages(
  agent_id: str, profile: str, registry: ToolRegistry, date: str = FIXED_DATE
) -> list[dict[str, str]]:
  """The release's worker conversation: role-play + DB tool system prompt; the profile as task."""
  system = (
    ROLE_PLAY.format(agent_id=agent_id, profile=profile.strip())
    + "\n\n"
    + DB_TOOL_SYSTEM.format(date=date, tools=registry.tools_block())
  )
  user = WORKER_USER.format(agent_id=agent_id, task=profile.strip())
  return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def results_summary(agent_ids: Sequence[str], outputs: Sequence[str]) -> str:
  """The release's text context: "Agent Results Summary:" then each agent's final output."""
  text = "Agent Results Summary:\n"
  for agent_id, out in zip(agent_ids, outputs, strict=True):
    text += f"\nAgent {agent_id}:\n{out}\n"
  return text


def judger_messages(case: MarbleCase, investigations: str) -> list[dict[str, str]]:
  """The judger's conversation: an empty system prompt (as the release) and its user prompt;
  `investigations` is `results_summary(...)` (text) or LATENT_INVESTIGATIONS (cache)."""
  task = case.content.strip()
  cut = min([task.find(m) for m in _TASK_CUTS if m in task] or [len(task)])
  task = task[:cut].strip()
  labels = ", ".join(f"'{lab}'" for lab in case.labels)
  n = max(1, case.number_of_labels_pred)
  parts = [f"Task:\n{task}"] if task else []
  parts += [
    "Current Objective:\nIdentify the most likely root cause labels behind the current "
    "database performance issue.",
    f"Allowed Labels:\n{labels}",
    f"Decision Rule:\nSelect at most {n} labels, and only choose labels that are supported by "
    "the previous agents' findings.",
  ]
  user = (
    f"{JUDGER_ANALYSIS}\n\n"
    + "\n\n".join(parts)
    + f"\n\nPrevious Agent Investigations:\n{investigations}\n\n"
    + JUDGER_OUTPUT.format(n=n, labels=labels)
  )
  return [{"role": "system", "content": ""}, {"role": "user", "content": user}]


# --- running a case ---


@dataclasses.dataclass(frozen=True)
class MarbleConfig:
  methods: tuple[str, ...] = ("text", "pcw", "parallel_synthesis")
  max_steps: int = 5  # per worker, the release's max_tool_steps
  judger_max_steps: int = 5
  judger_max_new_tokens: int = 256
  memory_mode: str = "final_output"
  settle_s: float = SETTLE_S
  lock_hold_s: float | None = None  # None: the lock is held until the next reset (see triggers)
  date: str = FIXED_DATE

  def __post_init__(self):
    bad = [m for m in self.methods if m not in METHODS]
    if bad or not self.methods:
      raise ValueError(f"methods={self.methods}: each one of {METHODS}")
    if self.memory_mode not in MEMORY_MODES:
      raise ValueError(f"memory_mode={self.memory_mode!r}; expected one of {MEMORY_MODES}")


class TimedModelPolicy(ModelPolicy):
  """ModelPolicy that records each turn's prefill + first token time (`turn_times`)."""

  def reset(self, num_agents: int) -> None:
    super().reset(num_agents)
    self.turn_times: list[dict[str, Any]] = []

  def __call__(self, conversations, active):
    ids = [
      encode_prompts(self.tokenizer, [list(c)])[0] if on else None
      for c, on in zip(conversations, active, strict=True)
    ]
    compiles = session_lib._extend._cache_size()  # pylint: disable=protected-access
    start = time.perf_counter()
    self.session.extend(ids, reserve=self.max_new_tokens)
    jax.block_until_ready(self.session.cache)
    ttft = time.perf_counter() - start
    compiled = session_lib._extend._cache_size() > compiles  # pylint: disable=protected-access
    outs = self.session.decode([x is not None for x in ids], self.max_new_tokens)
    self.turn_times.append(
      dict(
        ttft_s=ttft,
        turn_s=time.perf_counter() - start,
        compiled=bool(compiled),
        agents=int(sum(x is not None for x in ids)),
      )
    )
    return [
      None
      if o is None
      else self.tokenizer.decode([t for t in o if t not in self.stop_ids], skip_special_tokens=True)
      for o in outs
    ]


def _worker_registry(pg) -> ToolRegistry:
  if pg is None:
    tool = QueryDB(None, unavailable_reason="no live database (fixed-trajectory re-scoring)")
  else:
    tool = query_tool(pg)
  return ToolRegistry([tool.tool()])


def _judge(
  case: MarbleCase,
  worker_agents: Sequence[Mapping[str, Any]],
  branches,
  *,
  model,
  tokenizer,
  config: MarbleConfig,
  registry: ToolRegistry,
  adapters: Mapping[str, Adapter],
  judger_policies: Mapping[str, Policy] | None,
) -> dict[str, Any]:
  ids = [a["agent_id"] for a in worker_agents]
  text_context = results_summary(ids, [a["final_output"] for a in worker_agents])
  return judge_methods(
    model,
    tokenizer,
    branches,
    registry,
    methods=config.methods,
    messages=lambda reads_text: judger_messages(
      case, text_context if reads_text else LATENT_INVESTIGATIONS
    ),
    score=lambda answer, raw: score_case(raw, case),
    adapters=adapters,
    max_new_tokens=config.judger_max_new_tokens,
    max_steps=config.judger_max_steps,
    policies=judger_policies,
  )


def run_case(
  case: MarbleCase,
  *,
  model,
  tokenizer,
  workers: Policy,
  pg,
  config: MarbleConfig = MarbleConfig(),
  adapters: Mapping[str, Adapter] | None = None,
  judger_policies: Mapping[str, Policy] | None = None,
) -> dict[str, Any]:
  """One case: environment on `pg` (a started LocalPostgres), workers, judgers, scores.

  `workers` is a ModelPolicy (live branch capture; a TimedModelPolicy also times each turn) or
  any Policy, e.g. ScriptedPolicy (branches re-prefilled from its traces by `model`).
  `judger_policies[method]` replaces that method's model judger (tests).
  """
  adapters = dict(adapters or {})
  start = time.perf_counter()
  setup = setup_case(pg, case, settle_s=config.settle_s, lock_hold_s=config.lock_hold_s)
  registry = _worker_registry(pg)
  agent_ids = [a.agent_id for a in case.agents]
  convs = [worker_messages(a.agent_id, a.profile, registry, config.date) for a in case.agents]
  t0 = time.perf_counter()
  traces = run_react(workers, registry, convs, ReactConfig(max_steps=config.max_steps))
  workers_s = time.perf_counter() - t0
  captured = capture_workers(
    workers,
    traces,
    agent_ids,
    model=model,
    tokenizer=tokenizer,
    memory_mode=config.memory_mode,
    wall_s=workers_s,
  )
  methods = _judge(
    case,
    captured.agents,
    captured.branches,
    model=model,
    tokenizer=tokenizer,
    config=config,
    registry=registry,
    adapters=adapters,
    judger_policies=judger_policies,
  )
  return dict(
    task_id=case.task_id,
    root_causes=list(case.root_causes),
    number_of_labels_pred=case.number_of_labels_pred,
    setup=dict(dataclasses.asdict(setup), total_s=setup.total_s),
    workers=dict(captured.record, capture_s=captured.capture_s),
    methods=methods,
    wall_s=time.perf_counter() - start,
  )


def rescore_case(
  record: Mapping[str, Any],
  case: MarbleCase,
  *,
  model,
  tokenizer,
  config: MarbleConfig = MarbleConfig(),
  adapters: Mapping[str, Adapter] | None = None,
  judger_policies: Mapping[str, Policy] | None = None,
) -> dict[str, Any]:
  """Fixed-trajectory mode: the judgers of `config.methods` on a stored case record's worker
  traces (re-prefilled; no workers, no database: the judger's query_db answers "unavailable")."""
  if int(record["task_id"]) != case.task_id:
    raise ValueError(f"record of task {record['task_id']} given with case {case.task_id}")
  agents = record["workers"]["agents"]
  start = time.perf_counter()
  branches = branches_from_records(model, tokenizer, [agents], config.memory_mode)
  methods = _judge(
    case,
    agents,
    branches,
    model=model,
    tokenizer=tokenizer,
    config=config,
    registry=_worker_registry(None),
    adapters=dict(adapters or {}),
    judger_policies=judger_policies,
  )
  return rescored_record(record, methods, wall_s=time.perf_counter() - start)
