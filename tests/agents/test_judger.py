"""The judger over the workers' latent prefix (values: unchanged across turns) and the
fixed-trajectory mode (re-prefilled stored traces equal the live-captured branches)."""

from __future__ import annotations

import numpy as np
import pytest

import helpers
from ps_jax.agents import MEMORY_MODES, AgentSession, ReactConfig, ToolRegistry
from ps_jax.agents.judger import JudgerPolicy, run_judger
from ps_jax.agents.protocol import cut_at_tool_response
from ps_jax.agents.react import AgentTrace, ScriptedPolicy, run_react
from ps_jax.agents.session import capture_branches
from ps_jax.agents.tools import Tool
from ps_jax.agents.trajectories import (
  agent_record,
  branches_from_records,
  capture_workers,
  read_jsonl,
  record_row,
  rescored_record,
  write_jsonl,
)
from ps_jax.generation import encode_prompts
from ps_jax.workers import encode_branches

TOL = 1e-4
STOP = [2]
TOOL_CALL = '<tool_call>\n{"name": "lookup", "arguments": {"key": "x"}}\n</tool_call>'


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny):
  _, model = tiny("llama")
  return model, helpers.tiny_tokenizer()


def _branches(model, tokenizer):
  return encode_branches(model, tokenizer, [["the answer is 4", "four", "it is 4 I think"]])


class _ToolFirst:
  """Judger turn 1 runs the model but answers with a tool call; later turns are the model's."""

  def __init__(self, judger):
    self.judger, self.turn = judger, 0

  def reset(self, n):
    self.judger.reset(n)

  def __call__(self, conversations, active):
    out = self.judger(conversations, active)
    self.turn += 1
    return [TOOL_CALL] if self.turn == 1 else out


def _registry():
  schema = {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}
  return ToolRegistry([Tool("lookup", "Look a key up.", schema, lambda key: f"{key} = 4")])


def test_judger_prefix_is_unchanged_across_turns(model_and_tokenizer):
  method = "pcw"  # without an adapter parallel_synthesis runs the same forward
  model, tokenizer = model_and_tokenizer
  branches = _branches(model, tokenizer)
  judger = JudgerPolicy(model, tokenizer, branches, method, max_new_tokens=4)
  before = [np.array(x) for x in (judger.prefix.k, judger.prefix.v, judger.prefix.mask)]
  conv = [{"role": "user", "content": "What is 2 + 2?"}]
  traces = run_react(_ToolFirst(judger), _registry(), [conv], ReactConfig(max_steps=2))
  assert len(judger.turn_ttft_s) == 2 and traces[0].steps[0].calls[0]["response"] == "x = 4"
  # The release's DynamicCache would now hold turn 1's KV after the prefix; ours is a value.
  after = [np.asarray(x) for x in (judger.prefix.k, judger.prefix.v, judger.prefix.mask)]
  for a, b in zip(before, after, strict=True):
    np.testing.assert_array_equal(a, b)
  # Turn 2 reads only the prefix and its own conversation: a fresh judger on that
  # conversation (a new prefix, one turn) writes the same tokens and sees the same prompt.
  second = traces[0].messages[:3]  # user, turn 1's tool call, its response
  fresh = JudgerPolicy(model, tokenizer, branches, method, max_new_tokens=4)
  fresh.reset(1)
  out = fresh([second], [True])
  assert fresh.turn_prompt_ids[0] == judger.turn_prompt_ids[1]
  assert cut_at_tool_response(out[0])[0] == traces[0].steps[1].output


def test_run_judger_ttft_and_methods(model_and_tokenizer):
  model, tokenizer = model_and_tokenizer
  branches = _branches(model, tokenizer)
  latent = [[{"role": "user", "content": "Q: 2 + 2?"}]]
  text = [[{"role": "user", "content": "Agents: " + " | ".join(branches.texts[0]) + "\nQ: 2 + 2?"}]]
  results = {
    m: run_judger(
      model,
      tokenizer,
      branches,
      text if m == "text" else latent,
      m,
      ToolRegistry(),
      max_new_tokens=3,
      react=ReactConfig(max_steps=1),
    )
    for m in ("text", "pcw")
  }
  assert results["text"].cache_prepare_s == 0.0 and results["pcw"].cache_prepare_s > 0.0
  for r in results.values():
    assert r.ttft_s == pytest.approx(r.cache_prepare_s + r.turn_ttft_s[0])
    assert len(r.turn_ttft_s) == 1 and r.generated_tokens[0] >= 1
  # The text judger's prompt carries the branch texts; the latent one reads them as cache.
  assert results["text"].prompt_tokens[0] > results["pcw"].prompt_tokens[0]
  with pytest.raises(ValueError, match="2 judger conversations for 1 examples"):
    run_judger(model, tokenizer, branches, latent * 2, "pcw", ToolRegistry())
  with pytest.raises(ValueError, match="text_lora"):
    JudgerPolicy(model, tokenizer, branches, "text_lora")


# Fixed-trajectory mode ----------------------------------------------------------------------


def _two_turn_session(model, rng):
  session = AgentSession(model, 3, stop_ids=STOP, capacity=128)
  session.turn([list(rng.integers(3, 384, size=n)) for n in (6, 10, 8)], 5)
  ids = [
    h + list(rng.integers(3, 384, size=n)) for h, n in zip(session.history, (4, 2, 7), strict=True)
  ]
  ids[2] = session.history[2][:-2] + list(rng.integers(3, 384, size=3))  # a rolled-back tail
  session.turn(ids, 6)
  return session


def _records(session):
  from ps_jax.agents.react import AgentTrace  # pylint: disable=import-outside-toplevel

  return [
    agent_record(AgentTrace(messages=[{"role": "assistant", "content": "x"}]), session, n)
    for n in range(session.num_agents)
  ]


def test_reprefilled_records_equal_live_capture(model_and_tokenizer, tmp_path):
  model, _ = model_and_tokenizer
  session = _two_turn_session(model, np.random.default_rng(3))
  path = tmp_path / "traces.jsonl"
  write_jsonl(path, [{"id": "case-1", "agents": _records(session)}])
  stored = read_jsonl(path)[0]["agents"]  # through JSON, as a study re-reads them
  worst = {}
  for mode in MEMORY_MODES:
    live = capture_branches(session, None, [2, 1], mode)
    again = branches_from_records(model, None, [stored[:2], stored[2:]], mode)
    assert again.token_ids == live.token_ids
    np.testing.assert_array_equal(np.asarray(again.caches.lengths), np.asarray(live.caches.lengths))
    lengths = np.asarray(live.caches.lengths)
    diff = 0.0
    for b in range(2):
      for r in range(2):
        n = int(lengths[b, r])
        if n == 0:
          continue
        np.testing.assert_array_equal(
          np.asarray(again.caches.positions[b, r, :n]), np.asarray(live.caches.positions[b, r, :n])
        )
        for a, c in ((again.caches.k, live.caches.k), (again.caches.v, live.caches.v)):
          diff = max(
            diff, float(np.abs(np.asarray(a[:, b, r, :n]) - np.asarray(c[:, b, r, :n])).max())
          )
    worst[mode] = diff
  print("re-prefilled vs live branch KV, max |diff| per mode:", worst)
  assert max(worst.values()) <= TOL, worst


def test_records_without_ids_are_rendered(model_and_tokenizer):
  model, tokenizer = model_and_tokenizer
  convs = [[{"role": "user", "content": f"Say {w}."}] for w in ("yes", "no")]
  # No token ids (a scripted agent, a trace from elsewhere): re-rendered, as the release does.
  texts = [{"messages": c + [{"role": "assistant", "content": f"I say {i}."}]} for i, c in
           enumerate(convs)]  # fmt: skip
  got = branches_from_records(model, tokenizer, [texts], "final_output")
  prompt = encode_prompts(tokenizer, [convs[0]])[0]
  row, slots = record_row(tokenizer, texts[0], "final_output")
  assert row[: len(prompt)] == prompt and slots[0] == len(prompt) and slots[-1] == len(row) - 1
  ref = encode_branches(model, tokenizer, [[row[len(prompt) :]]], prefixes=[prompt])
  n = len(slots)
  diff = float(
    np.abs(np.asarray(got.caches.k[:, 0, 0, :n]) - np.asarray(ref.caches.k[:, 0, 0, :n])).max()
  )
  assert diff <= TOL
  assert int(got.caches.positions[0, 0, 0]) == len(prompt)
  with pytest.raises(ValueError, match="each_turn_output"):
    branches_from_records(model, tokenizer, [texts], "each_turn_output")
  bad = dict(_records(_two_turn_session(model, np.random.default_rng(4)))[0])
  bad["slots"] = {m: [len(bad["token_ids"]) + 3] for m in MEMORY_MODES}
  with pytest.raises(ValueError, match="slots lie outside"):
    branches_from_records(model, tokenizer, [[bad]], "final_output")


def test_capture_workers_and_rescored_record(model_and_tokenizer):
  model, tokenizer = model_and_tokenizer
  # The agents of test_records_without_ids_are_rendered: the same programs, nothing compiles.
  convs = [[{"role": "user", "content": f"Say {w}."}] for w in ("yes", "no")]
  traces = [
    AgentTrace(c + [{"role": "assistant", "content": f"I say {i}."}], final_output=f"I say {i}.")
    for i, c in enumerate(convs)
  ]
  scripted = ScriptedPolicy([[], []])  # not a ModelPolicy: branches re-prefilled from records
  got = capture_workers(
    scripted, traces, ["a", "b"], model=model, tokenizer=tokenizer,
    memory_mode="final_output", wall_s=1.5,
  )  # fmt: skip
  assert [a["agent_id"] for a in got.agents] == ["a", "b"] and got.capture_s >= 0
  assert got.record == dict(
    policy="ScriptedPolicy",
    memory_mode="final_output",
    branches_from="re-prefilled traces",
    agents=got.agents,
    turn_times=[],
    wall_s=1.5,
  )
  want = branches_from_records(model, tokenizer, [got.agents], "final_output")
  assert got.branches.token_ids == want.token_ids
  with pytest.raises(ValueError):  # one id per trace
    capture_workers(
      scripted, traces, ["a"], model=model, tokenizer=tokenizer, memory_mode="final_output",
      wall_s=0.0,
    )  # fmt: skip
  stored = {"task_id": 1, "workers": got.record, "methods": {"text": {}}, "wall_s": 9.0}
  again = rescored_record(stored, {"pcw": {}}, wall_s=0.5)
  workers = dict(got.record, branches_from="re-prefilled traces (fixed trajectory)")
  assert again == dict(task_id=1, workers=workers, methods={"pcw": {}}, wall_s=0.5, rescored=True)
  assert list(again) == ["task_id", "workers", "methods", "wall_s", "rescored"]
  assert stored["workers"]["branches_from"] == "re-prefilled traces"  # the input is unchanged
