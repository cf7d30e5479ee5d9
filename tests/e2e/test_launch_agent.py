"""`python -m launch.agent --config configs/agent.py:tiny`: 2 MARBLE cases on a throwaway
PostgreSQL with a random tiny model (live workers), then the fixed-trajectory re-scoring of that
run into a second workdir that already holds one case (resumed: skipped)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from ps_jax.agents import postgres
from ps_jax.agents.marble import chance_baseline, load_cases

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHODS = ("text", "pcw", "parallel_synthesis")


def _launch(workdir, *extra):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
    [sys.executable, "-m", "launch.agent", "--config", "configs/agent.py:tiny",
     f"--workdir={workdir}", *extra],
    cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc


def _case(workdir, task_id):
  with open(os.path.join(workdir, "cases", f"{task_id}.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.mark.slow  # two launcher processes (~35 s of CPU)
def test_launch_agent_tiny_then_fixed_trajectories(tmp_path):
  reason = postgres.available()
  if reason is not None:
    if os.environ.get("PS_JAX_REQUIRE_POSTGRES", "") not in ("", "0"):
      pytest.fail(f"PS_JAX_REQUIRE_POSTGRES is set but PostgreSQL is unavailable: {reason}")
    pytest.skip(f"PostgreSQL unavailable: {reason}")
  live, fixed = tmp_path / "live", tmp_path / "fixed"
  proc = _launch(live)
  assert "cases: 100%" in proc.stderr and "| parallel_synthesis (untrained) |" in proc.stdout
  for name in ("agent.md", "agent.json", "agent.png"):
    assert (live / name).stat().st_size > 0, name
  summary = json.loads((live / "agent.json").read_text())
  assert summary["cases"] == summary["cases_selected"] == 2 and summary["errors"] == 0
  assert tuple(summary["methods"]) == METHODS
  cases = [c for c in load_cases() if c.task_id in (6, 51)]
  assert summary["chance"] == chance_baseline(cases)
  assert summary["chance"]["accuracy"] == pytest.approx((0.4 + 0.3) / 2)
  for m in METHODS:
    s = summary["methods"][m]
    assert 0 <= s["accuracy_ci95"][0] <= s["accuracy"] <= s["accuracy_ci95"][1] <= 1
    assert s["ttft_median_s"] > 0
  record = _case(live, 51)
  assert record["workers"]["branches_from"] == "live cache"
  assert record["workers"]["turn_times"] and record["setup"]["triggers_s"].keys() == {
    "VACUUM",
    "FETCH_LARGE_DATA",
  }
  assert all(a["token_ids"] and a["slots"]["final_output"] for a in record["workers"]["agents"])

  # Fixed trajectories: case 6 is already there (resumed, untouched), case 51 is re-scored.
  (fixed / "cases").mkdir(parents=True)
  shutil.copy(live / "cases" / "6.json", fixed / "cases" / "6.json")
  marker = (fixed / "cases" / "6.json").stat().st_mtime_ns
  _launch(fixed, f"--config.fixed_trajectories={live}")
  assert (fixed / "cases" / "6.json").stat().st_mtime_ns == marker
  again = _case(fixed, 51)
  assert again["rescored"] and again["workers"]["agents"] == record["workers"]["agents"]
  # Re-prefilled branches equal the live ones (to float rounding): the greedy judgers agree.
  for m in ("pcw", "parallel_synthesis"):
    assert again["methods"][m]["raw"] == record["methods"][m]["raw"], m
  assert json.loads((fixed / "agent.json").read_text())["fixed_trajectories"] == str(live)
