"""Synthetic suite: determinism, leak-free splits, unseen families and templates, parameters,
checker (on real model outputs), derivability."""

import collections
import random
import re

import pytest

from ps_jax.data import synthetic
from ps_jax.data.rows import Row
from ps_jax.data.synthetic import (
  ALL_FAMILIES,
  FAMILIES,
  UNSEEN_FAMILIES,
  check_no_leak,
  extract_answer,
  generate,
  normalize,
  score,
  split_of,
)

CASES = [(f, d) for f in ALL_FAMILIES for d in synthetic.DIFFICULTIES]
SEEN_CASES = [(f, d) for f in FAMILIES for d in synthetic.DIFFICULTIES]


def _split(family):
  """The split every family can be generated for (unseen families are held-out only)."""
  return "heldout" if ALL_FAMILIES[family].eval_only else "train"


def _rows(family, difficulty, n=40, split=None, branches=(3, 6), template=None, seed=7):
  return generate(family, split or _split(family), n, seed, branches, difficulty, template=template)


def _all_phrasings(family, difficulty, n=40):
  """Rows in every phrasing the family has: train rows, then held-out rows in each template."""
  if ALL_FAMILIES[family].eval_only:
    return _rows(family, difficulty, n)
  return _rows(family, difficulty, n) + [
    r for t in synthetic.TEMPLATES for r in _rows(family, difficulty, n, "heldout", template=t)
  ]


def _has(text, answer):
  """``answer`` occurs in ``text`` as whole normalised tokens."""
  return re.search(rf"(?<!\S){re.escape(normalize(answer))}(?!\S)", normalize(text)) is not None


def test_families_roles_and_unseen_families():
  assert {f.role for f in FAMILIES.values()} == {"exposure", "aggregation", "distillation"}
  assert {"majority_vote", "find_fact", "combine_partials", "verified_candidate"} <= set(FAMILIES)
  # At least two evaluation-only families, none of them trainable, covering two abilities.
  assert len(UNSEEN_FAMILIES) >= 2 and not set(UNSEEN_FAMILIES) & set(FAMILIES)
  assert all(f.eval_only for f in UNSEEN_FAMILIES.values())
  assert not any(f.eval_only for f in FAMILIES.values())
  assert {f.role for f in UNSEEN_FAMILIES.values()} == {"aggregation", "distillation"}
  assert ALL_FAMILIES == {**FAMILIES, **UNSEEN_FAMILIES}
  assert synthetic.family("schedule_lookup") is UNSEEN_FAMILIES["schedule_lookup"]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_deterministic_by_seed(family):
  a = _rows(family, 2, n=20, branches=4, seed=1)
  assert a == _rows(family, 2, n=20, branches=4, seed=1)
  assert a != _rows(family, 2, n=20, branches=4, seed=2)


def _canonical_pair(r):
  return r.meta.get("canonical_query", r.query), r.answer


@pytest.mark.parametrize("family", FAMILIES)
def test_train_and_heldout_are_disjoint(family):
  def keys(split, template=None):
    rows = [
      r
      for d in synthetic.DIFFICULTIES
      for r in _rows(family, d, n=150, split=split, template=template)
    ]
    assert all(r.meta["split"] == split for r in rows)
    assert all(split_of(family, *_canonical_pair(r)) == split for r in rows)
    return {_canonical_pair(r) for r in rows}

  train = keys("train")
  for template in synthetic.TEMPLATES:
    heldout = keys("heldout", template)
    assert len(heldout) > 10 and not train & heldout


@pytest.mark.parametrize("family,difficulty", SEEN_CASES)
def test_no_heldout_pair_or_answer_branch_in_training(family, difficulty):
  """check_no_leak on big draws, across seeds and in both held-out phrasings: with the
  training phrasing, a leak would show verbatim."""
  train = _rows(family, difficulty, n=300, branches=(2 if family != "majority_vote" else 3, 6))
  for template in synthetic.TEMPLATES:
    heldout = _rows(family, difficulty, n=60, split="heldout", template=template, seed=8)
    report = check_no_leak(train, heldout)
    assert report["ok"], report["examples"]
    assert report["pairs_in_train"] == 0 and report["answer_branches_in_train"] == 0
    assert report["duplicate_rows"] == {"train": 0, "heldout": 0}
    if family != "combine_partials":  # no single branch holds a whole message
      assert report["answer_branches"] >= len(heldout)
    # The canonical answer branch (training phrasing) is a held-out branch, never a training one.
    if template == "train":
      train_branches = {c for r in train for c in r.contexts}
      for r in heldout:
        holders = synthetic.answer_branches(r.answer, r.contexts)
        assert not set(holders) & train_branches
        if holders:
          assert synthetic.branch_split(holders[0]) == "heldout"


def test_demo_mix_is_leak_free():
  """The demo config's rows (400 train / 24 held-out per family, 2-4 branches, seed 0): the
  old generator leaked 7 of 24 tool_lookup and 4 of 24 find_fact answer branches."""
  train, heldout = [], []
  for f, fam in ALL_FAMILIES.items():
    nb = (max(2, fam.min_branches), 4)
    if not fam.eval_only:
      train += generate(f, "train", 400, 0, nb, 1)
    heldout += generate(f, "heldout", 24, 0, nb, 1)
  report = check_no_leak(train, heldout)
  assert report["ok"] and report["heldout_rows"] == 24 * len(ALL_FAMILIES)
  assert report["duplicate_rows"] == {"train": 0, "heldout": 0}
  assert set(report["by_family"]) == set(ALL_FAMILIES)
  assert all(c["rows_with_leaked_answer_branch"] == 0 for c in report["by_family"].values())
  assert {r.meta["family"] for r in train} == set(FAMILIES)  # unseen families never train


def test_check_no_leak_counts_leaks():
  train = [
    Row("What is Bob's lucky number?", "12", ("Bob's lucky number is 12.", "Ann's is 3.")),
    Row("q?", "x", ("Eve's locker code is 1234.",)),
  ]
  heldout = [
    Row("what is bob's lucky number", "12", ("Bob's lucky number is 12!",), meta={"family": "a"}),
    Row("What is Eve's locker code?", "1234", ("Eve's locker code is 1234.", "Noise 7.")),
    Row("What is Eve's locker code?", "1234", ("Eve's locker code is 1234.", "Noise 7.")),
    Row("fine?", "77", ("A new branch with 77.", "Eve's locker code is 1234.")),
  ]
  report = check_no_leak(train, heldout)
  assert not report["ok"]
  assert report["heldout_rows"] == 4 and report["unique_heldout_pairs"] == 3
  assert report["pairs_in_train"] == 1  # normalised: case and punctuation do not hide a leak
  assert report["answer_branches"] == 4 and report["answer_branches_in_train"] == 3
  assert report["rows_with_leaked_answer_branch"] == 3  # the last row's leak is no answer branch
  assert report["duplicate_rows"] == {"train": 0, "heldout": 1}
  assert report["by_family"]["a"] == {
    "rows": 1,
    "pairs_in_train": 1,
    "answer_branches": 1,
    "answer_branches_in_train": 1,
    "rows_with_leaked_answer_branch": 1,
    "unique_pairs": 1,
  }
  assert report["by_family"][""]["rows"] == 3  # no family, no source
  assert {e["kind"] for e in report["examples"]} == {"pair", "answer_branch"}
  assert check_no_leak(train, heldout[3:])["ok"]


@pytest.mark.parametrize("family,difficulty", CASES)
def test_rows_are_distinct(family, difficulty):
  low = ALL_FAMILIES[family].min_branches  # few branches: the smallest value spaces
  for rows in (
    _rows(family, difficulty, 150, branches=low),
    _rows(family, difficulty, 60, "heldout"),
  ):
    assert len({(r.query, r.answer, r.contexts) for r in rows}) == len(rows)


def test_generate_reports_an_exhausted_value_space(monkeypatch):
  def one(rng, n, difficulty, template):
    rng.random()
    return "Which?", "7", ["It is 7."] * n

  tiny = synthetic.Family("tiny", "exposure", one, 1, True, eval_only=True)
  monkeypatch.setitem(synthetic.ALL_FAMILIES, "tiny", tiny)
  assert len(generate("tiny", "heldout", 1, 0, 1)) == 1
  with pytest.raises(RuntimeError, match="only 1 distinct rows"):
    generate("tiny", "heldout", 2, 0, 1)


@pytest.mark.parametrize("family,difficulty", CASES)
def test_branch_count_difficulty_meta_and_size(family, difficulty):
  fam = ALL_FAMILIES[family]
  rows = _rows(family, difficulty)
  assert {len(r.contexts) for r in rows} == {3, 4, 5, 6}  # the (low, high) range, inclusive
  fixed = generate(family, _split(family), 10, seed=0, num_branches=5, difficulty=difficulty)
  assert {len(r.contexts) for r in fixed} == {5}
  for r in _all_phrasings(family, difficulty):
    assert r.source == f"synthetic/{family}"
    assert r.meta["family"] == family and r.meta["difficulty"] == difficulty
    assert r.meta["role"] == fam.role
    # Short enough for a 135M model: ~1.3 tokens per word.
    assert all(3 <= len(c.split()) <= 40 for c in r.contexts), r.contexts
    assert len(r.answer.split()) <= (2 * 6 if family == "combine_partials" else 1)
  many = generate(
    family, "heldout", 3, seed=0, num_branches=synthetic.MAX_BRANCHES, difficulty=difficulty
  )
  assert all(len(r.contexts) == synthetic.MAX_BRANCHES for r in many)
  if not fam.eval_only:
    many = generate(family, "train", 3, 0, synthetic.MAX_BRANCHES, difficulty)
    assert all(len(r.contexts) == synthetic.MAX_BRANCHES for r in many)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_template_and_generalization_meta(family):
  if ALL_FAMILIES[family].eval_only:
    for template in (None, "train", "heldout"):  # one phrasing: the template is ignored
      rows = generate(family, "heldout", 5, 0, 3, template=template)
      assert {(r.meta["template"], r.meta["generalization"]) for r in rows} == {
        ("heldout", "unseen_family")
      }
    return
  train = generate(family, "train", 5, 0, 3)
  assert {(r.meta["template"], r.meta["generalization"]) for r in train} == {
    ("train", "in_distribution")
  }
  new = generate(family, "heldout", 5, 0, 3)  # held-out rows default to the new phrasing
  assert new == generate(family, "heldout", 5, 0, 3, template="heldout")
  assert {(r.meta["template"], r.meta["generalization"]) for r in new} == {
    ("heldout", "new_template")
  }
  same = generate(family, "heldout", 5, 0, 3, template="train")
  assert {(r.meta["template"], r.meta["generalization"]) for r in same} == {
    ("train", "in_distribution")
  }
  # A template changes the wording only: the same draws, answers and canonical queries.
  assert [r.answer for r in new] == [r.answer for r in same]
  assert [r.meta["canonical_query"] for r in new] == [r.query for r in same]
  for a, b in zip(new, same, strict=True):
    assert len(a.contexts) == len(b.contexts)
    assert [_has(c, a.answer) for c in a.contexts] == [_has(c, b.answer) for c in b.contexts]
    assert a.query != b.query and "canonical_query" not in b.meta


_VALUES = {
  w.lower()
  for ws in (
    synthetic._NAMES,
    synthetic._CITIES,
    synthetic._COLOURS,
    synthetic._GOODS,
    synthetic._WORDS,
    synthetic._OWNERS,
    synthetic._ITEMS,
    synthetic._ATTRIBUTES,
  )
  for w in ws
}


_VALUE = re.compile(
  r"\b[A-H]\d+\b|\d+|"
  + "|".join(rf"\b{re.escape(v)}\b" for v in sorted(_VALUES, key=len, reverse=True)),
  re.IGNORECASE,
)


def _shape(text):
  """The phrasing of a text: values (names, cities, words, numbers, codes) replaced by #."""
  return _VALUE.sub("#", text)


@pytest.mark.parametrize("family,difficulty", SEEN_CASES)
def test_heldout_template_phrasings_never_occur_in_training(family, difficulty):
  small_talk = {f"User: {q}\nAssistant: {a}" for q, a in synthetic._SMALL_TALK}
  train = _rows(family, difficulty, n=200, branches=(3, 10))
  new = _rows(family, difficulty, n=60, split="heldout", branches=(3, 10))
  train_queries = {_shape(r.query) for r in train}
  train_branches = {_shape(c) for r in train for c in r.contexts}
  for r in new:
    assert _shape(r.query) not in train_queries, r.query
    for c in r.contexts:
      if c not in small_talk:  # chat_recall's small-talk rounds are shared distractors
        assert _shape(c) not in train_branches, c
  # ... whereas the training phrasing's held-out rows share it, by construction.
  same = _rows(family, difficulty, n=20, split="heldout", branches=(3, 10), template="train")
  assert all(_shape(r.query) in train_queries for r in same)


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown synthetic family"):
    generate("nope", "train", 1, seed=0)
  with pytest.raises(ValueError, match="split"):
    generate("find_fact", "test", 1, seed=0)
  with pytest.raises(ValueError, match="difficulty"):
    generate("find_fact", "train", 1, seed=0, difficulty=4)
  with pytest.raises(ValueError, match="num_branches"):
    generate("majority_vote", "train", 1, seed=0, num_branches=2)
  with pytest.raises(ValueError, match="num_branches"):
    generate("find_fact", "train", 1, seed=0, num_branches=(2, synthetic.MAX_BRANCHES + 1))
  for name in UNSEEN_FAMILIES:
    with pytest.raises(ValueError, match="evaluation-only"):
      generate(name, "train", 1, seed=0)
  with pytest.raises(ValueError, match="template"):
    generate("find_fact", "heldout", 1, seed=0, template="fancy")
  with pytest.raises(ValueError, match="'train' phrasing only"):
    generate("find_fact", "train", 1, seed=0, template="heldout")


# --- scoring ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family,difficulty", CASES)
def test_checker_accepts_gold_and_rejects_wrong(family, difficulty):
  rows = _rows(family, difficulty, n=10)
  for r, other in zip(rows, rows[1:] + rows[:1], strict=True):
    gold = r.answer
    for pred in (
      gold,
      f"  {gold.upper()}. ",
      f"{gold}.",  # trailing period
      f"**{gold}**",  # markdown bold
      f"The answer is {gold}.",
      f"The answer is: **{gold}**",
      f"**Answer:** {gold}",
      f"Answer: {gold}\nbecause...",  # 'Answer: X' at the start, then more lines
      f"{gold}\n\nAnswer:",  # the answer, then a trailing 'Answer:' line the model never ends
      f"{gold}\nAnswer:\n",
      f"The answer is:\n{gold}\n\nOutput:",  # the marker ends its line; the answer follows
      f"Let me look at the branches.\nThe answer is {gold}.",  # multiple lines
      f"{gold}\nI checked every branch.",
      f"reasoning... \\boxed{{{gold}}}",
    ):
      assert score(family, pred, gold) == 1.0, pred
    if other.answer != gold:
      assert score(family, other.answer, gold) == 0.0
      assert score(family, f"The answer is {other.answer}.", gold) == 0.0
      assert score(family, f"The answer is {gold}.\nAnswer: {other.answer}", gold) == 0.0
      if ALL_FAMILIES[family].lenient:
        assert score(family, f"{gold} or {other.answer}", gold) == 0.0
    assert score(family, "", gold) == 0.0
    assert score(family, "Answer:", gold) == 0.0


def test_extract_answer():
  assert extract_answer("Your locker is 73.\n\nOutput Answer:") == "Your locker is 73."
  assert extract_answer("Your answer is:\nYour parking spot is A93.\n\nOutput") == (
    "Your parking spot is A93."
  )
  assert extract_answer("Your answer is correct. The answer is: B62.") == " B62."
  assert extract_answer("**Answer**: 42") == " 42"
  assert extract_answer("Answer = 7\nAnswer:") == " 7"
  assert extract_answer("x \\boxed{5} Answer: 6") == "5"
  assert extract_answer("The answers are 1 and 2.\nOK") == "The answers are 1 and 2."
  assert extract_answer("\n\n  \nFirst line\nsecond") == "First line"
  assert extract_answer("") == ""


# The 24 held-out chat_recall samples of the demo run of c24e7b5 (its docs/results/demo.json):
# (answer, text output, pcw output, expected (text, pcw) scores). parallel_synthesis output the
# answer itself every time. The first two text outputs marked * were scored 0 before the
# trailing-"Answer:" fix: text accuracy 62.5 -> 70.8 on these 24, pcw unchanged at 83.3.
DEMO_CHAT_RECALL = [
  ("G5", "Your gate is a bee's nest.", "The answer is: G5.", (0, 1)),
  ("73", "Your locker is 73.\n\nOutput Answer:", "The answer is: 73.", (1, 1)),  # *
  ("49", "Your locker is 49.", "The answer is: 49.", (1, 1)),
  (
    "B62",
    "Your answer is correct. The answer is: B62.",
    "The task summarizer will now present the answer to the question:\n\nThe",
    (1, 0),
  ),
  ("18", "Your locker is 18.", "Your locker is 18.", (1, 1)),
  ("G1", "Your gate is a hot topic.\n\nOutput:", "The answer is: G1.", (0, 1)),
  ("78", "Your locker is 78.", "Your locker is 78.", (1, 1)),
  ("91", "Your locker is 91.\n\nOutput:", "Your locker is a banana.", (1, 0)),
  ("91", "Your locker is 91.", "Your locker is 91.", (1, 1)),
  ("485", "The answer to this question is: 485", "The room number is 485.", (1, 1)),
  ("172", "Your room number is 172.", "Your room number is 172.", (1, 1)),
  ("A93", "The answer to the input question is: Rome.", "The answer is: A93", (0, 1)),
  ("D93", 'Your answer is correct. The correct answer is "Jupiter."', "The answer is: D93", (0, 1)),
  ("G77", "Para esta pregunta, no puedo ser más de", "The answer is: G77.", (0, 1)),
  ("806", "El cielo de la ciela es el cielo de la", "Your room number is 806.", (0, 1)),
  (
    "B99",
    "Your answer is correct. The answer is: B99.",
    "The task summarizer will now provide you with the answer to the question:\n",
    (1, 0),
  ),
  ("73", "Your response is correct. The answer is 73.", "The answer is: 73.", (1, 1)),
  ("83", "Your locker is 83.", "Your locker is 83.", (1, 1)),
  ("40333", "The answer to this question is: 40333.", "Your order number is 40333.", (1, 1)),
  (
    "A93",
    "Your answer is:\nYour parking spot is A93.\n\nOutput",
    "Your parking spot is A93.",
    (1, 1),
  ),  # *
  ("834", "Your room number is 834.", "Your room number is 834.", (1, 1)),
  (
    "A3",
    "Your answer is correct. The answer is: A3.",
    'The task summarizer will provide you with the answer to the question "What is',
    (1, 0),
  ),
  ("55", "El cielo está en la tierra.\n\nThe answer is", "The answer is: 55.", (0, 1)),
  ("12839", "Your order number is 12839.", "Your order number is 12839.", (1, 1)),
]


def test_real_demo_outputs():
  text, pcw, ps = [], [], []
  for answer, text_out, pcw_out, expect in DEMO_CHAT_RECALL:
    got = (score("chat_recall", text_out, answer), score("chat_recall", pcw_out, answer))
    assert got == expect, (answer, text_out, pcw_out)
    text.append(got[0])
    pcw.append(got[1])
    ps.append(score("chat_recall", answer, answer))
  assert round(100 * sum(text) / 24, 1) == 70.8
  assert round(100 * sum(pcw) / 24, 1) == 83.3 and sum(ps) == 24


# Outputs in the styles the demo's methods produce (a direct answer; "The answer is: X.";
# a sentence restating the question; a trailing "Output:"/"Answer:" line; truncation; another
# value or a hedge), for every family: (family, answer, output, expected score).
REALISTIC = [
  ("tool_lookup", "23", "The temperature in Paris is 23 degrees celsius.", 1),
  ("tool_lookup", "23", "The answer is: 23.\n\nOutput Answer:", 1),
  ("tool_lookup", "23", '{"celsius": 23}', 1),
  ("tool_lookup", "23", "The temperature in Paris is 23 and in Oslo 17.", 0),
  ("tool_lookup", "412", "Madrid is 412 km away.\nAnswer:", 1),
  ("tool_lookup", "412", "The distance is 421 km.", 0),
  ("find_fact", "4821", "Alice's locker code is 4821.", 1),
  ("find_fact", "red", "Alice's favourite colour is red.", 1),
  ("find_fact", "red", "The answer is: Red.\n\nOutput:", 1),
  ("find_fact", "red", "Alice's favourite colour is red, Bob's is blue.", 0),
  ("find_fact", "Lima", "Bob's home city is Lima.\n\nAnswer:", 1),
  ("find_fact", "Lima", "Bob lives in Rome.", 0),
  ("find_fact", "57", "Her lucky number is 75.", 0),
  ("chat_recall", "B7", "Your gate is B7.", 1),
  ("chat_recall", "B7", "Your gate is B7, your sister's gate is C2.", 0),
  ("combine_partials", "river lamp stone", "river lamp stone", 1),
  ("combine_partials", "river lamp stone", "River, lamp, stone.\n\nOutput:", 1),
  ("combine_partials", "river lamp stone", "The answer is: river lamp stone.", 1),
  ("combine_partials", "river lamp stone", "river lamp stone\nAnswer:", 1),
  ("combine_partials", "river lamp stone", "The full message is river lamp stone.", 0),
  ("combine_partials", "river lamp stone", "river stone lamp", 0),
  ("majority_vote", "75", "Most workers said 75.", 1),
  ("majority_vote", "75", "The answer is: 75.\n\nAnswer:", 1),
  ("majority_vote", "75", "I add 30 and 45 to get 75. Answer: 75.", 1),
  ("majority_vote", "75", "Two workers said 75 and one said 76.", 0),
  ("majority_vote", "75", "Answer: 76.", 0),
  ("verified_candidate", "23", "x = 23", 1),
  ("verified_candidate", "23", "Candidate x = 23 passed the check.", 1),
  ("verified_candidate", "23", "Candidate x = 23. Check: 23 * 4 = 92. Check passed.", 0),
  ("schedule_lookup", "14:05", "14:05", 1),
  ("schedule_lookup", "14:05", "The train to Lisbon leaves at 14:05.", 1),
  ("schedule_lookup", "09:40", "It leaves at 9:40 from platform 3.\nAnswer:", 1),
  ("schedule_lookup", "14:05", "The answer is: **14:05**", 1),
  ("schedule_lookup", "14:05", "The train leaves at 14:50.", 0),
  ("schedule_lookup", "14:05", "It leaves at 14:05 and arrives at 16:20.", 0),
  ("schedule_lookup", "14:05", "14", 0),
  ("consensus_vote", "Oslo", "Oslo", 1),
  ("consensus_vote", "Oslo", "Most people voted for Oslo.", 1),
  ("consensus_vote", "Oslo", "The answer is: Oslo.\n\nOutput Answer:", 1),
  ("consensus_vote", "Oslo", "Oslo got 3 votes, Rome got 2.", 0),
  ("consensus_vote", "Oslo", "Rome", 0),
]


@pytest.mark.parametrize("family,answer,output,expected", REALISTIC)
def test_realistic_outputs(family, answer, output, expected):
  assert score(family, output, answer) == expected


def test_realistic_outputs_cover_every_family():
  assert {f for f, *_ in REALISTIC} == set(ALL_FAMILIES)


def test_checker_leniency_is_limited_to_single_values():
  assert score("majority_vote", "Most workers said 42.", "42") == 1.0
  assert score("majority_vote", "The answer is 42 (three votes).", "42") == 1.0
  assert score("majority_vote", "42 or 43", "42") == 0.0
  assert score("majority_vote", "142", "42") == 0.0
  assert score("chat_recall", "Your gate is B7.", "B7") == 1.0
  # Word answers of a closed set (colours, cities): one member named, the right one.
  assert score("find_fact", "Her colour is red.", "red") == 1.0
  assert score("find_fact", "Her colour is red, not blue.", "red") == 0.0
  assert score("find_fact", "42 or Rome", "42") == 0.0
  assert score("chat_recall", "65398 or B91", "65398") == 0.0
  assert score("combine_partials", "river, lamp, stone", "river lamp stone") == 1.0
  assert score("combine_partials", "lamp river stone", "river lamp stone") == 0.0
  assert score("combine_partials", "The message is river lamp stone.", "river lamp stone") == 0.0
  with pytest.raises(ValueError):
    score("nope", "1", "1")


# --- each answer is derivable from the branches, and only from them ---------------------------


@pytest.mark.parametrize("family,difficulty", CASES)
def test_answer_is_never_in_the_query(family, difficulty):
  for r in _all_phrasings(family, difficulty):
    assert not _has(r.query, r.answer), (r.query, r.answer)


_QUERY = {
  "train": r"What is (\w+)'s (.+)\?",
  "heldout": r"Tell me the (?P<a>.+) of (?P<p>\w+)\.",
}


def _find_fact_query(r):
  m = re.fullmatch(_QUERY[r.meta["template"]], r.query)
  return (m.group("p"), m.group("a")) if r.meta["template"] == "heldout" else m.groups()


@pytest.mark.parametrize("family", ["find_fact", "chat_recall", "tool_lookup", "schedule_lookup"])
@pytest.mark.parametrize("difficulty", synthetic.DIFFICULTIES)
def test_lookup_answer_is_in_exactly_one_branch(family, difficulty):
  for r in _all_phrasings(family, difficulty):
    holders = [c for c in r.contexts if _has(c, r.answer)]
    assert len(holders) == 1, (r.answer, r.contexts)
    if family == "find_fact":  # the holder states the asked fact itself
      entity, attr = _find_fact_query(r)
      fact = synthetic._FIND_FACT[r.meta["template"]][0]
      assert fact.format(p=entity, a=attr, v=r.answer) in holders[0]
    if family == "schedule_lookup":
      city = re.fullmatch(r"At what time does the train to (\w+) leave\?", r.query).group(1)
      assert f"the train to {city} leaves at {r.answer} " in holders[0]


def test_find_fact_distractors_by_difficulty():
  for difficulty in synthetic.DIFFICULTIES:
    for r in _all_phrasings("find_fact", difficulty):
      attr = _find_fact_query(r)[1]
      marker = f"'s {attr} is" if r.meta["template"] == "train" else f"the {attr} is"
      with_attr = sum(marker in c for c in r.contexts)
      assert with_attr == (1 if difficulty == 1 else len(r.contexts))
      assert all(c.count(".") == (2 if difficulty == 3 else 1) for c in r.contexts)


@pytest.mark.parametrize("difficulty", synthetic.DIFFICULTIES)
def test_schedule_lookup_boards(difficulty):
  for r in _rows("schedule_lookup", difficulty):
    times = [t for c in r.contexts for t in re.findall(r"\d\d:\d\d", c)]
    assert len(times) == len(set(times)) == len(r.contexts) * (2 if difficulty == 3 else 1)
    modes = [re.match(r"Departures: the (\w+) to", c).group(1) for c in r.contexts]
    assert modes.count("train") == (1 if difficulty == 1 else len(r.contexts))
    city = re.search(r"train to (\w+) leave", r.query).group(1)
    assert sum(f"from {city} arrives" in c for c in r.contexts) == (difficulty == 3)


def _votes(r):
  if r.meta["family"] == "consensus_vote":
    return [re.match(r"\w+ (?:votes for|would pick|prefers) (\w+)", c).group(1) for c in r.contexts]
  return [re.search(r"(?:Answer|Result): (\d+)\.$", c).group(1) for c in r.contexts]


@pytest.mark.parametrize("family", ["majority_vote", "consensus_vote"])
@pytest.mark.parametrize("difficulty", synthetic.DIFFICULTIES)
def test_vote_winner_is_the_unique_most_common(family, difficulty):
  for r in _all_phrasings(family, difficulty):
    votes = collections.Counter(_votes(r))
    (top, m), *rest = votes.most_common()
    assert top == r.answer and all(c < m for _, c in rest)
    if difficulty == 1:
      assert m > len(r.contexts) / 2
    if difficulty == 3 and rest:
      assert rest[0][1] == min(m - 1, len(r.contexts) - m)  # runner-up as close as possible
    if family == "consensus_vote":  # the rejected city is another candidate, never the vote
      for c, vote in zip(r.contexts, _votes(r), strict=True):
        rejected = re.search(r" over (\w+)\.$", c)
        assert (rejected is not None) == (difficulty == 3)
        if rejected:
          assert rejected.group(1) != vote and rejected.group(1) in votes


_PARTS = {
  "train": r"Parts? ([\d and]+) of the message: ([\w ]+)\.",
  "heldout": r"Pieces? (#[\d and#]+) of the note reads?: ([\w ]+)\.",
}


@pytest.mark.parametrize("difficulty", synthetic.DIFFICULTIES)
def test_combine_partials_needs_every_branch(difficulty):
  for r in _all_phrasings("combine_partials", difficulty):
    parts = {}
    for c in r.contexts:
      nums, words = re.fullmatch(_PARTS[r.meta["template"]], c).groups()
      nums = nums.replace("#", "")
      parts.update(zip(map(int, nums.split(" and ")), words.split(), strict=True))
    assert " ".join(parts[k] for k in sorted(parts)) == r.answer
    assert sorted(parts) == list(range(1, len(r.answer.split()) + 1))
    for word in r.answer.split():
      assert sum(_has(c, word) for c in r.contexts) == 1
    in_order = list(r.contexts) == sorted(
      r.contexts, key=lambda c: int(re.search(r"\d+", c).group())
    )
    if difficulty == 1:
      assert in_order


_CANDIDATE = {
  "train": r"Candidate x = (\d+)\. Check: (\d+) \* (\d+) = (\d+)",
  "heldout": r"Trying x = (\d+): (\d+) times (\d+) gives (\d+)",
}


@pytest.mark.parametrize("difficulty", synthetic.DIFFICULTIES)
def test_verified_candidate_exactly_one_passes(difficulty):
  for r in _all_phrasings("verified_candidate", difficulty):
    _, _, passes, fails, *_ = synthetic._VERIFY[r.meta["template"]]
    passing = []
    for c in r.contexts:
      m = re.match(_CANDIDATE[r.meta["template"]], c)
      cand, cand_again, k, product = map(int, m.groups())
      assert cand == cand_again and cand * k == product
      if difficulty == 3:
        assert not c.endswith(passes) and not c.endswith(fails)
        ok = product == int(re.search(r"(?:target|goal is) (\d+)\.$", c).group(1))
      else:
        ok = c.endswith(passes)
        assert ok or c.endswith(fails)
        assert not (c.endswith(passes) and c.endswith(fails))
      if ok:
        passing.append(cand)
    assert passing == [int(r.answer)]
    assert sum(_has(c, r.answer) for c in r.contexts) == 1


def test_random_draws_do_not_depend_on_the_template():
  for name, fam in FAMILIES.items():
    for difficulty in synthetic.DIFFICULTIES:
      a, b = random.Random(3), random.Random(3)
      x = fam.make(a, 4, difficulty, "train")
      y = fam.make(b, 4, difficulty, "heldout")
      assert a.getstate() == b.getstate() and x[1] == y[1], name
