"""Every `launch/` entry point without its required flags: an absl usage error that names the
missing flag, and nothing written (no workdir, no config.json, nothing in the current dir).

Cheap: each run stops in absl's flag parsing, before jax or a model is imported.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY_POINTS = sorted(
  os.path.basename(p)[:-3]
  for p in glob.glob(os.path.join(ROOT, "launch", "*.py"))
  if not os.path.basename(p).startswith("_")  # __init__, _flags: not entry points
)
# export takes no --config: it rebuilds the adapter from the training workdir's config.json.
NO_CONFIG = {"export": ("--workdir", "--out")}
WITH_WORKDIR = ("train", "eval", "distill")


def test_entry_points_are_all_listed():
  """A new launch module is covered here (or must be added to NO_CONFIG deliberately)."""
  assert {"train", "eval", "distill", "generate", "bench_forward", "bench_ttft", "export"} <= set(
    ENTRY_POINTS
  )


def _run(module: str, args: list[str], cwd) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", f"launch.{module}", *args],
    cwd=cwd,
    env=env,
    stdin=subprocess.DEVNULL,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )


@pytest.mark.parametrize("module", [m for m in ENTRY_POINTS if m not in NO_CONFIG])
def test_missing_config_is_a_usage_error_and_writes_nothing(module, tmp_path):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  workdir = cwd / "workdir"
  args = ["--workdir", str(workdir)] if module in WITH_WORKDIR else []
  proc = _run(module, args, cwd)
  out = proc.stdout + proc.stderr
  assert proc.returncode != 0, out
  assert "--config" in out and "Traceback" not in out, out
  assert not workdir.exists()
  assert not os.listdir(cwd), os.listdir(cwd)


@pytest.mark.parametrize("module", sorted(NO_CONFIG))
def test_missing_required_flags_of_entry_points_without_config(module, tmp_path):
  proc = _run(module, [], tmp_path)
  out = proc.stdout + proc.stderr
  assert proc.returncode != 0, out
  assert all(flag in out for flag in NO_CONFIG[module]) and "Traceback" not in out, out
  assert not os.listdir(tmp_path)
