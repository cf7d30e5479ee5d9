"""Answer extraction and scoring. Pure functions over model output text.

Scores are 0.0 / 1.0. Nothing here raises on malformed model output (None, non-strings,
unbalanced braces, unparsable numbers, no answer at all): such output scores 0.0. A code
sandbox that refuses or breaks raises instead: that is no verdict on the answer.
"""

from __future__ import annotations

import math
import re
import string
from fractions import Fraction
from typing import Any

from ps_jax.evals.sandbox import SandboxLimits, run_code

__all__ = [
  "extract_boxed",
  "extract_math_answer",
  "math_equal",
  "score_math",
  "extract_choice_letter",
  "score_choice",
  "extract_final_answer",
  "normalize_answer",
  "score_exact_match",
  "extract_code",
  "build_code_program",
  "score_code",
  "score_example",
]

_LETTERS = "ABCDEFGHIJ"


# ----------------------------------------------------------------------------- boxed answers


def _boxed_contents(text: str) -> list[str]:
  """Contents of every \\boxed{...} / \\fbox{...} (nested braces), and of `\\boxed 5`."""
  out = []
  for m in re.finditer(r"\\(?:boxed|fbox)\s*", text):
    i = m.end()
    if i < len(text) and text[i] == "{":
      depth, j = 0, i
      while j < len(text):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
          out.append(text[i + 1 : j])
          break
        j += 1
      # an unclosed brace (truncated output) yields nothing
    elif m.group(0).endswith((" ", "\t")):
      token = re.match(r"[^\s$]+", text[i:])
      if token:
        out.append(token.group(0))
  return out


def extract_boxed(text: Any) -> str | None:
  """Content of the last \\boxed{...} in `text` (nested braces handled), else None.

  No fallback here; `extract_math_answer` adds the documented fallbacks.
  """
  if not isinstance(text, str):
    return None
  boxes = _boxed_contents(text)
  return boxes[-1].strip() if boxes else None


_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+"


def extract_math_answer(text: Any, fallback: bool = True) -> str | None:
  """Final answer of a math solution.

  Order: the last \\boxed{...}; then, only if `fallback`, the last "answer is X" /
  "Answer: X" / "#### X" phrase, then the last number in the text.
  """
  if not isinstance(text, str):
    return None
  boxed = extract_boxed(text)
  if boxed is not None or not fallback:
    return boxed
  phrases = re.findall(
    r"(?:answer\s*(?:is|:)|####)\s*:?\s*\$*([^\n$]+?)\s*\$*(?:\.\s|\.?$|\n)",
    text,
    flags=re.IGNORECASE,
  )
  if phrases:
    return phrases[-1].strip()
  numbers = re.findall(_NUMBER, text)
  return numbers[-1] if numbers else None


def _strip_latex(s: str) -> str:
  s = s.strip().strip("$").strip()
  s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
  s = re.sub(r"\\[dt]frac", r"\\frac", s)
  s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
  s = s.replace("\\$", "").replace("\\%", "%").replace("^\\circ", "").replace("^{\\circ}", "")
  s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 5" -> "5"
  return s.strip().rstrip(".").strip()


def _to_number(s: str) -> Fraction | float | None:
  """Parse a plain number, a fraction a/b or \\frac{a}{b}; units after a number are ignored."""
  s = _strip_latex(s).replace("$", "").replace("%", "").replace(" ", "")
  if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
    s = s.replace(",", "")  # thousands separators only; "1,2" stays unparsable
  m = re.fullmatch(r"(-?)\\frac\{?(-?\d+)\}?\{?(-?\d+)\}?", s)
  if m:
    s = f"{m.group(1)}{m.group(2)}/{m.group(3)}"
  if not re.fullmatch(r"-?(\d+(\.\d*)?|\.\d+)(/-?\d+(\.\d*)?)?", s):
    unit = re.fullmatch(r"(-?\d+(?:\.\d+)?)[a-zA-Z]+", s)  # "18dollars", "5cm"
    if not unit:
      return None
    s = unit.group(1)
  try:
    return Fraction(s)
  except (ValueError, ZeroDivisionError):
    return None


def math_equal(pred: Any, gold: Any) -> bool:
  """Numeric equality tolerant of commas, $, %, trailing .0, a/b and \\frac{a}{b};
  otherwise equality of the LaTeX-stripped, space-free strings."""
  try:
    if pred is None or gold is None:
      return False
    p, g = str(pred), str(gold)
    pn, gn = _to_number(p), _to_number(g)
    if pn is not None and gn is not None:
      if pn == gn:
        return True
      return math.isclose(float(pn), float(gn), rel_tol=1e-6, abs_tol=1e-9)
    if pn is not None or gn is not None:
      return False

    def norm(s: str) -> str:
      return re.sub(r"\s+", "", _strip_latex(s)).lower()

    return bool(norm(p)) and norm(p) == norm(g)
  except Exception:  # malformed output never crashes scoring
    return False


def score_math(output: Any, gold: Any, fallback: bool = True) -> float:
  """1.0 when the output's final answer (see `extract_math_answer`) equals `gold`."""
  return float(math_equal(extract_math_answer(output, fallback=fallback), gold))


# ----------------------------------------------------------------------------- multiple choice


def extract_choice_letter(text: Any, num_options: int = 4) -> str | None:
  """The option letter the output asserts, or None when there is none or several differ.

  Assertions are \\boxed{C} (also \\boxed{(C)}, \\boxed{\\text{C}}) and phrases such as
  "The answer is (B)", "Answer: D", "correct option is C". When there are none, an output
  that is just a letter ("B", "(B)", "B.") or starts with "(B)" / "B)" counts.
  """
  if not isinstance(text, str) or num_options < 1:
    return None
  valid = _LETTERS[:num_options]
  letter = r"[\(\[\*\s{]*(?:\\text(?:bf)?\{)?\s*([A-J])\s*\}?[\)\]\*]*"
  found: list[str] = []
  for box in _boxed_contents(text):
    m = re.fullmatch(letter + r"(?:[.:)]\s*.*)?", box.strip(), flags=re.DOTALL)
    if m:
      found.append(m.group(1))
  # "option"/"choice" alone would catch "let's check option A", so only answer phrases count;
  # "the answer is A or B" asserts both letters (ambiguous).
  phrase = (
    r"(?:answer|(?:correct|best|right) (?:option|choice))\s*"
    r"(?:is|:|would be|should be)?\s*:?\s*(?:option\s*|choice\s*)?\$?(?:\\boxed\{)?"
    + letter
    + r"(?![A-Za-z0-9])"
    r"(?:\s*(?:or|and|,|/)\s*[\(\[]?([A-J])(?![A-Za-z0-9]))?"
  )
  for first, second in re.findall(phrase, text, flags=re.IGNORECASE):
    found += [first, second] if second else [first]
  # "answer is a ..." (article) must not count, so only upper-case letters are letters.
  found = [f for f in found if f in valid]
  if not found:
    m = re.fullmatch(r"\s*\(?([A-J])\)?\.?\s*", text) or re.match(r"\s*\(?([A-J])\)\s", text)
    if m and m.group(1) in valid:
      found = [m.group(1)]
  return found[0] if found and len(set(found)) == 1 else None


def score_choice(output: Any, gold_letter: Any, num_options: int = 4) -> float:
  if not isinstance(gold_letter, str):
    return 0.0
  return float(extract_choice_letter(output, num_options) == gold_letter.strip().upper())


# ----------------------------------------------------------------------------- exact match (GAIA)

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def extract_final_answer(output: Any) -> str:
  """GAIA convention: the text after the last "FINAL ANSWER:" (to the end of its line);
  else the last \\boxed{...}; else the whole output."""
  if not isinstance(output, str):
    return ""
  hits = re.findall(r"FINAL ANSWER\s*:\s*([^\n]*)", output, flags=re.IGNORECASE)
  if hits:
    return hits[-1].strip()
  boxed = extract_boxed(output)
  return boxed if boxed is not None else output.strip()


def normalize_answer(s: Any) -> str:
  """Lower-case, drop punctuation and articles (a/an/the), drop all whitespace.

  Articles stay when they are all there is (an answer "A" must not normalise to "").
  """
  if not isinstance(s, str):
    return ""
  s = s.lower().translate(str.maketrans("", "", string.punctuation))
  return re.sub(r"\s+", "", _ARTICLES.sub(" ", s)) or re.sub(r"\s+", "", s)


def _plain_number(s: str) -> float | None:
  s = s.strip().replace("$", "").replace("%", "").replace(",", "").replace(" ", "")
  try:
    x = float(s)
  except ValueError:
    return None
  return x if math.isfinite(x) else None


def _is_thousands(s: str) -> bool:
  return re.fullmatch(r"\s*\$?-?\d{1,3}(,\d{3})+(\.\d+)?%?\s*", s) is not None


def _elem_equal(pred: str, gold: str) -> bool:
  g = _plain_number(gold)
  if g is not None:
    p = _plain_number(pred)
    return p is not None and math.isclose(p, g, rel_tol=1e-9, abs_tol=1e-12)
  return normalize_answer(pred) == normalize_answer(gold) != ""


def score_exact_match(output: Any, gold: Any) -> float:
  """GAIA-style normalised exact match of `extract_final_answer(output)` against `gold`.

  A numeric gold compares numerically ("$1,000" == "1000"); a gold with "," or ";" (and not a
  thousands-separated number) is a list compared element-wise; anything else compares
  after `normalize_answer`.
  """
  try:
    if not isinstance(gold, str):
      gold = "" if gold is None else str(gold)
    pred = extract_final_answer(output)
    if _plain_number(gold) is not None and (_is_thousands(gold) or "," not in gold):
      return float(_elem_equal(pred, gold))
    if re.search(r"[,;]", gold):
      g_items, p_items = re.split(r"[,;]", gold), re.split(r"[,;]", pred)
      return float(
        len(g_items) == len(p_items)
        and all(_elem_equal(p, g) for p, g in zip(p_items, g_items, strict=True))
      )
    return float(_elem_equal(pred, gold))
  except Exception:
    return 0.0


# ----------------------------------------------------------------------------- code

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(output: Any, entry_point: str | None = None) -> str:
  """Python code of a chat answer.

  The first ```python (or ```py / ```python3) block, preferring the first one that defines
  `entry_point` when given; else the first untagged ``` block; else the whole text. An
  unterminated fence (truncated output) runs to the end of the text.
  """
  if not isinstance(output, str):
    return ""
  blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(output)]
  python = [code for lang, code in blocks if lang in ("python", "py", "python3")]
  untagged = [code for lang, code in blocks if lang == ""]
  for group in (python, untagged):
    if entry_point:
      for code in group:
        if re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M):
          return code
    if group:
      return group[0]
  return output


def build_code_program(code: str, prompt: str, test: str, entry_point: str) -> str:
  """Program run for a code answer: prompt (see below) + code + tests + `check(entry_point)`
  when the tests define `check` (HumanEval style; MBPP tests call the function directly)."""
  defines = re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M)
  # A full function is appended after the prompt (keeping its imports and helpers; the
  # redefinition wins); a bare body continues the prompt's signature.
  head = prompt + "\n\n" if defines else prompt
  program = f"{head}{code}\n\n{test}\n"
  if re.search(r"^def\s+check\s*\(", test, re.M):
    program += f"\ncheck({entry_point})\n"
  return program


def score_code(
  output: Any,
  prompt: str,
  test: str,
  entry_point: str,
  timeout_s: float = 10.0,
  limits: SandboxLimits = SandboxLimits(),
) -> float:
  """1.0 when the extracted code runs `test` to completion in the sandbox (pass@1).

  Raises RuntimeError when the sandbox refuses to run (no containment and no opt-in) or
  fails itself, rather than scoring the answer 0.
  """
  code = extract_code(output, entry_point)
  if not code.strip():
    return 0.0
  program = build_code_program(code, prompt or "", test or "", entry_point)
  passed, detail = run_code(program, timeout_s, limits)
  if detail.startswith(("refused", "sandbox error")):
    raise RuntimeError(f"code scoring: {detail}")
  return float(passed)


def score_example(
  example: Any, output: Any, timeout_s: float = 10.0, limits: SandboxLimits = SandboxLimits()
) -> float:
  """Score `output` against an `EvalExample` by its kind."""
  kind = getattr(example, "kind", None)
  if kind == "math":
    return score_math(output, example.gold)
  if kind == "choice":
    return score_choice(output, example.gold, max(len(example.options), 1))
  if kind == "exact":
    return score_exact_match(output, example.gold)
  if kind == "code":
    return score_code(
      output, example.code_prefix, example.test, example.entry_point, timeout_s, limits
    )
  raise ValueError(f"unknown example kind {kind!r}; expected math, choice, code or exact")
