"""Shared benchmark helpers: statistics, tables, JSON conversion, documents."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from ps_jax.bench import report


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


def test_write_report(tmp_path):
  result = {"a": np.arange(2)}
  chart = report.BarChart(
    title="t", ylabel="tok/s", groups=["g1", "g2"], values={"x": [1.0, 2.0], "y": [3.0, None]}
  )
  paths = report.write_report(str(tmp_path / "r"), result, "# hi", chart)
  assert json.loads(open(paths["json"]).read()) == {"a": [0, 1]}
  assert open(paths["md"]).read() == "# hi\n"
  assert open(paths["png"], "rb").read(4) == b"\x89PNG"
