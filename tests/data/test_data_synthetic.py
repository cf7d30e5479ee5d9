"""Synthetic suite: determinism, disjoint splits, parameters, checker, derivability."""

import collections
import re

import pytest

from ps_jax.data import synthetic
from ps_jax.data.synthetic import FAMILIES, generate, normalize, score, split_of

CASES = [(f, d) for f in FAMILIES for d in synthetic.DIFFICULTIES]


def _rows(family, difficulty, n=40, split="train", branches=(3, 6)):
  return generate(family, split, n, seed=7, num_branches=branches, difficulty=difficulty)


def _has(text, answer):
  """``answer`` occurs in ``text`` as whole normalised tokens."""
  return re.search(rf"(?<!\S){re.escape(normalize(answer))}(?!\S)", normalize(text)) is not None


def test_every_role_has_a_family():
  assert {f.role for f in FAMILIES.values()} == {"exposure", "aggregation", "distillation"}
  assert {"majority_vote", "find_fact", "combine_partials", "verified_candidate"} <= set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_by_seed(family):
  a = generate(family, "train", 20, seed=1, num_branches=4, difficulty=2)
  assert a == generate(family, "train", 20, seed=1, num_branches=4, difficulty=2)
  assert a != generate(family, "train", 20, seed=2, num_branches=4, difficulty=2)


@pytest.mark.parametrize("family", FAMILIES)
def test_train_and_heldout_are_disjoint(family):
  def keys(split):
    rows = [r for d in synthetic.DIFFICULTIES for r in _rows(family, d, n=150, split=split)]
    assert all(r.meta["split"] == split for r in rows)
    assert all(split_of(family, r.query, r.answer) == split for r in rows)
    return {(r.query, r.answer) for r in rows}

  train, heldout = keys("train"), keys("heldout")
  assert len(heldout) > 10 and not train & heldout


@pytest.mark.parametrize("family,difficulty", CASES)
def test_branch_count_difficulty_meta_and_size(family, difficulty):
  rows = _rows(family, difficulty)
  assert {len(r.contexts) for r in rows} == {3, 4, 5, 6}  # the (low, high) range, inclusive
  fixed = generate(family, "train", 10, seed=0, num_branches=5, difficulty=difficulty)
  assert {len(r.contexts) for r in fixed} == {5}
  for r in rows:
    assert r.source == f"synthetic/{family}"
    assert r.meta["family"] == family and r.meta["difficulty"] == difficulty
    assert r.meta["role"] == FAMILIES[family].role
    # Short enough for a 135M model: ~1.3 tokens per word.
    assert all(3 <= len(c.split()) <= 40 for c in r.contexts), r.contexts
    assert len(r.answer.split()) <= (2 * 6 if family == "combine_partials" else 1)
  many = generate(
    family, "heldout", 3, seed=0, num_branches=synthetic.MAX_BRANCHES, difficulty=difficulty
  )
  assert all(len(r.contexts) == synthetic.MAX_BRANCHES for r in many)


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


@pytest.mark.parametrize("family,difficulty", CASES)
def test_checker_accepts_gold_and_rejects_wrong(family, difficulty):
  rows = _rows(family, difficulty, n=10)
  for r, other in zip(rows, rows[1:] + rows[:1], strict=True):
    gold = r.answer
    for pred in (
      gold,
      f"  {gold.upper()}. ",
      f"The answer is {gold}.",
      f"Answer: {gold}\nbecause...",
      f"reasoning... \\boxed{{{gold}}}",
    ):
      assert score(family, pred, gold) == 1.0, pred
    if other.answer != gold:
      assert score(family, other.answer, gold) == 0.0
      assert score(family, f"The answer is {other.answer}.", gold) == 0.0
    assert score(family, "", gold) == 0.0


def test_checker_leniency_is_limited_to_single_values():
  assert score("majority_vote", "Most workers said 42.", "42") == 1.0
  assert score("majority_vote", "The answer is 42 (three votes).", "42") == 1.0
  assert score("majority_vote", "42 or 43", "42") == 0.0
  assert score("majority_vote", "142", "42") == 0.0
  assert score("chat_recall", "Your gate is B7.", "B7") == 1.0
  assert score("find_fact", "Her colour is red.", "red") == 0.0  # word answers: exact only
  assert score("combine_partials", "river, lamp, stone", "river lamp stone") == 1.0
  assert score("combine_partials", "lamp river stone", "river lamp stone") == 0.0
  assert score("combine_partials", "The message is river lamp stone.", "river lamp stone") == 0.0
  with pytest.raises(ValueError):
    score("nope", "1", "1")


# --- each answer is derivable from the branches, and only from them ---------------------------


@pytest.mark.parametrize("family,difficulty", CASES)
def test_answer_is_never_in_the_query(family, difficulty):
  for r in _rows(family, difficulty):
    assert not _has(r.query, r.answer), (r.query, r.answer)


@pytest.mark.parametrize("family", ["find_fact", "chat_recall", "tool_lookup"])
@pytest.mark.parametrize("difficulty", synthetic.DIFFICULTIES)
def test_lookup_answer_is_in_exactly_one_branch(family, difficulty):
  for r in _rows(family, difficulty):
    holders = [c for c in r.contexts if _has(c, r.answer)]
    assert len(holders) == 1, (r.answer, r.contexts)
    if family == "find_fact":  # the holder states the asked fact itself
      entity, attr = re.fullmatch(r"What is (\w+)'s (.+)\?", r.query).groups()
      assert f"{entity}'s {attr} is {r.answer}." in holders[0]


def test_find_fact_distractors_by_difficulty():
  for difficulty in synthetic.DIFFICULTIES:
    for r in _rows("find_fact", difficulty):
      attr = re.fullmatch(r"What is \w+'s (.+)\?", r.query).group(1)
      with_attr = sum(f"'s {attr} is" in c for c in r.contexts)
      assert with_attr == (1 if difficulty == 1 else len(r.contexts))
      assert all(c.count(".") == (2 if difficulty == 3 else 1) for c in r.contexts)


@pytest.mark.parametrize("difficulty", synthetic.DIFFICULTIES)
def test_majority_vote_winner_is_the_unique_most_common(difficulty):
  for r in _rows("majority_vote", difficulty):
    votes = collections.Counter(re.search(r"Answer: (\d+)\.$", c).group(1) for c in r.contexts)
    (top, m), *rest = votes.most_common()
    assert top == r.answer and all(c < m for _, c in rest)
    if difficulty == 1:
      assert m > len(r.contexts) / 2
    if difficulty == 3 and rest:
      assert rest[0][1] == min(m - 1, len(r.contexts) - m)  # runner-up as close as possible


@pytest.mark.parametrize("difficulty", synthetic.DIFFICULTIES)
def test_combine_partials_needs_every_branch(difficulty):
  for r in _rows("combine_partials", difficulty):
    parts = {}
    for c in r.contexts:
      nums, words = re.fullmatch(r"Parts? ([\d and]+) of the message: ([\w ]+)\.", c).groups()
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


@pytest.mark.parametrize("difficulty", synthetic.DIFFICULTIES)
def test_verified_candidate_exactly_one_passes(difficulty):
  for r in _rows("verified_candidate", difficulty):
    passing = []
    for c in r.contexts:
      m = re.match(r"Candidate x = (\d+)\. Check: (\d+) \* (\d+) = (\d+)", c)
      cand, cand_again, k, product = map(int, m.groups())
      assert cand == cand_again and cand * k == product
      if difficulty == 3:
        assert "passed" not in c.lower() and "failed" not in c.lower()
        ok = product == int(re.search(r"target (\d+)\.$", c).group(1))
      else:
        ok = c.endswith(synthetic._PASS)
        assert ok or c.endswith(synthetic._FAIL)
      if ok:
        passing.append(cand)
    assert passing == [int(r.answer)]
    assert sum(_has(c, r.answer) for c in r.contexts) == 1
