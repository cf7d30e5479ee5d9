"""Shared benchmark helpers: statistics, tables, JSON conversion, documents."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ps_jax.bench import report


def test_summarize_and_rate():
  s = report.summarize([3.0, 1.0, 2.0])
  assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
  r = report.rate(6.0, s)
  assert (r["median"], r["min"], r["max"]) == (3.0, 2.0, 6.0)
  with pytest.raises(ValueError):
    report.summarize([])


def test_repeat_counts_calls():
  calls = []
  warm, times = report.repeat(lambda: calls.append(1), repeats=3, warmup=2)
  assert len(warm) == 2 and len(times) == 3 and len(calls) == 5


def test_markdown_table():
  md = report.markdown_table(["a", "b"], [[1, "x"], [2.5, None]])
  assert md.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.5 | None |"]


def test_to_jsonable():
  @dataclasses.dataclass(frozen=True)
  class C:
    a: tuple = (1, 2)

  out = report.to_jsonable(
    {"c": C(), "x": np.float32(1.5), "arr": np.arange(3), "inf": float("inf")}
  )
  assert json.loads(json.dumps(out)) == {
    "c": {"a": [1, 2]},
    "x": 1.5,
    "arr": [0, 1, 2],
    "inf": "inf",
  }


def test_environment():
  env = report.environment(threads={"torch": 2})
  assert env["cpu_cores"] >= 1 and env["jax_backend"] == "cpu"
  assert env["threads"] == {"torch": 2} and env["versions"]["jax"]
  assert "CPU" in report.device_name(env)


def test_compile_events_per_function():
  import jax
  import jax.numpy as jnp

  @jax.jit
  def some_unique_function_name(x):
    return x * 3 + 1

  with report.jax_compile_events() as events:
    some_unique_function_name(jnp.ones(7)).block_until_ready()
  assert events["backend_compile_duration"] > 0
  assert events["backend_compile_duration:some_unique_function_name"] > 0
  one = report.compile_seconds(events, "some_unique_function_name")
  assert events["backend_compile_duration:some_unique_function_name"] < one
  assert one <= report.compile_seconds(events)


def test_write_report(tmp_path):
  result = {"a": np.arange(2)}
  chart = report.BarChart(
    title="t", ylabel="tok/s", groups=["g1", "g2"], values={"x": [1.0, 2.0], "y": [3.0, None]}
  )
  paths = report.write_report(str(tmp_path / "r"), result, "# hi", chart)
  assert json.loads(open(paths["json"]).read()) == {"a": [0, 1]}
  assert open(paths["md"]).read() == "# hi\n"
  assert open(paths["png"], "rb").read(4) == b"\x89PNG"
