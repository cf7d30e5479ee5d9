"""The shared timing protocol (ps_jax.bench.timing): warm-up, interleaving, budgets, stats."""

from __future__ import annotations

import pytest

from ps_jax.bench import timing
from ps_jax.bench.timing import Path, Protocol, Sample


def test_summarize_and_rate():
  s = timing.summarize([3.0, 1.0, 2.0])
  assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
  r = timing.rate(6.0, s)
  assert (r["median"], r["min"], r["max"]) == (3.0, 2.0, 6.0)
  with pytest.raises(ValueError):
    timing.summarize([])


def _fake(seconds: float, calls: list, name: str, parts=None) -> Path:
  def once():
    calls.append(name)
    return Sample(seconds, parts or {}, output=len(calls))

  return Path(once)


def test_measure_interleaves_and_budgets_repeats():
  calls, done = [], []
  paths = {
    "fast": _fake(0.1, calls, "fast", {"a": 0.05}),
    "slow": _fake(10.0, calls, "slow"),  # 10 s per call > budget 25 s / 4: 2 repeats
  }
  protocol = Protocol(repeats=4, min_repeats=2, warmup=2, path_budget_s=25.0)
  out = timing.measure(paths, protocol, on_done=done.append)
  # Warm-up of each path in turn, then rounds that alternate the paths.
  assert calls == ["fast", "fast", "slow", "slow", "fast", "slow", "fast", "slow", "fast", "fast"]
  assert out["fast"]["repeats"] == 4 and not out["fast"]["reduced_repeats"]
  assert out["slow"]["repeats"] == 2 and out["slow"]["reduced_repeats"]
  assert out["slow"]["seconds"]["median"] == 10.0 and len(out["fast"]["warmup_s"]) == 2
  assert out["fast"]["parts_s"]["a"]["median"] == 0.05 and out["slow"]["parts_s"] == {}
  assert out["fast"]["outputs"] == [5, 7, 9, 10]
  assert sorted(done) == ["fast", "slow"] and done[0] == "slow"  # slow finishes first
  assert timing.round_ratios(out["slow"]["seconds"], out["fast"]["seconds"]) == [100.0, 100.0]


def test_measure_records_a_failing_path_and_times_the_others():
  calls = []

  def boom():
    raise MemoryError("out of memory")

  out = timing.measure(
    {"bad": Path(boom), "good": _fake(0.1, calls, "good")}, Protocol(repeats=2, min_repeats=1)
  )
  assert out["bad"] == {"status": "error", "reason": "MemoryError: out of memory"}
  assert out["good"]["status"] == "ok" and out["good"]["repeats"] == 2


def test_memory_and_peak_probe_run_once_after_warmup():
  calls, memory = [], []
  path = _fake(0.1, calls, "p")
  path.memory = lambda: memory.append(len(calls)) or {"bytes": 1}
  path.peak = timing.RSSPeak
  out = timing.measure({"p": path}, Protocol(repeats=1, min_repeats=1, warmup=2))
  assert memory == [2] and out["p"]["memory"] == {"bytes": 1}
  assert out["p"]["peak"]["kind"] == "rss_peak_delta" and out["p"]["peak"]["peak_delta_bytes"] >= 0
  out = timing.measure({"p": path}, Protocol(repeats=1, min_repeats=1, memory=False))
  assert "memory" not in out["p"] and "peak" not in out["p"]


def test_protocol_validation():
  with pytest.raises(ValueError, match="min_repeats"):
    Protocol(repeats=2, min_repeats=3)
  with pytest.raises(ValueError, match="warmup"):
    Protocol(warmup=0)
  assert Protocol(repeats=5, min_repeats=2, path_budget_s=10.0).repeats_for(4.0) == 2
  assert Protocol(repeats=5, min_repeats=2).repeats_for(1e6) == 5  # no budget


def test_compile_events_per_function_and_xla_memory():
  import jax
  import jax.numpy as jnp

  @jax.jit
  def some_unique_function_name(x):
    return x * 3 + 1

  with timing.jax_compile_events() as events:
    some_unique_function_name(jnp.ones(7)).block_until_ready()
  assert events["backend_compile_duration"] > 0
  assert events["backend_compile_duration:some_unique_function_name"] > 0
  one = timing.compile_seconds(events, "some_unique_function_name")
  assert events["backend_compile_duration:some_unique_function_name"] < one
  assert one <= timing.compile_seconds(events)
  mem = timing.xla_memory(some_unique_function_name, jnp.ones(1000))
  assert mem["argument"] == 4000 and mem["output"] == 4000
  assert mem["total"] == mem["argument"] + mem["output"] + mem["temp"] - mem["alias"]
  assert timing.jax_peak_probe() is None  # the CPU backend has no memory stats
