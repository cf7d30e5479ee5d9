"""Distillation from text synthesis (role (c)): schema, resume, determinism, skips, CLI.

A tiny random model (untied embeddings: a tied random model greedily repeats "\\n", so every
teacher answer would be blank) with SmolLM2's tokenizer; outputs of 8 tokens.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

import ps_jax as ps
from ps_jax.data import JsonlSource
from ps_jax.train import distill as dl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = dict(
  hidden_size=32,
  intermediate_size=64,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
  tie_embeddings=False,
)
CFG = dl.DistillConfig(
  branches="workers", num_branches=3, worker_max_new_tokens=8, synth_max_new_tokens=8, batch_size=4
)

QUERIES = [
  {"query": "What is 2 + 3?", "answer": "5", "id": "q0"},
  {"question": "Name a colour.", "meta": {"k": 1}},
  {"query": "Which city is the capital of Peru?", "answer": "Lima"},
  {"query": "How many legs does a spider have?"},
  {"query": "Give a synonym of quick."},
  {"query": "What do bees make?", "gold": "honey"},
]


@pytest.fixture(scope="module")
def model_tok():
  from flax import nnx  # pylint: disable=import-outside-toplevel

  config = dataclasses.replace(ps.io.load_config("smollm2-135m-instruct"), **SHAPE)
  return ps.Transformer(config, rngs=nnx.Rngs(0)), ps.io.load_tokenizer("smollm2-135m-instruct")


@pytest.fixture
def queries_jsonl(tmp_path):
  path = tmp_path / "queries.jsonl"
  with open(path, "w") as f:
    for q in QUERIES:
      f.write(json.dumps(q) + "\n")
  return str(path)


def _run(model_tok, inputs, output, cfg=CFG, **kwargs):
  model, tok = model_tok
  return dl.distill(model, tok, inputs, cfg, str(output), progress=False, **kwargs)


def _lines(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def test_rows_schema_and_jsonl_source(model_tok, queries_jsonl, tmp_path):
  inputs, stats = dl.load_inputs(queries_jsonl)
  assert stats.valid == len(QUERIES) and [x.index for x in inputs] == list(range(len(QUERIES)))
  out = tmp_path / "out" / "distilled.jsonl"
  result = _run(model_tok, inputs, out, settings={"input": "queries"})
  assert result.written + sum(result.skipped.values()) == len(QUERIES)
  assert result.written >= len(QUERIES) - 1, result  # random model: a blank answer is rare
  source = JsonlSource(out)
  assert len(source) == result.written and source.stats.num_skipped == 0
  objs = [json.loads(line) for line in _lines(out).splitlines()]
  for obj, row in zip(objs, source, strict=True):
    assert set(obj) == {"query", "answer", "contexts", "source", "meta"}
    x = inputs[obj["meta"]["distill"]["index"]]
    assert row.query == x.query
    assert row.source == "distill/queries"
    assert row.answer and row.answer == row.answer.strip()
    assert 1 <= len(row.contexts) <= CFG.num_branches and all(c.strip() for c in row.contexts)
    assert row.meta["distill"]["branches"] == "workers"
  by_index = {o["meta"]["distill"]["index"]: o for o in objs}
  if 0 in by_index:
    assert by_index[0]["meta"]["id"] == "q0"
    assert by_index[0]["meta"]["distill"]["reference_answer"] == "5"
  if 1 in by_index:
    assert by_index[1]["meta"]["k"] == 1
  # pipeline_needs: the smallest training buckets that keep every distilled row.
  from ps_jax.data.pipeline import PipelineConfig, tokenize_rows  # pylint: disable=import-outside-toplevel

  need = dl.pipeline_needs(str(out), model_tok[1])
  kept = tokenize_rows(list(source), model_tok[1], PipelineConfig(**need))
  assert kept.stats.valid == len(source) and kept.stats.num_skipped == 0
  tight = dict(need, branch_tokens=need["branch_tokens"] - 1)
  assert tokenize_rows(list(source), model_tok[1], PipelineConfig(**tight)).stats.num_skipped
  # The settings file records what produced the rows.
  settings_path, _ = dl.sidecar_paths(str(out))
  with open(settings_path) as f:
    settings = json.load(f)
  assert settings["input"] == "queries" and settings["distill"]["temperature"] == 0.6


def test_interrupted_run_resumes_to_the_same_file(model_tok, queries_jsonl, tmp_path):
  inputs, _ = dl.load_inputs(queries_jsonl)
  full = tmp_path / "full.jsonl"
  _run(model_tok, inputs, full)

  part = tmp_path / "part.jsonl"
  first = _run(model_tok, inputs, part, cfg=dataclasses.replace(CFG, max_rows=3))
  assert first.written + sum(first.skipped.values()) == 3
  # A kill in the middle of a write: the last line is cut off.
  text = _lines(part)
  lines = text.splitlines(keepends=True)
  with open(part, "w", encoding="utf-8") as f:
    f.write("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
  second = _run(model_tok, inputs, part)
  assert second.already_done == 2  # the cut row is redone, not the two before it
  assert second.written + sum(second.skipped.values()) == len(QUERIES) - 2
  assert _lines(part) == _lines(full)

  # Nothing left to do: no row is redone and the file is unchanged.
  again = _run(model_tok, inputs, part)
  assert again.written == 0 and again.already_done == len(QUERIES)
  assert _lines(part) == _lines(full)


def test_crash_mid_run_loses_only_the_batch_in_flight(
  model_tok, queries_jsonl, tmp_path, monkeypatch
):
  inputs, _ = dl.load_inputs(queries_jsonl)
  cfg = dataclasses.replace(CFG, batch_size=2)
  full = tmp_path / "full.jsonl"
  _run(model_tok, inputs, full, cfg=cfg)

  real, calls = dl.distill_batch, []

  def crashing(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt("killed")
    return real(*args, **kwargs)

  part = tmp_path / "part.jsonl"
  monkeypatch.setattr(dl, "distill_batch", crashing)
  with pytest.raises(KeyboardInterrupt):
    _run(model_tok, inputs, part, cfg=cfg)
  monkeypatch.setattr(dl, "distill_batch", real)
  done = [json.loads(line)["meta"]["distill"]["index"] for line in _lines(part).splitlines()]
  assert set(done) <= {0, 1}  # the first batch is on disk, nothing of the second
  resumed = _run(model_tok, inputs, part, cfg=cfg)
  assert resumed.already_done == 2
  assert _lines(part) == _lines(full)


def test_rows_do_not_depend_on_batching(model_tok, queries_jsonl, tmp_path):
  inputs, _ = dl.load_inputs(queries_jsonl)
  a, b = tmp_path / "b4.jsonl", tmp_path / "b1.jsonl"
  _run(model_tok, inputs[:3], a)
  _run(model_tok, inputs[:3], b, cfg=dataclasses.replace(CFG, batch_size=1))
  assert _lines(a) == _lines(b)
  # Each row's workers sample with fold_in(key(seed), index): a different seed gives other
  # branches.
  c = tmp_path / "seed1.jsonl"
  _run(model_tok, inputs[:3], c, cfg=dataclasses.replace(CFG, seed=1))

  def ctx(p):
    return [json.loads(line)["contexts"] for line in _lines(p).splitlines()]

  assert ctx(c) != ctx(a)


def test_contexts_as_branches_and_skips(model_tok, tmp_path):
  records = [
    {
      "query": "What is Ann's code?",
      "answer": "4821",
      "contexts": ["Ann's code is 4821.", "Bob's code is 1934."],
    },
    {"query": "Only a question here."},
    {"query": "Join the parts.", "agent_reference_contexts": ["Part 1: red.", "Part 2: fox."]},
    {"answer": "no query"},
    "not an object",
  ]
  path = tmp_path / "in.jsonl"
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
    f.write("{broken json\n")
  inputs, stats = dl.load_inputs(str(path))
  assert [x.index for x in inputs] == [0, 1, 2]
  assert stats.skipped == {"query:missing": 1, "row:wrong_type": 1, "line:invalid_json": 1}

  out = tmp_path / "ctx.jsonl"
  cfg = dataclasses.replace(CFG, branches="contexts")
  res = _run(model_tok, inputs, out, cfg=cfg)
  assert res.skipped["contexts:missing"] == 1
  rows = [json.loads(line) for line in _lines(out).splitlines()]
  assert [r["meta"]["distill"]["index"] for r in rows] == [0, 2][: len(rows)]
  for r in rows:
    assert tuple(r["contexts"]) == inputs[r["meta"]["distill"]["index"]].contexts
    assert r["meta"]["distill"]["branches"] == "contexts"
  _, skipped_path = dl.sidecar_paths(str(out))
  skipped = [json.loads(line) for line in _lines(skipped_path).splitlines()]
  assert {"index": 1, "reason": "contexts:missing"}.items() <= skipped[0].items()
  # A restart does not retry skipped rows.
  again = _run(model_tok, inputs, out, cfg=cfg)
  assert again.written == 0 and not again.skipped and again.already_done == 3

  # "auto": contexts where a row has them, workers for the query-only row.
  auto = _run(
    model_tok, inputs, tmp_path / "auto.jsonl", cfg=dataclasses.replace(CFG, branches="auto")
  )
  modes = {
    json.loads(line)["meta"]["distill"]["index"]: json.loads(line)["meta"]["distill"]["branches"]
    for line in _lines(tmp_path / "auto.jsonl").splitlines()
  }
  assert auto.written == len(modes)
  expected = {0: "contexts", 1: "workers", 2: "contexts"}
  assert modes == {i: expected[i] for i in modes}


def test_changed_settings_are_refused(model_tok, queries_jsonl, tmp_path):
  inputs, _ = dl.load_inputs(queries_jsonl)
  out = tmp_path / "o.jsonl"
  small = dataclasses.replace(CFG, max_rows=1)
  _run(model_tok, inputs, out, cfg=small, settings={"input": "a"})
  with pytest.raises(ValueError, match="other settings.*seed"):
    _run(model_tok, inputs, out, cfg=dataclasses.replace(small, seed=7), settings={"input": "a"})
  with pytest.raises(ValueError, match="other settings.*input"):
    _run(model_tok, inputs, out, cfg=small, settings={"input": "b"})
  res = _run(
    model_tok,
    inputs,
    out,
    cfg=dataclasses.replace(small, seed=7),
    settings={"input": "a"},
    overwrite=True,
  )
  assert res.already_done == 0 and res.written + sum(res.skipped.values()) == 1


def test_bad_config_values():
  with pytest.raises(ValueError, match="branches="):
    dl.DistillConfig(branches="text")
  with pytest.raises(ValueError, match="batch_size"):
    dl.DistillConfig(batch_size=0)
  with pytest.raises(ValueError, match=r"top_p=0 is outside the allowed range \(0, 1\]"):
    dl.DistillConfig(top_p=0)
  with pytest.raises(FileNotFoundError, match="synthetic"):
    dl.load_inputs("/no/such/file.jsonl")
  with pytest.raises(ValueError, match="unknown synthetic family"):
    dl.load_inputs("synthetic:no_such_family")


def test_synthetic_inputs():
  inputs, stats = dl.load_inputs(
    "synthetic:find_fact,majority_vote", per_family=3, num_branches=(2, 4)
  )
  assert stats.valid == 6 and [x.index for x in inputs] == list(range(6))
  assert all(x.contexts and x.reference for x in inputs)
  assert {x.source for x in inputs} == {"synthetic/find_fact", "synthetic/majority_vote"}
  assert all(len(x.contexts) >= 3 for x in inputs if x.source.endswith("majority_vote"))


def test_inputs_from_source_strings(tmp_path, monkeypatch):
  """`input` is a source string: jsonl:PATH and hf:json:PATH give the same inputs."""
  datasets = pytest.importorskip("datasets")
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
  path = tmp_path / "questions.jsonl"
  records = [
    {"query": "Who won?", "contexts": ["Ann won."], "answer": "Ann"},
    {"question": "Where?", "gold": "Oslo"},
    {"query": "", "contexts": ["blank query"]},
  ]
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  inputs, stats = dl.load_inputs(f"jsonl:{path}")
  assert [(x.index, x.query, x.contexts, x.source) for x in inputs] == [
    (0, "Who won?", ("Ann won.",), "questions"),
    (1, "Where?", (), "questions"),
  ]
  assert stats.valid == 2 and stats.skipped == {"query:empty": 1}
  assert dl.load_inputs(f"hf:json:{path}") == (inputs, stats)
  with pytest.raises(ValueError, match=r"input='s3:x': unknown source kind 's3'; accepted forms"):
    dl.load_inputs("s3:x")


@pytest.mark.slow
def test_cli_tiny(tmp_path):
  """The launch command of configs/distill.py:tiny, twice: the second run resumes."""
  workdir = tmp_path / "w"
  cmd = [
    sys.executable,
    "-m",
    "launch.distill",
    "--config",
    "configs/distill.py:tiny",
    "--workdir",
    str(workdir),
    "--config.max_rows=3",
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  path = workdir / "distilled.jsonl"
  source = JsonlSource(path)
  assert len(source) == 3 and source.stats.num_skipped == 0
  assert all(r.source.startswith("distill/synthetic/") for r in source)
  assert all(len(r.contexts) == 3 for r in source)  # tiny preset: 3 workers per query
  before = _lines(path)
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "0 rows written, 3 already done" in out.stdout
  assert _lines(path) == before
