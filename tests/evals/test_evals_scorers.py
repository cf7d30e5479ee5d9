"""Scorers: right answers score 1, wrong or malformed outputs score 0, nothing raises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ps_jax.evals import (
  extract_boxed,
  extract_choice_letter,
  extract_code,
  extract_final_answer,
  extract_math_answer,
  math_equal,
  normalize_answer,
  score_choice,
  score_code,
  score_exact_match,
  score_math,
)

# ----------------------------------------------------------------------------- math


@pytest.mark.parametrize(
  "text, expect",
  [
    (r"so the answer is \boxed{72}.", "72"),
    (r"\boxed{1} first, then \boxed{\frac{3}{4}}", r"\frac{3}{4}"),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
    (r"$\boxed 5$", "5"),
    (r"\fbox{12}", "12"),
    (r"no box here: 42", None),
    (r"\boxed{unclosed {brace", None),
    ("", None),
    (None, None),
    (12, None),
  ],
)
def test_extract_boxed(text, expect):
  assert extract_boxed(text) == expect


@pytest.mark.parametrize(
  "text, expect",
  [
    (r"\boxed{18}", "18"),
    ("Thus the answer is 42.", "42"),
    ("The final answer is $18.", "18"),
    ("Answer: 7", "7"),
    ("#### 1,000", "1,000"),
    ("first 3 then 5 and finally 9 apples", "9"),
    ("no numbers at all", None),
  ],
)
def test_extract_math_answer_fallbacks(text, expect):
  assert extract_math_answer(text) == expect


def test_extract_math_answer_without_fallback():
  assert extract_math_answer("The answer is 42.", fallback=False) is None


@pytest.mark.parametrize(
  "pred, gold",
  [
    ("72", "72"),
    ("72.0", "72"),
    ("1,000", "1000"),
    ("$18", "18"),
    (r"\$18.00", "18"),
    ("50%", "50"),
    (r"50\%", "50"),
    ("3/4", "0.75"),
    (r"\frac{3}{4}", "3/4"),
    (r"\dfrac34", "0.75"),
    ("-2", "-2"),
    ("033", "33"),
    ("x = 5", "5"),
    (r"18 \text{ dollars}", "18"),
    ("18 dollars", "18"),
    (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt{3}}{2}"),
    (r"\left( 1, 2 \right)", "(1,2)"),
    ("9" * 400, "9" * 400),
  ],
)
def test_math_equal_true(pred, gold):
  assert math_equal(pred, gold)


@pytest.mark.parametrize(
  "pred, gold",
  [
    ("71", "72"),
    ("1,2", "12"),
    ("abc", "72"),
    ("", ""),
    (None, "1"),
    ("1/0", "1"),
    ("3/4", "4/3"),
    ("1e999", "1"),
    (r"\frac{", "1"),
    ("{{{", "{{{x"),
  ],
)
def test_math_equal_false(pred, gold):
  assert not math_equal(pred, gold)


@pytest.mark.parametrize(
  "output, gold, score",
  [
    (r"... so she sold \boxed{72} clips.", "72", 1.0),
    (r"\boxed{72.0}", "72", 1.0),
    (r"\boxed{71}", "72", 0.0),
    ("I don't know", "72", 0.0),
    (r"\boxed{}", "72", 0.0),
    (r"\boxed{seventy-two}", "72", 0.0),
    (r"\boxed{1/0}", "72", 0.0),
    (None, "72", 0.0),
    (r"\boxed{204}", 204, 1.0),
  ],
)
def test_score_math(output, gold, score):
  assert score_math(output, gold) == score


# ----------------------------------------------------------------------------- choice


@pytest.mark.parametrize(
  "text, expect",
  [
    ("The answer is (B)", "B"),
    (r"Therefore \boxed{C}.", "C"),
    (r"\boxed{\text{C}}", "C"),
    (r"\boxed{(A)}", "A"),
    ("Answer: D", "D"),
    ("answer: **C**", "C"),
    ("The correct option is (D).", "D"),
    ("Let me check option A first. ... The answer is C.", "C"),
    ("B", "B"),
    ("(B)", "B"),
    ("B) because it is larger", "B"),
    (r"The answer is $\boxed{B}$", "B"),
    # ambiguous or absent
    ("The answer is A. Wait, no: the answer is B.", None),
    ("The answer is A or B", None),
    (r"\boxed{A} and \boxed{B}", None),
    ("A new approach is needed", None),
    ("The answer is a good question", None),
    ("Answer: Both", None),
    (r"\boxed{E}", None),  # not one of 4 options
    ("", None),
    (None, None),
  ],
)
def test_extract_choice_letter(text, expect):
  assert extract_choice_letter(text) == expect


def test_extract_choice_letter_more_options():
  assert extract_choice_letter(r"\boxed{E}", num_options=5) == "E"


@pytest.mark.parametrize(
  "output, gold, score",
  [
    ("The answer is (B)", "B", 1.0),
    ("The answer is (B)", "b", 1.0),
    ("The answer is (B)", "C", 0.0),
    ("The answer is A, or maybe the answer is B", "A", 0.0),
    ("no letter", "A", 0.0),
    ("The answer is (B)", None, 0.0),
  ],
)
def test_score_choice(output, gold, score):
  assert score_choice(output, gold) == score


# ----------------------------------------------------------------------------- exact match


@pytest.mark.parametrize(
  "raw, expect",
  [
    ("The Egalitarian!", "egalitarian"),
    ("  a Tale of Two  Cities. ", "taleoftwocities"),
    (None, ""),
  ],
)
def test_normalize_answer(raw, expect):
  assert normalize_answer(raw) == expect


@pytest.mark.parametrize(
  "output, gold, score",
  [
    ("FINAL ANSWER: egalitarian", "egalitarian", 1.0),
    ("Reasoning...\nFINAL ANSWER: The Egalitarian.", "egalitarian", 1.0),
    ("FINAL ANSWER: 41.0", "41", 1.0),
    ("FINAL ANSWER: $1,000", "1000", 1.0),
    ("FINAL ANSWER: 1000", "1,000", 1.0),
    ("FINAL ANSWER: 34689, 34690", "34689,34690", 1.0),
    ("FINAL ANSWER: 34690, 34689", "34689,34690", 0.0),
    ("FINAL ANSWER: a, b; c", "a; b, c", 1.0),
    ("FINAL ANSWER: 34689", "34689,34690", 0.0),
    (r"\boxed{41}", "41", 1.0),
    ("41", "41", 1.0),
    ("FINAL ANSWER: forty-one", "41", 0.0),
    ("FINAL ANSWER:", "41", 0.0),
    ("FINAL ANSWER: x", "", 0.0),
    (None, "41", 0.0),
    ("FINAL ANSWER: 41", None, 0.0),
  ],
)
def test_score_exact_match(output, gold, score):
  assert score_exact_match(output, gold) == score


def test_extract_final_answer_takes_last():
  assert extract_final_answer("FINAL ANSWER: 1\nno wait\nFINAL ANSWER: 2") == "2"


# ----------------------------------------------------------------------------- code

CHAT = """Here is my solution:

```python
def add(a, b):
    return a + b
```

And a usage example:

```python
print(add(1, 2))
```
"""


def test_extract_code():
  assert extract_code(CHAT).strip() == "def add(a, b):\n    return a + b"
  assert extract_code("x = 1") == "x = 1"
  assert extract_code("```\nuntagged = 1\n```") == "untagged = 1\n"
  assert extract_code("```python\ntruncated = 1\n") == "truncated = 1\n"
  helper = "```python\ndef helper():\n    pass\n```\n```py\ndef add(a, b):\n    return a + b\n```"
  assert "def add" in extract_code(helper, entry_point="add")
  assert extract_code(None) == ""


PROMPT = 'def add(a: int, b: int) -> int:\n    """Sum of a and b."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


@pytest.mark.parametrize(
  "output, score",
  [
    ("    return a + b\n", 1.0),  # completion of the prompt
    (CHAT, 1.0),  # full function in a chat answer
    ("```python\ndef add(a, b):\n    return a - b\n```", 0.0),
    ("    return None\n", 0.0),
    ("I cannot solve this.", 0.0),  # prose is not code
    ("", 0.0),
    (None, 0.0),
    ("```python\nwhile True:\n    pass\n```", 0.0),  # hits the timeout
  ],
)
def test_score_code(output, score):
  assert score_code(output, PROMPT, TEST, "add", timeout_s=2.0) == score


def test_score_code_mbpp_style_asserts():
  test = "assert add(2, 3) == 5\nassert add(0, 0) == 0\n"
  assert score_code("def add(a, b):\n    return a + b\n", "", test, "add") == 1.0
  assert score_code("def add(a, b):\n    return 5\n", "", test, "add") == 0.0


# ----------------------------------------------------------------------------- fuzz


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="\\boxed{}()$ABCD0123456789.,/%-:answer is\n")))
def test_scorers_never_raise(text):
  for value in (
    score_math(text, "72"),
    score_choice(text, "B"),
    score_exact_match(text, "1,2"),
    score_exact_match(text, "egalitarian"),
  ):
    assert value in (0.0, 1.0)
  extract_boxed(text)
  extract_choice_letter(text)
  extract_code(text, "f")
  math_equal(text, text)
