"""Agent workflows: the release's ReAct loop, tools, and caches carried across turns."""

from ps_jax.agents.protocol import (
  ToolCall,
  cut_at_tool_response,
  extract_answer,
  parse_tool_calls,
  system_prompt,
  tool_response_message,
  worker_prompt,
)
from ps_jax.agents.react import (
  AgentTrace,
  ModelPolicy,
  ReactConfig,
  ScriptedPolicy,
  StepRecord,
  run_react,
  worker_messages,
)
from ps_jax.agents.session import MEMORY_MODES, AgentSession, Turn, capture_branches, grow_cache
from ps_jax.agents.tools import Tool, ToolOutput, ToolRegistry, default_registry

__all__ = [
  "MEMORY_MODES",
  "AgentSession",
  "AgentTrace",
  "ModelPolicy",
  "ReactConfig",
  "ScriptedPolicy",
  "StepRecord",
  "Tool",
  "ToolCall",
  "ToolOutput",
  "ToolRegistry",
  "Turn",
  "capture_branches",
  "cut_at_tool_response",
  "default_registry",
  "extract_answer",
  "grow_cache",
  "parse_tool_calls",
  "run_react",
  "system_prompt",
  "tool_response_message",
  "worker_messages",
  "worker_prompt",
]
