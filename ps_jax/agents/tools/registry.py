"""One registry for every agent tool: name, description and JSON-schema parameters (rendered
into the system prompt as the release does) and a callable that returns text.

A tool function takes its arguments as keywords and returns a str, or a `ToolOutput` when it
needs to report a status other than "ok" (e.g. "refused", "offline_miss"). Any exception
becomes the release's "Tool execution failed: ..." text with status "error", so a tool never
stops the loop. Registering an outside tool (e.g. query_db):

    registry.register(Tool("query_db", "Run one SQL query ...",
                           {"type": "object", "properties": {"sql": {"type": "string"}},
                            "required": ["sql"]}, query_db_fn))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

STATUSES = ("ok", "error", "unknown_tool", "bad_arguments", "malformed", "refused", "offline_miss")


@dataclasses.dataclass(frozen=True)
class ToolOutput:
  text: str
  status: str = "ok"  # one of STATUSES


@dataclasses.dataclass(frozen=True)
class Tool:
  name: str
  description: str
  parameters: dict[str, Any]  # JSON schema of the arguments object
  fn: Callable[..., str | ToolOutput]

  def schema(self) -> dict[str, Any]:
    """OpenAI-style function schema (what the release prints into `<tools>`)."""
    return {
      "type": "function",
      "function": {
        "name": self.name,
        "description": self.description,
        "parameters": self.parameters,
      },
    }


class ToolRegistry:
  """Tools by name, in registration order (the order of the `<tools>` lines)."""

  def __init__(self, tools: Iterable[Tool] = ()):
    self._tools: dict[str, Tool] = {}
    for t in tools:
      self.register(t)

  def register(self, tool: Tool) -> ToolRegistry:
    if tool.name in self._tools:
      raise ValueError(f"tool {tool.name!r} is already registered")
    if tool.parameters.get("type") != "object":
      raise ValueError(f"tool {tool.name!r}: parameters must be a JSON schema of type 'object'")
    self._tools[tool.name] = tool
    return self

  @property
  def names(self) -> list[str]:
    return list(self._tools)

  def __contains__(self, name: str) -> bool:
    return name in self._tools

  def __getitem__(self, name: str) -> Tool:
    return self._tools[name]

  def tools_block(self) -> str:
    """One schema per line printed with Python `str()` (a dict repr), as the release does."""
    return "\n".join(str(t.schema()) for t in self._tools.values())

  def call(self, name: str, arguments: dict[str, Any]) -> ToolOutput:
    """Runs a tool; every failure comes back as text with a status, never as an exception."""
    tool = self._tools.get(name)
    if tool is None:
      return ToolOutput(
        f"Tool call error: unknown tool {name!r}; available tools: {', '.join(self.names)}",
        "unknown_tool",
      )
    props = tool.parameters.get("properties", {})
    missing = [k for k in tool.parameters.get("required", []) if k not in arguments]
    if missing:
      return ToolOutput(
        f"Tool call error: {name} is missing required argument(s) {', '.join(missing)}",
        "bad_arguments",
      )
    # Unknown extra keys are dropped rather than failing the call (small models add some).
    kwargs = {k: v for k, v in arguments.items() if k in props} if props else dict(arguments)
    try:
      out = tool.fn(**kwargs)
    except Exception as e:  # pylint: disable=broad-except  # a tool error is an observation
      return ToolOutput(f"Tool execution failed: {type(e).__name__}: {e}", "error")
    return out if isinstance(out, ToolOutput) else ToolOutput(str(out))
