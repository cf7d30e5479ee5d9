"""The ReAct loop driven by a scripted policy, and the tolerant tool-call parser."""

from __future__ import annotations

import pytest

from ps_jax.agents import (
  ReactConfig,
  ScriptedPolicy,
  Tool,
  ToolOutput,
  ToolRegistry,
  cut_at_tool_response,
  extract_answer,
  parse_tool_calls,
  run_react,
  worker_messages,
)

ADD = Tool(
  "add",
  "Add two integers.",
  {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
  },
  lambda a, b: str(int(a) + int(b)),
)


def _boom(sql):
  raise RuntimeError(f"relation does not exist: {sql}")


# The shape another module registers (query_db: sql -> str).
QUERY = Tool(
  "query_db",
  "Run one SQL query.",
  {"type": "object", "properties": {"sql": {"type": "string"}}, "required": ["sql"]},
  _boom,
)


def _registry():
  return ToolRegistry([ADD, QUERY])


def call(name, **args):
  import json  # pylint: disable=import-outside-toplevel

  return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


def test_tool_calls_then_answer():
  policy = ScriptedPolicy([["I will add. " + call("add", a=2, b=3), "<answer>5</answer>"]])
  (trace,) = run_react(
    policy, _registry(), [worker_messages(_registry(), "2+3?", date="2026-01-01")]
  )
  assert trace.answer == "5" and trace.stop_reason == "answer"
  assert trace.steps[0].calls[0]["response"] == "5"
  assert trace.counts["tool_calls"] == 1 and trace.counts["ok"] == 1
  # The observation went back as a user message; the second turn saw it.
  assert trace.messages[3] == {"role": "user", "content": "<tool_response>\n5\n</tool_response>"}
  assert policy.seen[0][1][-1]["content"] == "<tool_response>\n5\n</tool_response>"
  assert trace.final_output == "<answer>5</answer>"


def test_system_prompt_lists_the_tools():
  msgs = worker_messages(_registry(), "q", ["/tmp/a.csv"], date="2026-01-01")
  system = msgs[0]["content"]
  assert "<tools>\n{'type': 'function', 'function': {'name': 'add'" in system
  assert "query_db" in system and "Current date: 2026-01-01" in system
  assert msgs[1]["content"].endswith("parse_file:\n/tmp/a.csv")


def test_malformed_unknown_missing_and_failing_calls_are_observations():
  script = [
    "<tool_call>{not json at all</tool_call>",
    call("nope", x=1),
    call("add", a=1),
    call("query_db", sql="SELECT 1"),
    "done, no answer tag",
  ]
  (trace,) = run_react(ScriptedPolicy([script]), _registry(), [[{"role": "user", "content": "q"}]])
  statuses = [s.calls[0]["status"] for s in trace.steps[:4]]
  assert statuses == ["malformed", "unknown_tool", "bad_arguments", "error"]
  responses = [s.calls[0]["response"] for s in trace.steps[:4]]
  assert responses[0].startswith("Tool call error: could not parse")
  assert "unknown tool 'nope'" in responses[1] and "add, query_db" in responses[1]
  assert "missing required argument(s) b" in responses[2]
  assert responses[3].startswith("Tool execution failed: RuntimeError: relation does not exist")
  assert trace.counts["malformed"] == 1 and trace.counts["error"] == 1
  assert trace.counts["tool_calls"] == 4
  assert trace.stop_reason == "no_tool_call" and trace.answer == "done, no answer tag"


def test_step_budget_exhausted_ends_with_the_last_tool_response():
  script = [call("add", a=i, b=1) for i in range(10)]
  policy = ScriptedPolicy([script])
  (trace,) = run_react(policy, _registry(), [[{"role": "user", "content": "q"}]], ReactConfig(3))
  assert policy.calls == [3] and len(trace.steps) == 3
  assert trace.stop_reason == "budget"
  assert trace.final_output == "<tool_response>\n3\n</tool_response>"
  assert trace.answer == trace.final_output


def test_forced_final_answer_after_budget():
  script = [call("add", a=1, b=1), "<answer>2</answer>"]
  policy = ScriptedPolicy([script, ["<answer>x</answer>"]])
  convs = [[{"role": "user", "content": "q"}]] * 2
  traces = run_react(policy, _registry(), convs, ReactConfig(1, force_final_answer=True))
  assert traces[0].stop_reason == "forced_answer" and traces[0].answer == "2"
  assert "Do not call tools" in traces[0].messages[-2]["content"]
  assert traces[1].stop_reason == "answer" and policy.calls == [2, 1]


def test_hallucinated_tool_response_is_cut_and_counted():
  script = [
    call("add", a=2, b=2) + "\n<tool_response>\n5\n</tool_response>\n<answer>5</answer>",
    "<answer>4</answer>",
  ]
  (trace,) = run_react(ScriptedPolicy([script]), _registry(), [[{"role": "user", "content": "q"}]])
  assert trace.counts["hallucinated_response"] == 1
  assert trace.messages[1]["content"] == call("add", a=2, b=2)
  assert trace.messages[2]["content"] == "<tool_response>\n4\n</tool_response>"
  assert trace.answer == "4"


def test_agents_stop_independently():
  scripts = [["<answer>a</answer>"], [call("add", a=1, b=1), call("add", a=2, b=2), "b"]]
  policy = ScriptedPolicy(scripts)
  convs = [[{"role": "user", "content": "q"}]] * 2
  traces = run_react(policy, _registry(), convs)
  assert [t.answer for t in traces] == ["a", "b"]
  assert policy.calls == [1, 3]


def test_tool_output_status_passes_through():
  tool = Tool("s", "d", {"type": "object", "properties": {}}, lambda: ToolOutput("no", "refused"))
  (trace,) = run_react(
    ScriptedPolicy([[call("s"), "<answer>k</answer>"]]),
    ToolRegistry([tool]),
    [[{"role": "user", "content": "q"}]],
  )
  assert trace.counts["refused"] == 1


@pytest.mark.parametrize(
  "text,name,args,how",
  [
    (
      '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>',
      "add",
      {"a": 1, "b": 2},
      "json",
    ),
    (
      "<TOOL_CALL>{'name': 'add', 'arguments': {'a': 1, 'b': True}}</TOOL_CALL>",
      "add",
      {"a": 1, "b": True},
      "literal_eval",
    ),
    (
      '<tool_call>\n```json\n{"name": "add", "arguments": {"a": 1}}\n```\n</tool_call>',
      "add",
      {"a": 1},
      "json",
    ),
    (
      '<tool_call>{"name": "query_db", "arguments": {"sql": "SELECT \\"x\\" FROM t"}</tool_call>',
      "query_db",
      {"sql": 'SELECT "x" FROM t'},
      "regex",
    ),
    (
      '<tool_call>{"name": "search", "arguments": {"query": "a b"}}}</tool_call>',
      "search",
      {"query": "a b"},
      "regex",
    ),
    (
      "<tool_call>\n<function=visit>\n<parameter=url>\nhttp://x.org\n</parameter>\n</function>\n</tool_call>",
      "visit",
      {"url": "http://x.org"},
      "xml",
    ),
    (
      '<tool_call>{"name": "PythonInterpreter", "arguments": {}}\n'
      "<code>\nprint(1)\n</code></tool_call>",
      "PythonInterpreter",
      {"code": "print(1)"},
      "json",
    ),
    (
      '<tool_call>{"name": "add", "arguments": "{\\"a\\": 3}"}</tool_call>',
      "add",
      {"a": 3},
      "json",
    ),
  ],
)
def test_parser_tolerant_cases(text, name, args, how):
  (c,) = parse_tool_calls(text)
  assert (c.name, c.arguments, c.how, c.error) == (name, args, how, None)


def test_parser_failures_and_multiple_calls():
  assert parse_tool_calls("no call here") == []
  (bad,) = parse_tool_calls("<tool_call>just words</tool_call>")
  assert bad.error and bad.how == "failed"
  (noname,) = parse_tool_calls('<tool_call>{"arguments": {}}</tool_call>')
  assert "name" in noname.error
  calls = parse_tool_calls(call("add", a=1, b=2) + " then " + call("add", a=3, b=4))
  assert [c.arguments["a"] for c in calls] == [1, 3]


def test_cut_and_answer_helpers():
  assert cut_at_tool_response("  x <Tool_Response> y") == ("x", True)
  assert cut_at_tool_response(" x ") == ("x", False)
  assert extract_answer("<think><answer>a</answer></think> <answer>b</answer>") == "a"
  assert extract_answer("none") is None
