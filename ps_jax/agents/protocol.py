"""The release's ReAct text protocol: `<tool_call>` JSON actions, `<tool_response>` observations
(sent back as a user message), `<answer>` finals, and a tolerant tool-call parser.

Parser cascade per `<tool_call>` block (as the release): json.loads -> ast.literal_eval ->
regex recovery of "name" and simple string fields of malformed JSON -> Qwen-XML
`<function=NAME><parameter=K>V</parameter></function>`. A `<code>...</code>` inside the block
becomes the "code" argument (the release's PythonInterpreter convention).
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import json
import re
from typing import Any

_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.IGNORECASE | re.DOTALL)
_CODE = re.compile(r"<code>(.*?)</code>", re.IGNORECASE | re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_NAME = re.compile(r"""["']name["']\s*:\s*["']([^"']+)["']""")
# "key": "value" pairs of a malformed payload (string values only; escapes kept verbatim).
_STRING_FIELD = re.compile(
  r"""["'](\w+)["']\s*:\s*"((?:[^"\\]|\\.)*)"|["'](\w+)["']\s*:\s*'([^']*)'"""
)
_FUNCTION = re.compile(r"<function=([^>\s]+)>(.*?)(?:</function>|$)", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\s]+)>(.*?)</parameter>", re.DOTALL)
TOOL_RESPONSE_OPEN = "<tool_response>"


@dataclasses.dataclass(frozen=True)
class ToolCall:
  """One parsed action; `error` is set (and name may be empty) when the block was unusable."""

  name: str
  arguments: dict[str, Any]
  raw: str
  how: str  # "json" | "literal_eval" | "regex" | "xml" | "failed"
  error: str | None = None


def cut_at_tool_response(text: str) -> tuple[str, bool]:
  """(text stripped and cut before the first `<tool_response>`, whether one was there).

  A model that writes its own observation is hallucinating it; the release drops it.
  """
  i = text.lower().find(TOOL_RESPONSE_OPEN)
  if i < 0:
    return text.strip(), False
  return text[:i].strip(), True


def extract_answer(text: str) -> str | None:
  """The first `<answer>...</answer>` (searched in the whole text, think block included, as
  the release does), stripped; None when there is none."""
  m = _ANSWER.search(text)
  return m.group(1).strip() if m else None


def parse_tool_calls(text: str) -> list[ToolCall]:
  """Every `<tool_call>` block of text, in order (failed ones included, with an error)."""
  return [_parse_block(m.group(1)) for m in _TOOL_CALL.finditer(text)]


def _parse_block(raw: str) -> ToolCall:
  code_m = _CODE.search(raw)
  code = code_m.group(1) if code_m else None
  payload = _CODE.sub("", raw).strip()
  payload = re.sub(r"^```(?:json)?\s*|\s*```$", "", payload)  # fenced JSON
  call = None
  for how, loader in (("json", json.loads), ("literal_eval", ast.literal_eval)):
    try:
      obj = loader(payload)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
      continue
    if isinstance(obj, dict):
      call = _from_dict(obj, raw, how)
      break
  if call is None:
    call = _from_xml(payload, raw) or _from_regex(payload, raw)
  if call is None:
    return ToolCall("", {}, raw, "failed", "could not parse the tool call as JSON")
  if code is not None and call.error is None:
    call = dataclasses.replace(call, arguments={**call.arguments, "code": code.strip("\n")})
  return call


def _from_dict(obj: dict, raw: str, how: str) -> ToolCall:
  name = obj.get("name")
  args = obj.get("arguments", obj.get("parameters", {}))
  if isinstance(args, str):  # OpenAI style: arguments as a JSON string
    try:
      args = json.loads(args)
    except ValueError:
      return ToolCall(str(name or ""), {}, raw, how, "arguments is a string that is not JSON")
  if not isinstance(name, str) or not name:
    return ToolCall("", {}, raw, how, 'the tool call has no "name"')
  if not isinstance(args, dict):
    return ToolCall(name, {}, raw, how, '"arguments" must be a JSON object')
  return ToolCall(name, args, raw, how)


def _from_regex(payload: str, raw: str) -> ToolCall | None:
  m = _NAME.search(payload)
  if not m:
    return None
  args = {}
  for f in _STRING_FIELD.finditer(payload):
    key, value = (f.group(1), f.group(2)) if f.group(1) else (f.group(3), f.group(4))
    if key not in ("name", "arguments"):
      try:
        args[key] = json.loads(f'"{value}"')  # undo JSON escapes where they are valid
      except ValueError:
        args[key] = value
  return ToolCall(m.group(1), args, raw, "regex")


def _from_xml(payload: str, raw: str) -> ToolCall | None:
  m = _FUNCTION.search(payload)
  if not m:
    return None
  args = {k: v.strip("\n") for k, v in _PARAMETER.findall(m.group(2))}
  return ToolCall(m.group(1), args, raw, "xml")


# --- prompts (release structure: system with <tools>, worker user prompt) ---

SYSTEM_PROMPT = (
  "You are a deep research assistant with tool-use capability.\n"
  "Current date: {date}\n\n"
  "You may call one of the following tools. Tool signatures:\n<tools>\n{tools}\n</tools>\n\n"
  "To call a tool, reply with exactly one call as\n"
  '<tool_call>\n{{"name": "tool_name", "arguments": {{...}}}}\n</tool_call>\n'
  "For PythonInterpreter, put the code in <code>...</code> right after the JSON, inside the "
  "tool_call, with arguments {{}}.\n"
  "Tool output comes back inside <tool_response>...</tool_response>.\n"
  "Return the final answer inside <answer>...</answer>. Never fabricate tool outputs."
)
WORKER_PROMPT = (
  "Target Question: {question}\n\n"
  "You are a helpful assistant. You must reason step-by-step and use the tools when they "
  "help.\nReturn the final answer only inside <answer>YOUR_FINAL_ANSWER</answer>."
)
ATTACHMENTS = "\n\nAttached files you can parse with parse_file:\n{files}"


def system_prompt(tools_block: str, date: str | None = None) -> str:
  """The tool system prompt. `date` defaults to today, as the release; pass a fixed date for
  reproducible prompts (the release's changes every day, which defeats replay and caching)."""
  date = date or datetime.date.today().isoformat()
  return SYSTEM_PROMPT.format(date=date, tools=tools_block)


def worker_prompt(question: str, files=()) -> str:
  text = WORKER_PROMPT.format(question=question)
  if files:
    text += ATTACHMENTS.format(files="\n".join(str(f) for f in files))
  return text


def tool_response_message(result: str) -> dict[str, str]:
  """The observation as the release sends it: a user message, no `tool` role."""
  return {"role": "user", "content": f"<tool_response>\n{result}\n</tool_response>"}
