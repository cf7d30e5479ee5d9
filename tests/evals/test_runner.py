"""The evaluation runner: per-example records, summary, and exact resume after interruption."""

import dataclasses
import json
import os

import pytest
from flax import nnx

import ps_jax as ps
from ps_jax.evals import load_eval_dataset, sandbox_isolation
from ps_jax.evals.runner import EvalConfig, SamplingWorkers, run_eval

pytestmark = pytest.mark.slow  # loads the SmolLM2 tokenizer and compiles a few programs


@pytest.fixture(scope="module")
def tiny_model():
  """A 2-layer random model with SmolLM2's tokenizer and vocabulary (outputs are noise)."""
  config = dataclasses.replace(
    ps.io.load_config("smollm2-135m-instruct"),
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
  )
  return ps.Transformer(config, rngs=nnx.Rngs(0)), ps.io.load_tokenizer("smollm2-135m-instruct")


def _scores(workdir):
  with open(os.path.join(workdir, "results.jsonl")) as f:
    recs = [json.loads(line) for line in f]
  return {r["id"]: {m: (v["output"], v["score"]) for m, v in r["methods"].items()} for r in recs}


def test_resumed_run_equals_uninterrupted(tiny_model, tmp_path):
  model, tok = tiny_model
  examples = load_eval_dataset("humaneval", limit=4)
  cfg = EvalConfig(methods=("text", "pcw"), max_new_tokens=6, batch_size=2, code_timeout_s=5)
  workers = SamplingWorkers(num_branches=2, max_new_tokens=6)
  full = run_eval(model, tok, examples, cfg, str(tmp_path / "full"), workflow=workers)

  part = tmp_path / "part"
  run_eval(model, tok, examples[:2], cfg, str(part), workflow=workers)  # first chunk only
  with open(part / "results.jsonl", "a") as f:
    f.write('{"id": "cut by a ki')  # a half-written line from a killed run
  resumed = run_eval(model, tok, examples, cfg, str(part), workflow=workers)

  assert _scores(tmp_path / "full") == _scores(part)
  assert len(_scores(part)) == 4
  for m in cfg.methods:
    assert resumed["methods"][m]["accuracy"] == full["methods"][m]["accuracy"]
  assert os.path.exists(part / "summary.md")
  with open(part / "summary.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  lo, hi = resumed["methods"]["pcw"]["accuracy_ci95"]
  assert 0.0 <= lo <= resumed["methods"]["pcw"]["accuracy"] <= hi <= 1.0
  assert full["sandbox_isolation"] == sandbox_isolation()
  assert "Generated code ran in the sandbox: contained" in open(part / "summary.md").read()
  record = json.loads(open(part / "results.jsonl").readline())
  assert set(record) >= {"id", "question", "gold", "branches", "methods"}
  assert set(record["methods"]["pcw"]) >= {
    "output",
    "score",
    "ttft_s",
    "prompt_tokens",
    "generated_tokens",
  }


def test_refused_sandbox_stops_before_any_generation(monkeypatch, tmp_path):
  """Code datasets need the sandbox: a refusal is an error up front, never scores of 0."""
  from ps_jax.evals import sandbox  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(sandbox, "_probe", lambda mode: "simulated: no namespaces")
  monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)

  def workflow(*args):
    raise AssertionError("generation started")

  with pytest.raises(RuntimeError, match="refused: containment unavailable"):
    run_eval(
      None,
      None,
      load_eval_dataset("humaneval", limit=2),
      EvalConfig(),
      str(tmp_path / "w"),
      workflow=workflow,
    )
  assert not (tmp_path / "w").exists()


def test_each_trained_method_reads_its_own_adapter(tiny_model, tmp_path, monkeypatch):
  """A parallel_synthesis adapter and a text_lora adapter are different weights: each method
  is given its own, a method without one runs untrained and the summary says so."""
  from ps_jax.evals import runner  # pylint: disable=import-outside-toplevel

  model, tok = tiny_model
  ps_adapter = ps.Adapter.create(model.config, rank=2, seed=1)
  text_adapter = ps.Adapter.create(model.config, rank=2, seed=2)
  seen = {}
  real = runner.synthesize

  def spy(*args, method, adapter, **kwargs):
    seen[method] = adapter
    return real(*args, method=method, adapter=adapter, **kwargs)

  monkeypatch.setattr(runner, "synthesize", spy)
  methods = ("text", "text_lora", "lora_only", "parallel_synthesis")
  cfg = EvalConfig(methods=methods, max_new_tokens=2, batch_size=2)
  examples = [
    ps.evals.EvalExample(id=f"q{i}", question=f"What is {i} + 1?", gold=str(i + 1), kind="math")
    for i in range(2)
  ]
  workers = SamplingWorkers(num_branches=2, max_new_tokens=3)
  adapters = {"parallel_synthesis": ps_adapter, "text_lora": text_adapter}
  summary = run_eval(model, tok, examples, cfg, str(tmp_path), workflow=workers, adapters=adapters)
  assert seen["parallel_synthesis"] is ps_adapter
  assert seen["text_lora"] is text_adapter
  assert seen["text"] is None and seen["lora_only"] is None
  assert summary["methods"]["lora_only"]["adapter"] == "none (untrained)"
  assert summary["methods"]["text_lora"]["adapter"] == "trained"
  assert "lora_only (untrained)" in open(tmp_path / "summary.md").read()
  with pytest.raises(ValueError, match="adapters: 'pcw' is not a trained method"):
    run_eval(
      model, tok, examples, cfg, str(tmp_path), workflow=workers, adapters={"pcw": ps_adapter}
    )
