"""One MARBLE case end to end on a live PostgreSQL: scripted role agents querying the database,
branches re-prefilled from their traces, a judger per method, the release's scorer; and the
fixed-trajectory re-scoring of the stored record."""

from __future__ import annotations

import json
import os

import pytest

from configs import agent as agent_config
from ps_jax.agents import ScriptedPolicy, postgres
from ps_jax.agents.marble import load_cases
from ps_jax.agents.marble.runner import (
  LATENT_INVESTIGATIONS,
  MarbleConfig,
  judger_messages,
  rescore_case,
  results_summary,
  run_case,
  worker_messages,
)
from ps_jax.agents.tools import ToolRegistry
from ps_jax.experiment import build_model

PROBE = (
  '<tool_call>\n{"name": "query_db", "arguments": {"sql": "SELECT relname, n_dead_tup FROM '
  "pg_stat_user_tables WHERE relname = 'marble_vacuum'\"}}\n</tool_call>"
)


@pytest.fixture(scope="module")
def pg():
  reason = postgres.available()
  if reason is not None:
    if os.environ.get("PS_JAX_REQUIRE_POSTGRES", "") not in ("", "0"):
      pytest.fail(f"PS_JAX_REQUIRE_POSTGRES is set but PostgreSQL is unavailable: {reason}")
    pytest.skip(f"PostgreSQL unavailable: {reason}")
  with postgres.LocalPostgres() as cluster:
    yield cluster


@pytest.fixture(scope="module")
def tiny_model():
  return build_model(agent_config.get_config("tiny").model)


@pytest.fixture(scope="module")
def vacuum_case():
  return next(c for c in load_cases() if c.task_id == 6)


def test_prompts_follow_the_release(vacuum_case):
  case = vacuum_case
  assert case.root_causes == ("VACUUM",)
  registry = ToolRegistry()
  msgs = worker_messages("agent3", case.agents[2].profile, registry)
  assert msgs[0]["content"].startswith('You are "agent3": "')
  assert (
    "database diagnosis assistant" in msgs[0]["content"] and "<answer>" not in msgs[0]["content"]
  )
  assert msgs[1]["content"].startswith("Agent ID: agent3\n    Task: ")
  assert msgs[1]["content"].endswith("This is the response from agent3:")
  assert "Current date: 2026-01-01" in msgs[0]["content"]  # fixed: replays stay byte-equal
  latent = judger_messages(case, LATENT_INVESTIGATIONS)
  assert latent[0] == {"role": "system", "content": ""}
  user = latent[1]["content"]
  assert "[provided through KV memory]" in user and "The planner should" not in user
  assert "Select at most 2 labels" in user and "'INSERT_LARGE_DATA', 'LOCK_CONTENTION'" in user
  text = judger_messages(case, results_summary(["agent1", "agent2"], ["a", "b"]))[1]["content"]
  assert "Agent Results Summary:\n\nAgent agent1:\na\n\nAgent agent2:\nb\n" in text


def test_run_case_and_fixed_trajectory_rescore(pg, tiny_model, vacuum_case):
  model, tokenizer = tiny_model
  case = vacuum_case
  scripts = [[f"This is the response from agent{i}: nothing unusual."] for i in range(1, 6)]
  scripts[2] = [PROBE, "This is the response from agent3: marble_vacuum has many dead tuples."]
  judgers = {"text": ScriptedPolicy([['Rationale: agent3.\n<answer>["VACUUM"]</answer>']])}
  config = MarbleConfig(judger_max_new_tokens=4, judger_max_steps=1, settle_s=0.0)
  record = run_case(
    case,
    model=model,
    tokenizer=tokenizer,
    workers=ScriptedPolicy(scripts),
    pg=pg,
    config=config,
    judger_policies=judgers,
  )
  record = json.loads(json.dumps(record))  # what launch.agent stores
  agents = record["workers"]["agents"]
  assert [a["agent_id"] for a in agents] == [f"agent{i}" for i in range(1, 6)]
  call = agents[2]["steps"][0]["calls"][0]
  assert call["name"] == "query_db" and call["status"] == "ok"
  assert "marble_vacuum" in call["response"]
  dead = int(call["response"].split("'marble_vacuum', ")[1].split(")")[0])
  assert dead > 1000  # the VACUUM trigger's deleted rows are visible to the agent
  assert record["workers"]["branches_from"] == "re-prefilled traces"
  assert record["setup"]["triggers_s"].keys() == {"VACUUM"}
  methods = record["methods"]
  assert methods["text"]["score"]["correct"] is True
  assert methods["text"]["score"]["predicted_root_causes"] == ["VACUUM"]
  for m in ("pcw", "parallel_synthesis"):
    assert methods[m]["ttft_s"] > 0 and methods[m]["cache_prepare_s"] > 0
    assert len(methods[m]["turn_ttft_s"]) == 1 and methods[m]["generated_tokens"] >= 1
    assert methods[m]["judger"]["messages"][1]["content"].count(LATENT_INVESTIGATIONS) == 1
    assert methods[m]["adapter"] == "none"
  # Fixed trajectory: no workers, no database; the same branches give the same judgers.
  again = rescore_case(record, case, model=model, tokenizer=tokenizer, config=config)
  assert again["rescored"] and again["workers"]["agents"] == agents
  for m in ("pcw", "parallel_synthesis"):
    assert again["methods"][m]["raw"] == methods[m]["raw"]
  assert "<answer>" not in again["methods"]["text"]["raw"]  # the model's judger this time
  with pytest.raises(ValueError, match="record of task 6 given with case 7"):
    rescore_case(record, load_cases()[6], model=model, tokenizer=tokenizer, config=config)


def test_gaia_files_task_end_to_end(tmp_path, tiny_model):
  from ps_jax.agents import gaia_runner  # pylint: disable=import-outside-toplevel
  from ps_jax.agents.gaia import gaia_files_tasks  # pylint: disable=import-outside-toplevel
  from ps_jax.agents.tools import default_registry  # pylint: disable=import-outside-toplevel

  model, tokenizer = tiny_model
  task = gaia_files_tasks(tmp_path, 1, 0)[0]
  path = str(task.files[0])
  read = (
    f'<tool_call>\n{{"name": "parse_file", "arguments": {{"files": ["{path}"]}}}}\n</tool_call>'
  )
  scripts = [[read, f"The total is <answer>{task.gold}</answer>"], ["<answer>0</answer>"]]
  judgers = {"text": ScriptedPolicy([[f"<answer>{task.gold}</answer>"]])}
  config = gaia_runner.GaiaConfig(
    num_workers=2, judger_max_new_tokens=4, judger_max_steps=1, methods=("text", "pcw")
  )
  registry = default_registry()
  record = gaia_runner.run_task(
    task,
    model=model,
    tokenizer=tokenizer,
    workers=ScriptedPolicy(scripts),
    registry=registry,
    config=config,
    judger_policies=judgers,
  )
  call = record["workers"]["agents"][0]["steps"][0]["calls"][0]
  assert call["name"] == "parse_file" and call["status"] == "ok"
  assert record["workers"]["agents"][0]["answer"] == task.gold
  assert record["methods"]["text"]["score"] == dict(
    prediction=task.gold, gold=task.gold, correct=True, correct_official=True
  )
  text_prompt = record["methods"]["text"]["judger"]["messages"][1]["content"]
  assert f"[Sub-agent 1]:\nThe total is <answer>{task.gold}</answer>" in text_prompt
  assert "[Sub-agent 2]:\n<answer>0</answer>" in text_prompt and path in text_prompt
  pcw = record["methods"]["pcw"]
  assert "[provided through KV memory]" in pcw["judger"]["messages"][1]["content"]
  assert pcw["ttft_s"] > 0 and pcw["score"]["gold"] == task.gold
  assert "search" in registry.tools_block() and "PythonInterpreter" not in registry.tools_block()
  # The launcher's report for GAIA: both scorers, no chance line.
  from ps_jax.agents.report import summarize, write_report  # pylint: disable=import-outside-toplevel

  summary = summarize([record], config.methods)
  summary.update(cases_selected=1, errors=0, model="tiny", machine="cpu")
  write_report(summary, str(tmp_path), "gaia-files")
  md = (tmp_path / "agent.md").read_text()
  assert summary["methods"]["text"]["official"]["accuracy"] == 1.0
  assert "| text | 100.0 | 20.7-100.0 | 100.0 | 20.7-100.0 |" in md and "Chance" not in md
  assert summary["workers"]["tool_counts"]["tool_calls"] == 1
