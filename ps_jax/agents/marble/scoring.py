"""MARBLE label scoring with the release's rules (`marble_db/scoring.py`), and chance level.

Extraction (`extract_predicted_root_causes`), in the release's order:
1. the payload is the last non-empty `<answer>...</answer>` block, else the text after the
   last `</think>`, else the whole text;
2. JSON candidates: the payload and each ``` fenced block; a candidate that does not parse
   whole is tried as its `{...}` span and as its `[...]` span. From an object with
   `root_causes` / `root_cause` / `predicted_root_causes` only those values count, otherwise
   every string value (nested). A string names a label if, upper-cased, it equals the label,
   or contains it (then every contained label counts, in the allowed labels' order);
3. if fewer than max(1, N) labels were found, the labels named anywhere in the payload
   (case-insensitive) are added in order of first appearance;
4. the first N are kept.
`task_score` = gold hits / number of gold labels; `correct` when every gold label is hit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from fractions import Fraction
from math import comb
from typing import Any

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.IGNORECASE | re.DOTALL)
_PREFERRED = ("root_causes", "root_cause", "predicted_root_causes")


def answer_payload(text: str) -> str:
  blocks = [b.strip() for b in _ANSWER.findall(str(text)) if b.strip()]
  if blocks:
    return blocks[-1]
  _, sep, after = str(text).rpartition("</think>")
  return (after if sep else str(text)).strip()


def _parsed(payload: str) -> Iterator[Any]:
  for cand in [payload, *(m.strip() for m in _FENCE.findall(payload))]:
    try:
      yield json.loads(cand)
      continue
    except (ValueError, RecursionError):
      pass
    for lo, hi in ("{}", "[]"):
      i, j = cand.find(lo), cand.rfind(hi)
      if i != -1 and j > i:
        try:
          yield json.loads(cand[i : j + 1])
        except (ValueError, RecursionError):
          pass


def _strings(value: Any) -> Iterator[str]:
  if isinstance(value, str):
    yield value
  elif isinstance(value, list):
    for v in value:
      yield from _strings(v)
  elif isinstance(value, dict):
    for v in value.values():
      yield from _strings(v)


def extract_predicted_root_causes(
  raw_text: str, labels: Sequence[str], *, max_labels: int = 2
) -> list[str]:
  payload = answer_payload(raw_text)
  by_upper = {str(lab).strip().upper(): str(lab).strip() for lab in labels}
  found: list[str] = []

  def add(label: str | None) -> None:
    if label and label not in found:
      found.append(label)

  for obj in _parsed(payload):
    if isinstance(obj, dict) and any(k in obj for k in _PREFERRED):
      values = [s for k in _PREFERRED if k in obj for s in _strings(obj[k])]
    else:
      values = list(_strings(obj))
    for s in values:
      up = s.strip().upper()
      add(by_upper.get(up))
      for lab_up, lab in by_upper.items():
        if lab_up in up:
          add(lab)

  if len(found) < max(1, max_labels):
    hits = []
    for lab in labels:
      m = re.search(re.escape(lab), payload, re.IGNORECASE)
      if m:
        hits.append((m.start(), lab))
    for _, lab in sorted(hits, key=lambda h: h[0]):
      add(lab)
  return found[:max_labels] if max_labels > 0 else found


def score_prediction(
  raw_text: str, labels: Sequence[str], gold: Sequence[str], max_labels: int
) -> dict[str, Any]:
  predicted = extract_predicted_root_causes(raw_text, labels, max_labels=max_labels)
  gold = [str(g).strip() for g in gold if str(g).strip()]
  hits = sum(g in predicted for g in gold)
  task_score = hits / len(gold) if gold else 0.0
  return {
    "predicted_root_causes": predicted,
    "gold_root_causes": gold,
    "hit_count": hits,
    "task_score": float(task_score),
    "correct": task_score >= 0.999999,
  }


def score_case(raw_text: str, case) -> dict[str, Any]:
  """`score_prediction` for a `MarbleCase`."""
  return score_prediction(raw_text, case.labels, case.root_causes, case.number_of_labels_pred)


def task_score(predicted: Iterable[str], gold: Sequence[str]) -> float:
  predicted = set(predicted)
  return sum(g in predicted for g in gold) / len(gold) if gold else 0.0


def correct(predicted: Iterable[str], gold: Sequence[str]) -> bool:
  return task_score(predicted, gold) >= 0.999999


def summarize(preds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The release's summary of scored rows (plus optional ttft_sec / cache_prepare_sec)."""
  n = len(preds)

  def mean(key: str) -> float | None:
    xs = [float(r[key]) for r in preds if r.get(key) is not None]
    return round(sum(xs) / len(xs), 4) if xs else None

  n_correct = sum(bool(r.get("correct")) for r in preds)
  return {
    "samples": n,
    "correct": n_correct,
    "accuracy": n_correct / n if n else 0.0,
    "avg_task_score": sum(float(r.get("task_score") or 0) for r in preds) / n if n else 0.0,
    "avg_predicted_root_causes": (
      round(sum(len(r.get("predicted_root_causes") or []) for r in preds) / n, 4) if n else 0.0
    ),
    "avg_ttft_sec": mean("ttft_sec"),
    "ttft_measured_samples": sum(r.get("ttft_sec") is not None for r in preds),
    "avg_cache_prepare_sec": mean("cache_prepare_sec"),
    "cache_prepare_measured_samples": sum(r.get("cache_prepare_sec") is not None for r in preds),
  }


def chance_case(n_labels: int, n_gold: int, n_pred: int) -> tuple[Fraction, Fraction]:
  """(P(correct), E[task_score]) of n_pred distinct labels drawn uniformly from n_labels."""
  k = min(n_pred, n_labels)
  p_all = Fraction(comb(n_labels - n_gold, k - n_gold), comb(n_labels, k)) if k >= n_gold else 0
  return Fraction(p_all), Fraction(k, n_labels)  # each gold label is drawn with prob. k/n


def chance_baseline(cases: Sequence[Any]) -> dict[str, float]:
  """Exact accuracy and avg task score of a uniformly random full-allowance guess over the
  given cases' mix (0.35 and 0.50 on the 100 MARBLE cases)."""
  if not cases:
    return {"accuracy": 0.0, "avg_task_score": 0.0, "samples": 0}
  acc = score = Fraction(0)
  for c in cases:
    a, s = chance_case(len(c.labels), len(c.root_causes), c.number_of_labels_pred)
    acc, score = acc + a, score + s
  return {
    "accuracy": float(acc / len(cases)),
    "avg_task_score": float(score / len(cases)),
    "samples": len(cases),
  }
