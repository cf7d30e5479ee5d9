"""The training row: a synthesizer query, its target answer, and one text per branch.

Each context is prefilled independently by the frozen base model as its own branch
(DESIGN.md 2.8). Rows come from our own JSONL (``query``/``answer``/``contexts``) or from
the reference release, whose rows name the fields ``question``/``gold``/
``agent_reference_contexts`` (and often carry both spellings).

Bad rows raise :class:`MalformedRow` naming the field and the problem; data loaders skip
them and count the reason in a :class:`RowStats` instead of crashing or mis-training.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

# Field spellings, in order of preference. Reference rows for 2WikiMultihopQA carry both
# `contexts` (title-prefixed references) and `agent_reference_contexts` (the paragraphs the
# reference actually encodes as branches), so the reference's branch field wins.
QUERY_KEYS = ("query", "question")
ANSWER_KEYS = ("answer", "gold")
CONTEXT_KEYS = ("agent_reference_contexts", "contexts")

# Problems a row can have; a skip is counted under "<field>:<problem>".
PROBLEMS = (
  "missing",  # the field is absent or null
  "wrong_type",  # e.g. a context that is not a string, contexts given as one string
  "empty",  # blank query/answer, or no contexts at all
  "empty_item",  # one context is blank (an empty branch has no KV to read)
  "too_many",  # more contexts than RowLimits.max_branches
  "too_long",  # a context longer than RowLimits.max_context_chars
  "invalid",  # a source schema that cannot be turned into a row (see processors)
  "invalid_json",  # a JSONL line that does not parse
)


class MalformedRow(ValueError):
  """A data row that cannot be trained on; ``reason`` is the key it is counted under."""

  def __init__(self, field: str, problem: str, detail: str):
    if problem not in PROBLEMS:
      raise ValueError(f"unknown problem {problem!r}; expected one of {PROBLEMS}")
    self.field = field
    self.problem = problem
    super().__init__(f"malformed row: field {field!r} {problem}: {detail}")

  @property
  def reason(self) -> str:
    return f"{self.field}:{self.problem}"


@dataclasses.dataclass(frozen=True)
class Row:
  """One training example. ``contexts`` are stored as a tuple (lists are converted)."""

  query: str
  answer: str
  contexts: tuple[str, ...]
  source: str = ""
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if isinstance(self.contexts, list):
      object.__setattr__(self, "contexts", tuple(self.contexts))

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready dict in our own field names (what ``write_jsonl`` writes)."""
    return {
      "query": self.query,
      "answer": self.answer,
      "contexts": list(self.contexts),
      "source": self.source,
      "meta": self.meta,
    }


@dataclasses.dataclass(frozen=True)
class RowLimits:
  """Bounds that a row must respect; None means unbounded."""

  max_branches: int | None = None
  max_context_chars: int | None = None


@dataclasses.dataclass
class RowStats:
  """Counts of kept rows and of skipped rows by reason (``"<field>:<problem>"``)."""

  valid: int = 0
  skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

  @property
  def num_skipped(self) -> int:
    return sum(self.skipped.values())

  def skip(self, reason: str) -> None:
    self.skipped[reason] += 1

  def __str__(self) -> str:
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
    return f"{self.valid} valid, {self.num_skipped} skipped ({reasons or 'none'})"


def _first_present(obj: Mapping[str, Any], field: str, keys: Sequence[str]) -> Any:
  for key in keys:
    if obj.get(key) is not None:
      return obj[key]
  raise MalformedRow(field, "missing", f"none of {list(keys)} is present")


def _check_text(field: str, value: Any) -> None:
  if not isinstance(value, str):
    raise MalformedRow(field, "wrong_type", f"expected a string, got {type(value).__name__}")
  if not value.strip():
    raise MalformedRow(field, "empty", "is blank")


def validate(row: Row, limits: RowLimits | None = None) -> Row:
  """Returns ``row`` unchanged, or raises MalformedRow for the first problem found."""
  _check_text("query", row.query)
  _check_text("answer", row.answer)
  # A lone string is a Sequence too; treating it as contexts would make one branch per char.
  if isinstance(row.contexts, (str, bytes)) or not isinstance(row.contexts, Sequence):
    raise MalformedRow(
      "contexts",
      "wrong_type",
      f"expected a list of strings, got {type(row.contexts).__name__}",
    )
  if not row.contexts:
    raise MalformedRow("contexts", "empty", "a row needs at least one branch")
  limits = limits or RowLimits()
  if limits.max_branches is not None and len(row.contexts) > limits.max_branches:
    raise MalformedRow(
      "contexts",
      "too_many",
      f"{len(row.contexts)} branches > max_branches={limits.max_branches}",
    )
  for i, ctx in enumerate(row.contexts):
    if not isinstance(ctx, str):
      raise MalformedRow(
        "contexts", "wrong_type", f"contexts[{i}] is {type(ctx).__name__}, not a string"
      )
    if not ctx.strip():
      raise MalformedRow("contexts", "empty_item", f"contexts[{i}] is blank")
    if limits.max_context_chars is not None and len(ctx) > limits.max_context_chars:
      raise MalformedRow(
        "contexts",
        "too_long",
        f"contexts[{i}] has {len(ctx)} chars > max_context_chars={limits.max_context_chars}",
      )
  return row


def parse_row(obj: Any, limits: RowLimits | None = None) -> Row:
  """Builds and validates a Row from a dict in our or the reference release's names.

  ``source`` falls back to the reference's ``dataset`` field; ``meta`` is the row's own
  ``meta`` dict plus its ``id`` when it has one. Other fields are dropped.
  """
  if not isinstance(obj, Mapping):
    raise MalformedRow("row", "wrong_type", f"expected a JSON object, got {type(obj).__name__}")
  query = _first_present(obj, "query", QUERY_KEYS)
  answer = _first_present(obj, "answer", ANSWER_KEYS)
  contexts = _first_present(obj, "contexts", CONTEXT_KEYS)
  meta = dict(obj.get("meta") or {})
  if "id" in obj and "id" not in meta:
    meta["id"] = obj["id"]
  source = obj.get("source") or obj.get("dataset") or ""
  if isinstance(contexts, (str, bytes)) or not isinstance(contexts, Sequence):
    raise MalformedRow(
      "contexts", "wrong_type", f"expected a list of strings, got {type(contexts).__name__}"
    )
  row = Row(query=query, answer=answer, contexts=tuple(contexts), source=str(source), meta=meta)
  return validate(row, limits)


def iter_valid_rows(
  objs: Iterable[Any],
  limits: RowLimits | None = None,
  *,
  stats: RowStats | None = None,
  to_row: Callable[[Any], Row] = parse_row,
) -> Iterator[Row]:
  """Yields the valid rows of ``objs``; malformed ones are skipped and counted in ``stats``.

  ``to_row`` turns one raw object into a Row (``parse_row`` or a processor from
  ``ps_jax.data.processors``); the result is then checked against ``limits``.
  """
  stats = stats if stats is not None else RowStats()
  for obj in objs:
    try:
      row = validate(to_row(obj), limits)
    except MalformedRow as e:
      stats.skip(e.reason)
      continue
    stats.valid += 1
    yield row
