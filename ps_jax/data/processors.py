"""Processors: public dataset schemas -> Rows, one per data role of DESIGN.md 2.8.

Role (a), exposure to parallel cache contexts:
  ``chat_to_row``        OpenAI ``messages`` [{role, content}] or ShareGPT ``conversations``
                         [{from, value}]: each earlier round is a branch, the final user
                         message the query, the final assistant reply the answer.
  ``tool_trace_to_row``  OpenAI tool calling: each call after the last user message, with its
                         ``tool`` result, is a branch; the final assistant reply the answer.
Role (b), aggregation across branches:
  ``multihop_qa_to_row`` HotpotQA / 2WikiMultihopQA: one paragraph per branch, optionally only
                         the supporting paragraphs plus k seeded distractors.
  ``few_shot_to_row``, ``few_shot_rows``: one (input, output) demo per branch.
Role (c), distillation, needs a teacher's text-synthesis outputs and is built by the
training layer; its rows are plain ``parse_row`` rows.

Queries and answers are the raw texts of the dataset: instructions around them (the
reference prepends a task description and asks for ``\\box{...}``) belong to the prompt
layer, so every source is templated the same way. Every processor validates its Row and
raises MalformedRow for input it cannot use, so sources skip and count it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ps_jax.data.rows import MalformedRow, Row, validate

# ShareGPT speaker names (and OpenAI roles) -> our roles.
_ROLES = {
  "user": "user",
  "human": "user",
  "assistant": "assistant",
  "gpt": "assistant",
  "model": "assistant",
  "system": "system",
  "tool": "tool",
  "function": "tool",
  "observation": "tool",
  "function_call": "assistant",
}
_LABELS = {"user": "User", "assistant": "Assistant", "tool": "Tool"}


def _text(field: str, value: Any) -> str:
  """Message content as text: a string, OpenAI content parts, or None (tool-call turns)."""
  if value is None:
    return ""
  if isinstance(value, str):
    return value
  if isinstance(value, list):  # [{"type": "text", "text": ...}, ...]; non-text parts dropped
    return "".join(p.get("text", "") for p in value if isinstance(p, Mapping))
  raise MalformedRow(field, "wrong_type", f"expected text, got {type(value).__name__}")


def _required_str(obj: Mapping[str, Any], key: str) -> str:
  if obj.get(key) is None:
    raise MalformedRow(key, "missing", "is absent")
  value = obj[key]
  if not isinstance(value, str):
    raise MalformedRow(key, "wrong_type", f"expected a string, got {type(value).__name__}")
  return value


def _row_id(obj: Mapping[str, Any]) -> dict[str, Any]:
  for key in ("id", "_id", "prompt_id"):
    if obj.get(key) is not None:
      return {"id": obj[key]}
  return {}


def _messages(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
  """Messages normalised to {role, content, tool_calls, tool_call_id}, system turns dropped."""
  if not isinstance(obj, Mapping):
    raise MalformedRow("row", "wrong_type", f"expected an object, got {type(obj).__name__}")
  if obj.get("messages") is not None:
    field, raw, role_key, content_key = "messages", obj["messages"], "role", "content"
  elif obj.get("conversations") is not None:
    field, raw, role_key, content_key = "conversations", obj["conversations"], "from", "value"
  else:
    raise MalformedRow("messages", "missing", "expected `messages` or `conversations`")
  if not isinstance(raw, list):
    raise MalformedRow(field, "wrong_type", f"expected a list, got {type(raw).__name__}")
  out = []
  for i, m in enumerate(raw):
    if not isinstance(m, Mapping):
      raise MalformedRow(field, "wrong_type", f"{field}[{i}] is {type(m).__name__}")
    role = _ROLES.get(str(m.get(role_key, "")).lower())
    if role is None:
      raise MalformedRow(field, "invalid", f"{field}[{i}] has unknown role {m.get(role_key)!r}")
    if role == "system":
      continue
    out.append(
      {
        "role": role,
        "content": _text(field, m.get(content_key)),
        "tool_calls": m.get("tool_calls") or [],
        "tool_call_id": m.get("tool_call_id"),
      }
    )
  return out


def _call_parts(call: Mapping[str, Any]) -> tuple[Any, str, str]:
  """(id, name, arguments as text) of an OpenAI tool call (or a bare {name, arguments})."""
  fn = call.get("function") or call
  args = fn.get("arguments", "")
  if not isinstance(args, str):  # HF chat datasets often store arguments as a dict
    args = json.dumps(args, ensure_ascii=False)
  return call.get("id"), str(fn.get("name", "")), args


def _render(messages: Sequence[Mapping[str, Any]]) -> str:
  lines = []
  for m in messages:
    if m["content"]:
      lines.append(f"{_LABELS[m['role']]}: {m['content']}")
    for call in m["tool_calls"]:
      _, name, args = _call_parts(call)
      lines.append(f"Assistant calls {name}({args})")
  return "\n".join(lines)


def chat_to_row(obj: Mapping[str, Any]) -> Row:
  """A multi-turn chat -> Row: earlier rounds are branches (role a).

  A round starts at a user message and runs to the next one; turns before the first user
  message form a round of their own. System turns are dropped.
  """
  msgs = _messages(obj)
  if (
    len(msgs) < 2
    or msgs[-1]["role"] != "assistant"
    or msgs[-1]["tool_calls"]
    or msgs[-2]["role"] != "user"
  ):
    raise MalformedRow(
      "messages", "invalid", "a chat must end with a user message and a plain assistant reply"
    )
  rounds: list[list[dict[str, Any]]] = []
  for m in msgs[:-2]:
    if m["role"] == "user" or not rounds:
      rounds.append([])
    rounds[-1].append(m)
  row = Row(
    query=msgs[-2]["content"],
    answer=msgs[-1]["content"],
    contexts=tuple(_render(r) for r in rounds),
    source="chat",
    meta={**_row_id(obj), "role": "exposure"},
  )
  return validate(row)


def tool_trace_to_row(obj: Mapping[str, Any]) -> Row:
  """An OpenAI tool-calling trace -> Row: each tool call with its result is a branch (role a).

  Calls are those made after the last user message (parallel calls of one assistant turn,
  and any later steps); results are matched by ``tool_call_id``, or by order when the trace
  has no ids. The final assistant reply is the answer, the last user message the query.
  """
  msgs = _messages(obj)
  if not msgs or msgs[-1]["role"] != "assistant" or msgs[-1]["tool_calls"]:
    raise MalformedRow("messages", "invalid", "a trace must end with a plain assistant reply")
  users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
  if not users:
    raise MalformedRow("messages", "invalid", "the trace has no user message")
  calls, results = [], []
  for m in msgs[users[-1] + 1 : -1]:
    if m["role"] == "assistant":
      calls.extend(_call_parts(c) for c in m["tool_calls"])
    elif m["role"] == "tool":
      results.append((m["tool_call_id"], m["content"]))
  if not calls:
    raise MalformedRow("messages", "invalid", "no tool call after the last user message")
  by_id = {cid: content for cid, content in results if cid is not None}
  use_ids = all(cid is not None for cid, _, _ in calls) and len(by_id) == len(results)
  contexts = []
  for i, (cid, name, args) in enumerate(calls):
    if use_ids:
      result = by_id.get(cid)
    else:
      result = results[i][1] if i < len(results) else None
    if result is None:
      raise MalformedRow("messages", "invalid", f"tool call {i} ({name}) has no result")
    contexts.append(f"Tool call: {name}({args})\nResult: {result}")
  row = Row(
    query=msgs[users[-1]]["content"],
    answer=msgs[-1]["content"],
    contexts=tuple(contexts),
    source="tool_trace",
    meta={**_row_id(obj), "role": "exposure"},
  )
  return validate(row)


def _paragraphs(context: Any) -> list[tuple[str, list[str]]]:
  """(title, sentences) pairs from HotpotQA/2Wiki ``context`` in any of its published forms."""
  if isinstance(context, str):  # some parquet exports store the field as a JSON string
    try:
      context = json.loads(context)
    except ValueError:
      raise MalformedRow("context", "invalid", "a string that is not JSON") from None
  if isinstance(context, Mapping):  # HF: {"title": [...], "sentences": [[...], ...]}
    titles, sentences = context.get("title"), context.get("sentences")
    if (
      not isinstance(titles, list)
      or not isinstance(sentences, list)
      or len(titles) != len(sentences)
    ):
      raise MalformedRow("context", "invalid", "needs equal-length `title` and `sentences` lists")
    pairs = list(zip(titles, sentences, strict=True))
  elif isinstance(context, list):  # original JSON: [[title, [sentences]], ...]
    pairs = []
    for i, p in enumerate(context):
      if not isinstance(p, (list, tuple)) or len(p) != 2:
        raise MalformedRow("context", "invalid", f"context[{i}] is not a [title, sentences] pair")
      pairs.append((p[0], p[1]))
  else:
    raise MalformedRow("context", "missing" if context is None else "wrong_type", "no paragraphs")
  out = []
  for title, sents in pairs:
    if not isinstance(title, str) or not isinstance(sents, list):
      raise MalformedRow("context", "wrong_type", "titles must be strings, sentences lists")
    out.append((title, [s for s in sents if isinstance(s, str)]))
  return out


def _supporting_titles(facts: Any) -> list[str]:
  if isinstance(facts, str):
    try:
      facts = json.loads(facts)
    except ValueError:
      raise MalformedRow("supporting_facts", "invalid", "a string that is not JSON") from None
  if isinstance(facts, Mapping):  # HF: {"title": [...], "sent_id": [...]}
    titles = facts.get("title") or []
  elif isinstance(facts, list):  # original JSON: [[title, sent_id], ...]
    titles = [f[0] for f in facts if isinstance(f, (list, tuple)) and f]
  else:
    titles = []
  return list(dict.fromkeys(t for t in titles if isinstance(t, str)))


def multihop_qa_to_row(
  obj: Mapping[str, Any], *, distractors: int | None = None, seed: int = 0
) -> Row:
  """A HotpotQA / 2WikiMultihopQA example -> Row with one paragraph per branch (role b).

  Each branch is ``"<title>: <sentences joined>"``. With ``distractors=None`` every
  paragraph of ``context`` is kept; with ``distractors=k`` only the supporting paragraphs
  (from ``supporting_facts``) plus k others, drawn with a generator seeded by ``seed`` and
  the example's id, so the choice is reproducible. Paragraphs keep their dataset order.
  """
  if not isinstance(obj, Mapping):
    raise MalformedRow("row", "wrong_type", f"expected an object, got {type(obj).__name__}")
  question = _required_str(obj, "question")
  answer = _required_str(obj, "answer")
  paras = _paragraphs(obj.get("context"))
  meta: dict[str, Any] = {**_row_id(obj), "role": "aggregation"}
  for key in ("type", "level"):
    if key in obj:
      meta[key] = obj[key]
  support = _supporting_titles(obj.get("supporting_facts"))
  if support:
    meta["supporting_titles"] = support
  if distractors is not None:
    if not support:
      raise MalformedRow("supporting_facts", "missing", "needed to keep only supporting paragraphs")
    titles = [t for t, _ in paras]
    absent = [t for t in support if t not in titles]
    if absent:
      raise MalformedRow("supporting_facts", "invalid", f"titles {absent} are not in context")
    others = [i for i, t in enumerate(titles) if t not in support]
    rng = random.Random(f"{seed}:{meta.get('id', question)}")
    chosen = set(rng.sample(others, min(distractors, len(others))))
    paras = [p for i, p in enumerate(paras) if p[0] in support or i in chosen]
  meta["titles"] = [t for t, _ in paras]
  row = Row(
    query=question,
    answer=answer,
    contexts=tuple(f"{t}: {' '.join(s.strip() for s in sents)}" for t, sents in paras),
    source="multihop_qa",
    meta=meta,
  )
  return validate(row)


def _demo_text(x: str, y: str) -> str:
  return f"Input: {x}\nOutput: {y}"


def _query_text(x: str, instruction: str) -> str:
  return f"{instruction}\n\nInput: {x}" if instruction else f"Input: {x}"


def few_shot_to_row(obj: Mapping[str, Any]) -> Row:
  """``{"demos": [{input, output} | [input, output], ...], "input", "output", "instruction"?}``
  -> Row with one demo per branch (role b); the query is the final input.
  """
  if not isinstance(obj, Mapping):
    raise MalformedRow("row", "wrong_type", f"expected an object, got {type(obj).__name__}")
  demos = obj.get("demos")
  if not isinstance(demos, list):
    raise MalformedRow("demos", "missing" if demos is None else "wrong_type", "expected a list")
  contexts = []
  for i, d in enumerate(demos):
    if isinstance(d, Mapping):
      x, y = d.get("input"), d.get("output")
    elif isinstance(d, (list, tuple)) and len(d) == 2:
      x, y = d
    else:
      raise MalformedRow("demos", "invalid", f"demos[{i}] is not an (input, output) pair")
    if not isinstance(x, str) or not isinstance(y, str):
      raise MalformedRow("demos", "wrong_type", f"demos[{i}] input and output must be strings")
    contexts.append(_demo_text(x, y))
  instruction = obj.get("instruction") or ""
  row = Row(
    query=_query_text(_required_str(obj, "input"), instruction),
    answer=_required_str(obj, "output"),
    contexts=tuple(contexts),
    source="few_shot",
    meta={**_row_id(obj), "role": "aggregation"},
  )
  return validate(row)


def few_shot_rows(
  examples: Sequence[tuple[str, str]],
  *,
  num_demos: int,
  seed: int = 0,
  instruction: str = "",
) -> list[Row]:
  """Few-shot rows from plain (input, output) pairs, e.g. a QA dataset's train split.

  Row i targets example i; its ``num_demos`` demos are other examples, drawn by a generator
  seeded with (seed, i), so a row never shows its own answer and is reproducible.
  """
  n = len(examples)
  if not 1 <= num_demos < n:
    raise ValueError(f"num_demos={num_demos} must be in [1, {n - 1}] for {n} examples")
  rows = []
  for i, (x, y) in enumerate(examples):
    rng = random.Random(f"{seed}:{i}")
    picks = [j + (j >= i) for j in rng.sample(range(n - 1), num_demos)]  # skip i itself
    row = Row(
      query=_query_text(x, instruction),
      answer=y,
      contexts=tuple(_demo_text(*examples[j]) for j in picks),
      source="few_shot",
      meta={"index": i, "demos": picks, "role": "aggregation"},
    )
    rows.append(validate(row))
  return rows
