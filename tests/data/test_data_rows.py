"""Row schema: both naming conventions, validation, skip-and-count."""

import json
import pathlib
import subprocess
import sys

import pytest

from ps_jax.data.rows import (
  MalformedRow,
  Row,
  RowLimits,
  RowStats,
  iter_valid_rows,
  parse_row,
  validate,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REPO = pathlib.Path(__file__).parents[2]


def _jsonl(name):
  return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def test_parse_our_names():
  a, b = (parse_row(o) for o in _jsonl("rows_ours.jsonl"))
  assert a == Row(
    "What is Ann's code?",
    "4821",
    ("Ann's code is 4821.", "Bob's code is 1934."),
    "test",
    {"k": 1},
  )
  assert b.contexts == ("Part 1: red.", "Part 2: fox.") and b.source == "" and b.meta == {}


def test_parse_reference_names():
  chat, wiki = (parse_row(o) for o in _jsonl("rows_reference.jsonl"))
  assert chat.query == "Current turn query:\nAnd in winter?"
  assert chat.answer == "Mostly snow."  # from `gold`
  assert chat.contexts == (
    "This is previous chat history 1:\nUser: Weather in Oslo?\nAssistant: Cold.",
  )
  assert chat.source == "ultrachat" and chat.meta == {"id": "ultrachat_0"}
  # Both `contexts` and `agent_reference_contexts`: the reference's branch texts win.
  assert wiki.contexts == (
    "Move is a 1970 film directed by Stuart Rosenberg.",
    "An American director.",
  )
  assert wiki.answer == "\\box{Stuart Rosenberg}"


def test_question_alias_alone():
  row = parse_row({"question": "q?", "gold": "a", "agent_reference_contexts": ["c"]})
  assert (row.query, row.answer, row.contexts) == ("q?", "a", ("c",))


def test_row_round_trips_through_to_dict():
  row = Row("q", "a", ["x", "y"], "s", {"m": 2})
  assert row.contexts == ("x", "y")  # lists become tuples
  assert parse_row(json.loads(json.dumps(row.to_dict()))) == row


GOOD = {"query": "q?", "answer": "a", "contexts": ["one", "two", "three"]}
LIMITS = RowLimits(max_branches=3, max_context_chars=10)

# (row, expected reason) for every malformed case.
MALFORMED = [
  ({k: v for k, v in GOOD.items() if k != "query"}, "query:missing"),
  ({k: v for k, v in GOOD.items() if k != "answer"}, "answer:missing"),
  ({k: v for k, v in GOOD.items() if k != "contexts"}, "contexts:missing"),
  ({**GOOD, "query": None}, "query:missing"),
  ({**GOOD, "query": "  "}, "query:empty"),
  ({**GOOD, "answer": ""}, "answer:empty"),
  ({**GOOD, "answer": 7}, "answer:wrong_type"),
  ({**GOOD, "contexts": []}, "contexts:empty"),
  ({**GOOD, "contexts": "one string"}, "contexts:wrong_type"),
  ({**GOOD, "contexts": ["ok", 3]}, "contexts:wrong_type"),
  ({**GOOD, "contexts": ["ok", "\n"]}, "contexts:empty_item"),
  ({**GOOD, "contexts": ["a", "b", "c", "d"]}, "contexts:too_many"),
  ({**GOOD, "contexts": ["ok", "x" * 11]}, "contexts:too_long"),
  (["not", "an", "object"], "row:wrong_type"),
]


@pytest.mark.parametrize("obj,reason", MALFORMED, ids=[r for _, r in MALFORMED])
def test_malformed_row_raises_with_field_and_reason(obj, reason):
  with pytest.raises(MalformedRow) as e:
    parse_row(obj, LIMITS)
  assert e.value.reason == reason
  assert repr(e.value.field) in str(e.value)


def test_limits_are_inclusive():
  row = parse_row({**GOOD, "contexts": ["a" * 10, "b", "c"]}, LIMITS)
  assert len(row.contexts) == 3


def test_iter_valid_rows_skips_and_counts():
  objs = [GOOD] + [obj for obj, _ in MALFORMED] + [GOOD]
  stats = RowStats()
  rows = list(iter_valid_rows(objs, LIMITS, stats=stats))
  assert len(rows) == 2 and stats.valid == 2
  expected = {}
  for _, reason in MALFORMED:
    expected[reason] = expected.get(reason, 0) + 1
  assert dict(stats.skipped) == expected
  assert stats.num_skipped == len(MALFORMED)
  assert "2 valid" in str(stats) and "contexts:too_long=1" in str(stats)


def test_validate_checks_rows_built_directly():
  with pytest.raises(MalformedRow, match="contexts"):
    validate(Row("q", "a", ()))
  with pytest.raises(ValueError, match="unknown problem"):
    MalformedRow("x", "not_a_problem", "")


def test_data_modules_do_not_import_jax():
  # ps_jax/__init__ imports the model (and jax); stub the parent package to see what the
  # data modules themselves pull in.
  code = (
    "import sys, types; pkg = types.ModuleType('ps_jax'); pkg.__path__ = ['ps_jax'];"
    "sys.modules['ps_jax'] = pkg;"
    "import ps_jax.data, ps_jax.data.synthetic, ps_jax.data.sources, ps_jax.data.processors;"
    "bad = [m for m in sys.modules"
    " if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'tensorflow')"
    " or m.startswith('ps_jax.model')];"
    "assert not bad, bad"
  )
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
