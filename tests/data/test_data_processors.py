"""Processors on small fixtures written in the public datasets' real schemas."""

import json
import pathlib

import pytest

from ps_jax.data.processors import (
  chat_to_row,
  few_shot_rows,
  few_shot_to_row,
  multihop_qa_to_row,
  tool_trace_to_row,
)
from ps_jax.data.rows import MalformedRow, RowStats, iter_valid_rows

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _load(name):
  text = (FIXTURES / name).read_text(encoding="utf-8")
  return json.loads(text) if name.endswith(".json") else [json.loads(x) for x in text.splitlines()]


def test_chat_messages():
  a, b = (chat_to_row(o) for o in _load("chat_messages.jsonl"))
  assert a.query == "Mix the two warm ones. What do I get?"
  assert a.answer == "Orange."
  assert a.contexts == (
    "User: What are three primary colours?\nAssistant: Red, yellow and blue.",
    "User: Which of them is warm?\nAssistant: Red and yellow are warm colours.",
  )
  assert a.source == "chat" and a.meta == {"id": "c1a3", "role": "exposure"}
  # The system turn is dropped; one earlier round gives one branch.
  assert (b.query, b.answer, b.contexts) == (
    "Add 4 to it.",
    "11.",
    ("User: Name a prime number.\nAssistant: 7.",),
  )


def test_chat_sharegpt_and_single_turn_skipped():
  objs = _load("chat_sharegpt.jsonl")
  row = chat_to_row(objs[0])
  assert row.query == "How old is Rex?" and row.answer == "Rex is four years old."
  assert row.contexts == (
    "User: My dog is called Rex.\nAssistant: Rex is a great name for a dog.",
    "User: He is four years old.\nAssistant: Four is a lovely age.",
  )
  stats = RowStats()
  assert len(list(iter_valid_rows(objs, stats=stats, to_row=chat_to_row))) == 1
  assert dict(stats.skipped) == {"contexts:empty": 1}  # a one-round chat has no branch


@pytest.mark.parametrize(
  "messages,reason",
  [
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "messages:invalid"),
    ([{"role": "narrator", "content": "a"}], "messages:invalid"),
    ("not a list", "messages:wrong_type"),
  ],
)
def test_chat_malformed(messages, reason):
  with pytest.raises(MalformedRow) as e:
    chat_to_row({"messages": messages})
  assert e.value.reason == reason


def test_tool_traces():
  objs = _load("tool_calls.jsonl")
  a = tool_trace_to_row(objs[0])
  assert a.query == "Is it warmer in Paris or in London right now?"
  assert a.answer == "Paris is warmer: 19\u00b0C against 14\u00b0C in London."
  # Results are matched to calls by tool_call_id, although they arrived in the other order.
  assert a.contexts == (
    'Tool call: get_weather({"city": "Paris"})\nResult: {"celsius": 19}',
    'Tool call: get_weather({"city": "London"})\nResult: {"celsius": 14}',
  )
  assert a.source == "tool_trace" and a.meta["id"] == "tc_1"
  b = tool_trace_to_row(objs[1])  # no ids: matched by order; dict arguments serialised
  assert b.query == "What do 3 apples and 2 pears cost?" and b.answer == "They cost 2.70 in total."
  assert b.contexts == (
    'Tool call: price({"item": "apple", "qty": 3})\nResult: 1.50',
    'Tool call: price({"item": "pear", "qty": 2})\nResult: 1.20',
    'Tool call: price({"item": "plum", "qty": 0})\nResult: 0.00',
  )
  with pytest.raises(MalformedRow, match="tool call 1 \\(get_weather\\) has no result"):
    tool_trace_to_row(objs[2])
  with pytest.raises(MalformedRow, match="no tool call"):
    tool_trace_to_row(_load("chat_messages.jsonl")[0])


def test_hotpotqa_hf_schema_all_paragraphs():
  a, b = (multihop_qa_to_row(o) for o in _load("hotpotqa_hf.json"))
  assert a.query == "Which magazine was started first, Arthur's Magazine or First for Women?"
  assert a.answer == "Arthur's Magazine"
  assert len(a.contexts) == 4
  assert a.contexts[3] == (
    "First for Women: First for Women is a woman's magazine published by Bauer Media Group "
    "in the USA. The magazine was started in 1989."
  )
  assert a.meta["supporting_titles"] == ["Arthur's Magazine", "First for Women"]
  assert a.meta["type"] == "comparison" and a.meta["id"] == "5a7a06935542990198eaf050"
  assert b.answer == "Delhi" and b.source == "multihop_qa"


def test_hotpotqa_original_schema_supporting_plus_distractors():
  objs = _load("hotpotqa_original.json")
  only = multihop_qa_to_row(objs[0], distractors=0)
  assert only.meta["titles"] == ["Scott Derrickson", "Ed Wood"]
  assert only.contexts[0] == (
    "Scott Derrickson: Scott Derrickson (born July 16, 1966) is an American director, "
    "screenwriter and producer. He lives in Los Angeles, California."
  )
  one = multihop_qa_to_row(objs[1], distractors=1, seed=0)
  assert len(one.contexts) == 3 and {"Kiss and Tell (1945 film)", "Shirley Temple"} <= set(
    one.meta["titles"]
  )
  # Paragraphs keep dataset order; the distractor choice is a function of the seed.
  order = ["Meet Corliss Archer", "Kiss and Tell (1945 film)", "Janet Waldo", "Shirley Temple"]
  assert one.meta["titles"] == [t for t in order if t in one.meta["titles"]]
  assert multihop_qa_to_row(objs[1], distractors=1, seed=0) == one
  distractors = {
    tuple(multihop_qa_to_row(objs[1], distractors=1, seed=s).meta["titles"]) for s in range(20)
  }
  assert len(distractors) == 2  # both distractors get picked for some seed
  assert len(multihop_qa_to_row(objs[1], distractors=10).contexts) == 4  # capped at what exists


def test_2wikimultihopqa_including_json_string_fields():
  a, b = (multihop_qa_to_row(o) for o in _load("2wikimultihopqa.json"))
  assert a.answer == "no" and len(a.contexts) == 6
  assert a.meta["id"] == "13f5ad2c088c11ebbd6fac1f6bf848b6"
  assert b.answer == "Ma\u0142gorzata Braunek" and len(b.contexts) == 3
  assert b.contexts[0].startswith(
    "Xawery \u017bu\u0142awski: Xawery \u017bu\u0142awski (born 22 December 1971"
  )
  sup = multihop_qa_to_row(_load("2wikimultihopqa.json")[0], distractors=0)
  assert sorted(sup.meta["titles"]) == sorted(
    [
      "Move (1970 film)",
      "M\u00e9diterran\u00e9e (1963 film)",
      "Stuart Rosenberg",
      "Jean-Daniel Pollet",
    ]
  )


@pytest.mark.parametrize(
  "patch,reason",
  [
    ({"context": None}, "context:missing"),
    ({"context": [["only a title"]]}, "context:invalid"),
    ({"answer": None}, "answer:missing"),
    ({"supporting_facts": None}, "supporting_facts:missing"),
    ({"supporting_facts": [["Not A Title", 0]]}, "supporting_facts:invalid"),
  ],
)
def test_multihop_malformed(patch, reason):
  obj = {**_load("hotpotqa_original.json")[0], **patch}
  with pytest.raises(MalformedRow) as e:
    multihop_qa_to_row(obj, distractors=1)
  assert e.value.reason == reason


def test_few_shot_rows_from_fixture():
  a, b = (few_shot_to_row(o) for o in _load("few_shot.jsonl"))
  assert a.query == "Translate English to French.\n\nInput: apple"
  assert a.answer == "pomme"
  assert a.contexts == (
    "Input: cheese\nOutput: fromage",
    "Input: bread\nOutput: pain",
    "Input: water\nOutput: eau",
  )
  assert b.query == "Input: 6 + 1" and b.answer == "7" and len(b.contexts) == 2
  with pytest.raises(MalformedRow) as e:
    few_shot_to_row({"demos": [["x"]], "input": "i", "output": "o"})
  assert e.value.reason == "demos:invalid"


def test_few_shot_rows_from_pairs():
  pairs = [(f"in{i}", f"out{i}") for i in range(6)]
  rows = few_shot_rows(pairs, num_demos=3, seed=1)
  assert rows == few_shot_rows(pairs, num_demos=3, seed=1)
  for i, row in enumerate(rows):
    assert row.answer == f"out{i}" and len(row.contexts) == 3
    assert all(f"out{i}" not in c for c in row.contexts)  # never its own answer
  with pytest.raises(ValueError, match="num_demos"):
    few_shot_rows(pairs, num_demos=6)
