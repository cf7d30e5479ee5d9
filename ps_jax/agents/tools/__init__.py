"""Agent tools behind one registry (`ToolRegistry`); see registry.py for registering your own."""

from ps_jax.agents.tools.files import parse_file, parse_file_tool
from ps_jax.agents.tools.python import python_tool, run_python
from ps_jax.agents.tools.registry import STATUSES, Tool, ToolOutput, ToolRegistry
from ps_jax.agents.tools.web import (
  BM25,
  CorpusBackend,
  LiveBackend,
  ReplayBackend,
  canonical_key,
  search_tool,
  visit_tool,
)


def default_registry(web_backend=None, *, python: bool = False) -> ToolRegistry:
  """The release's GAIA tools in its order: search, visit, (PythonInterpreter), parse_file.
  The interpreter is off by default, as in the release's recipe; web defaults to an empty
  replay store (every web call is a counted `[offline]` miss)."""
  backend = web_backend if web_backend is not None else ReplayBackend()
  tools = [search_tool(backend), visit_tool(backend)]
  if python:
    tools.append(python_tool())
  tools.append(parse_file_tool())
  return ToolRegistry(tools)


__all__ = [
  "BM25",
  "STATUSES",
  "CorpusBackend",
  "LiveBackend",
  "ReplayBackend",
  "Tool",
  "ToolOutput",
  "ToolRegistry",
  "canonical_key",
  "default_registry",
  "parse_file",
  "parse_file_tool",
  "python_tool",
  "run_python",
  "search_tool",
  "visit_tool",
]
