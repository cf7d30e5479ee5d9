"""Helpers of the training tests: the shared CLI command, metrics.jsonl readers."""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOLLM2 = "smollm2-135m-instruct"
TINY_SHAPE = dict(
  hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8
)

# The CLI run every subprocess test shares. Evaluation is switched off (eval_batches=0: the
# final-step evaluation then reads no batch and compiles nothing), it would only add a compile.
REF_STEPS = 8
CLI_ARGS = (
  "--config",
  "configs/tiny.py",
  "--config.checkpoint.every_steps=2",
  "--config.train.eval_batches=0",
)


def cli_command(workdir: str, num_steps: int, *extra: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "launch.train",
    *CLI_ARGS,
    f"--config.train.num_steps={num_steps}",
    "--workdir",
    str(workdir),
    *extra,
  ]


def read_metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
