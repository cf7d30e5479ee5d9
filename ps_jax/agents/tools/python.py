"""`PythonInterpreter` (the release's name): runs the model's code in the eval sandbox
(`ps_jax.evals.sandbox`), fail-closed: where containment cannot be built the call returns the
refusal text with status "refused" and nothing runs. The release ran it unsandboxed.

The program runs through `sandbox.run_program` (what `run_code` runs, keeping stdout).
"""

from __future__ import annotations

import os

from ps_jax.agents.tools.registry import Tool, ToolOutput
from ps_jax.evals import sandbox

TIMEOUT_S = float(os.environ.get("TOOL_PY_TIMEOUT", "35"))
MAX_OUTPUT_CHARS = 12_000
DESCRIPTION = (
  "Execute Python code in a sandbox and return its stdout and stderr. Put the code in "
  "<code>...</code> inside the tool_call; print() what you need to see. No network."
)
PARAMETERS = {
  "type": "object",
  "properties": {"code": {"type": "string", "description": "Python source to run."}},
  "required": ["code"],
}


def run_python(
  code: str, timeout_s: float = TIMEOUT_S, limits: sandbox.SandboxLimits | None = None
) -> ToolOutput:
  run = sandbox.run_program(code, float(timeout_s), limits or sandbox.SandboxLimits())
  if run.detail.startswith("refused"):
    return ToolOutput(f"PythonInterpreter {run.detail}", "refused")
  stdout = run.stdout.decode("utf-8", errors="replace").strip()[:MAX_OUTPUT_CHARS]
  if run.passed:
    return ToolOutput(f"stdout:\n{stdout}" if stdout else "Finished execution.")
  return ToolOutput(f"stdout:\n{stdout}\nstderr/outcome: {run.detail}", "error")


def python_tool(timeout_s: float = TIMEOUT_S) -> Tool:
  return Tool(
    "PythonInterpreter", DESCRIPTION, PARAMETERS, lambda code: run_python(code, timeout_s)
  )
