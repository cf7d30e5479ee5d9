r"""GAIA answer scoring: the release's rule and the leaderboard's quasi-exact match.

`score_release` is `free_form_exact_match` of the authors' release (`toolcall/scoring.py`),
bug-compatible: its whitespace collapse is written `r"\\s+"`, which matches a backslash followed
by s's, not whitespace, so internal whitespace is kept (and a literal `\s` becomes a space).

`score_official` is `question_scorer` of the GAIA leaderboard,
https://huggingface.co/spaces/gaia-benchmark/leaderboard/blob/main/scorer.py (Apache-2.0),
rule for rule: the branch is chosen by the gold answer. A gold that parses as a float is
compared as a number (the prediction loses `$`, `%` and `,`; anything else unparsable fails);
a gold containing `,` or `;` is a list, both sides are split on either, the lengths must match
and elements compare as numbers (gold element is a float) or as strings with all whitespace
removed, lower-cased, punctuation kept; any other gold is a string compared with all
whitespace and punctuation removed, lower-cased.

Where they differ (tests/agents/test_gaia.py): `$1,000` vs `1000` (official only),
`a,b` vs `a, b` and `Sea Gull` vs `seagull` (official only; the release keeps inner
whitespace), `17 km` vs `17` (neither), `The Answer!` vs `the answer` and `(x)` vs `x` (both).

Both refuse a hidden test-split gold (`?`): the official string rule would call any
punctuation-only prediction right, the release's would call everything wrong.
"""

from __future__ import annotations

import re
import string

HIDDEN_ANSWER = "?"  # the test split's placeholder for a withheld answer

__all__ = ["HIDDEN_ANSWER", "extract_answer_text", "score_official", "score_release"]

_ANSWER = re.compile(r"<answer>([\s\S]*?)</answer>", re.IGNORECASE)
_RELEASE_OUTER = " \n\t\r\"'`.,;:!?()[]{}"


def _check_gold(gold: str) -> str:
  if not isinstance(gold, str):
    raise TypeError(f"gold must be a str, got {type(gold).__name__}")
  if gold.strip() == HIDDEN_ANSWER:
    raise ValueError("gold is the hidden test-split answer '?': this task cannot be scored")
  return gold


def extract_answer_text(raw: str) -> str:
  """The release's `extract_answer_text`: the text after the last `</think>`, then the first
  `<answer>...</answer>` peeled "repeatedly", stripped. As in the release, the lazy match
  cannot hold a closing tag, so `<answer><answer>x</answer></answer>` gives `<answer>x`."""
  text = str(raw).rpartition("</think>")[2]  # the whole text when there is none
  while (m := _ANSWER.search(text)) is not None:
    inner = m.group(1).strip()
    if inner == text.strip():
      break
    text = inner
  return text.strip()


# ------------------------------------------------------------------------------ the release


def _release_normalize(text: str | None) -> str:
  if text is None:
    return ""
  s = str(text).strip().lower()
  s = re.sub(r"\\s+", " ", s)  # the release's pattern, kept: see the module docstring
  return s.strip(_RELEASE_OUTER)


def _release_float(text: str) -> float | None:
  try:
    return float(text.replace(",", ""))
  except ValueError:
    return None


def score_release(prediction: str | None, gold: str) -> bool:
  """The release's normalised exact match (research note 2.6): lower-case, strip outer
  whitespace/quotes/brackets/punctuation, equal strings, else equal floats (commas removed,
  |diff| <= 1e-9). An empty side is wrong."""
  p, g = _release_normalize(prediction), _release_normalize(_check_gold(gold))
  if not p or not g:
    return False
  if p == g:
    return True
  pf, gf = _release_float(p), _release_float(g)
  return pf is not None and gf is not None and abs(pf - gf) <= 1e-9


# ------------------------------------------------------------------------ the leaderboard's


def _is_float(s: str) -> bool:
  try:
    float(s)
  except ValueError:
    return False
  return True


def _official_number(s: str) -> float:
  for ch in "$%,":
    s = s.replace(ch, "")
  try:
    return float(s)
  except ValueError:
    return float("inf")  # as the leaderboard: never equal to a finite gold


def _official_str(s: str, remove_punct: bool = True) -> str:
  s = re.sub(r"\s", "", s).lower()
  return s.translate(str.maketrans("", "", string.punctuation)) if remove_punct else s


def score_official(prediction: str | None, gold: str) -> bool:
  """GAIA's `question_scorer` (quasi-exact match); see the module docstring."""
  gold = _check_gold(gold)
  pred = "None" if prediction is None else str(prediction)  # as the leaderboard does
  if _is_float(gold):
    return _official_number(pred) == float(gold)
  if "," in gold or ";" in gold:
    gold_items, pred_items = re.split(r"[,;]", gold), re.split(r"[,;]", pred)
    if len(gold_items) != len(pred_items):
      return False
    return all(
      _official_number(p) == float(g)
      if _is_float(g)
      else _official_str(p, remove_punct=False) == _official_str(g, remove_punct=False)
      for p, g in zip(pred_items, gold_items, strict=True)
    )
  return _official_str(pred) == _official_str(gold)
