"""Smoke test of the study launcher (ps_jax.train.study, what launch.study runs) on a tiny random
model: 2 trained methods x 2 seeds x 2 steps plus a zero-shot cell per seed; the report files;
a rerun skips every finished cell; a cell without its result reruns (resuming its checkpoint)."""

from __future__ import annotations

import json
import os

import matplotlib.image
import pytest

from configs import study as study_config
from ps_jax.train import study
from ps_jax.train.checkpoint import Checkpointer

pytestmark = pytest.mark.slow  # trains: runs long (scheduled first, tests/conftest.py)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, cache_dir):
  del cache_dir  # only its side effect: the session's persistent compilation cache
  c = study_config.get_config("tiny")
  workdir = str(tmp_path_factory.mktemp("study") / "w")
  logs = []
  out = study.run_study(c, workdir, log=logs.append)
  return c, workdir, out, logs


def _cell_names(c):
  return [cell.name for cell in study.plan(c, "/nowhere")]


def test_every_cell_runs_and_the_report_is_written(first_run):
  c, workdir, out, _ = first_run
  names = _cell_names(c)
  assert len(names) == 2 * (1 + 2)  # per seed: zero-shot (pcw) + parallel_synthesis, text_lora
  assert out["ran"] == names and out["skipped"] == []
  for ext in ("md", "json", "png"):
    assert os.path.exists(os.path.join(workdir, f"study.{ext}")), ext
  assert matplotlib.image.imread(os.path.join(workdir, "study.png")).ndim == 3
  report = json.load(open(os.path.join(workdir, "study.json")))
  assert report["finished"] == report["planned"] == len(names)
  views = ["base / fixed branches", "base / worker branches"]
  assert list(report["summary"]) == views
  for view in views:
    summary = report["summary"][view]
    assert list(summary) == ["pcw", "parallel_synthesis", "text_lora"]
    for v in summary.values():
      acc = v["accuracy"]
      assert acc["n"] == 2 and acc["ci95"][0] <= acc["mean"] <= acc["ci95"][1]
      assert set(v["per_family"]) == set(c.data.families)
  # text_lora reads texts only: evaluated once, shared by both layouts.
  fixed, worker = (report["summary"][v]["text_lora"] for v in views)
  assert fixed == worker
  pairs = {(t["view"], t["a"], t["b"]): t for t in report["paired"]}
  assert set(pairs) == {(v, "parallel_synthesis", b) for v in views for b in ("pcw", "text_lora")}
  t = pairs[views[0], "parallel_synthesis", "text_lora"]
  assert t["seeds"] == [0, 1] and t["n_examples"] == 2 * 2 * len(c.data.families)
  assert 0 < t["p_value"] <= 1 and isinstance(t["significant"], bool)
  rec = json.load(open(os.path.join(workdir, "cells", "base", "text_lora", "seed0", "result.json")))
  assert list(rec["eval"]) == ["fixed"]
  assert rec["train"]["mapper_offset"] is None  # no mapper
  rec = json.load(
    open(os.path.join(workdir, "cells", "base", "parallel_synthesis", "seed0", "result.json"))
  )
  assert list(rec["eval"]) == ["fixed", "worker"]
  assert report["machine"]["cpu_cores"] >= 1 and report["wall"]["cells_total_s"] > 0
  md = open(os.path.join(workdir, "study.md")).read()
  for text in ("parallel_synthesis - text_lora", "Significant differences", "machine", "wall"):
    assert text in md
  mach = report["machine"]  # every cell records the machine it ran on
  ran_on = f"{mach['cpu']} CPU, {mach['cpu_cores']} cores, jax {mach['jax']}"
  assert f"cells per machine they ran on: {ran_on}: {len(names)}" in md
  assert "Interim" not in md
  rec = json.load(open(os.path.join(workdir, "cells", "base", "text_lora", "seed1", "result.json")))
  assert rec["train"]["steps"] == 2 and rec["leak_ok"]
  assert os.path.exists(os.path.join(workdir, "cells", "base", "text_lora", "seed1", "adapter"))


def test_rerun_skips_finished_cells_and_reruns_an_unfinished_one(first_run):
  c, workdir, _, _ = first_run
  results = {
    cell.name: cell.result_path for cell in study.plan(c, workdir) if cell.mix != study.ZERO_SHOT
  }
  mtimes = {n: os.path.getmtime(p) for n, p in results.items()}
  out = study.run_study(c, workdir, log=lambda msg: None)
  assert out["ran"] == [] and out["skipped"] == _cell_names(c)
  assert {n: os.path.getmtime(p) for n, p in results.items()} == mtimes

  # A cell that stopped before its result: the rerun runs it alone, its training resuming
  # from the final checkpoint (no step is trained again).
  name = "base/parallel_synthesis/seed1"
  os.remove(results[name])
  metrics = os.path.join(os.path.dirname(results[name]), "train", "metrics.jsonl")
  before = open(metrics).read()
  # --report_only: the report from the finished cells, the unfinished one left alone.
  out = study.run_study(c, workdir, log=lambda msg: None, report_only=True)
  assert out["ran"] == [] and not os.path.exists(results[name])
  assert out["report"]["finished"] == out["report"]["planned"] - 1
  assert json.load(open(os.path.join(workdir, "study.json")))["finished"] == len(_cell_names(c)) - 1
  assert "Interim report" in open(os.path.join(workdir, "study.md")).read()
  out = study.run_study(c, workdir, log=lambda msg: None)
  assert out["ran"] == [name]
  assert open(metrics).read() == before
  assert json.load(open(results[name]))["train"]["steps"] == 2


def test_a_mapper_variant_trains_its_own_adapter_and_reports_under_its_name(
  tmp_path, cache_dir, monkeypatch
):
  del cache_dir
  from ps_jax.adapter import load_adapter  # pylint: disable=import-outside-toplevel

  c = study_config.get_config("tiny")
  c.study.methods = ("ps_per_head_mapper",)
  c.study.zero_shot = ()
  c.study.seeds = (0,)
  c.study.mixes = ("base", "distill")
  c.study.branch_layouts = ("fixed",)
  # The variant is listed for the base mix only: no distillation cell (and no teacher run).
  assert [cell.name for cell in study.plan(c, "/nowhere")] == ["base/ps_per_head_mapper/seed0"]
  c.study.mixes = ("base",)
  cell = tmp_path / "cells" / "base" / "ps_per_head_mapper" / "seed0"
  # A SIGTERM during training: the cell stops after a checkpoint and writes no result (a
  # part-trained adapter is never evaluated as the cell's); the rerun resumes and finishes it.
  with monkeypatch.context() as m:
    m.setattr(Checkpointer, "reached_preemption", lambda self, step: True)
    with pytest.raises(study.Preempted, match="ps_per_head_mapper/seed0: preempted after step 1"):
      study.run_study(c, str(tmp_path), log=lambda msg: None)
  assert not (cell / "result.json").exists()
  out = study.run_study(c, str(tmp_path), log=lambda msg: None)
  assert out["ran"] == ["base/ps_per_head_mapper/seed0"]
  steps = [json.loads(line)["step"] for line in open(cell / "train" / "metrics.jsonl")]
  assert steps == [1, 2]  # step 1 not trained again
  adapter = load_adapter(str(cell / "adapter"))
  assert adapter.mapper.per_head
  assert adapter.mapper.w2.shape[-1] == 4 * c.model.random_shape.num_kv_heads
  rec = json.loads((cell / "result.json").read_text())
  offset = rec["train"]["mapper_offset"]  # trained away from the identity, within tanh's bound
  assert list(offset["max"]) == ["alpha_k", "beta_k", "alpha_v", "beta_v"]
  assert 0 < max(offset["max"].values()) <= 0.1
  assert all(0 <= offset["mean"][k] <= offset["max"][k] for k in offset["max"])
  assert f"| {max(offset['max'].values()):.4f} |" in (tmp_path / "study.md").read_text()
  assert list(rec["eval"]["fixed"]["accuracy"]) == ["ps_per_head_mapper"]
  assert list(rec["eval"]["fixed"]["per_example"]["scores"]) == ["ps_per_head_mapper"]
  summary = out["report"]["summary"]["base / fixed branches"]
  assert list(summary) == ["ps_per_head_mapper"]


def test_study_config_errors_name_the_field():
  c = study_config.get_config("tiny")
  c.study.methods = ("ps_nonexistent",)
  with pytest.raises(ValueError, match="study.methods"):
    study.check_study_config(c)
  c = study_config.get_config("tiny")
  c.study.variants.ps_features_length.adapter = {"rank_typo": 3}
  with pytest.raises(ValueError, match=r"study.variants.ps_features_length.adapter.*rank_typo"):
    study.check_study_config(c)
  c = study_config.get_config("tiny")
  c.study.variants.ps_features_length.method = "pcw"
  with pytest.raises(ValueError, match=r"study.variants.ps_features_length.method"):
    study.check_study_config(c)


def test_empty_distillation_rows_are_refused_before_any_cell_trains(tmp_path):
  c = study_config.get_config("tiny")
  c.study.methods = ("parallel_synthesis",)
  c.study.zero_shot = ()
  c.study.seeds = (0,)
  c.study.mixes = ("distill",)
  empty = tmp_path / "distilled.jsonl"
  empty.write_text("\n")
  c.distill.path = str(empty)
  with pytest.raises(ValueError, match=r"hold no rows \(check distill.path\)"):
    study.run_study(c, str(tmp_path / "w"), log=lambda msg: None)
  assert not (tmp_path / "w" / "cells" / "distill").exists()


def test_the_teacher_is_scored_against_the_reference_answers_its_rows_keep(tmp_path):
  def row(family, answer, reference):
    distill = {} if reference is None else {"reference_answer": reference}
    return {"query": "q", "answer": answer, "meta": {"family": family, "distill": distill}}

  rows = [
    row("chat_recall", "Your order number is 49490.", "49490"),  # right
    row("chat_recall", "Your answer is:\nYour answer is:", "H35"),  # wrong
    row("tool_lookup", "The result is 7.", "8"),  # wrong
    row("chat_recall", "49490", None),  # no reference: unscored
    row("not_a_family", "x", "x"),  # unknown family: unscored
  ]
  path = tmp_path / "distilled.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
  teacher = study.teacher_scores(str(path))
  assert teacher == {
    "correct": 1,
    "scored": 3,
    "unscored": 2,
    "per_family": {
      "chat_recall": {"correct": 1, "rows": 2},
      "tool_lookup": {"correct": 0, "rows": 1},
    },
  }
  line = study._distill_rows_line({"rows": 5, "path": str(path), "teacher": teacher})
  assert "5 in distilled.jsonl" in line and "right" in line and "on 1 of 3" in line
  assert "chat_recall 1/2, tool_lookup 0/1" in line


def test_cells_name_their_machine_and_ttft_is_not_pooled_across_machines():
  cpu = dict(cpu="AMD EPYC", cpu_cores=2, devices=["cpu:cpu"], jax="0.10.2")
  gpu = dict(cpu="Intel Xeon", cpu_cores=16, devices=["gpu:NVIDIA H200"], jax="0.11.2")
  assert study._ran_on(cpu) == "AMD EPYC CPU, 2 cores, jax 0.10.2"
  assert study._ran_on(gpu) == "NVIDIA H200, jax 0.11.2"  # the accelerator, not its host CPU
  assert study._ran_on(None) == "not recorded"
  evals = {
    seed: dict(
      accuracy={"m": 0.5},
      per_group={"m": {"f": 0.5}},
      ttft_median_s={"m": ttft},
      num_examples=8,
      ran_on=study._ran_on(mach),
    )
    for seed, (mach, ttft) in enumerate([(cpu, 2.0), (cpu, 3.0), (gpu, 0.015)])
  }
  ttft = study._method_summary(evals, "m")["ttft_median_s"]
  assert ttft == {"AMD EPYC CPU, 2 cores, jax 0.10.2": 2.5, "NVIDIA H200, jax 0.11.2": 0.015}
  assert study._fmt_ttft(ttft) == "2500 (AMD EPYC CPU, 2 cores); 15 (NVIDIA H200)"
  assert study._fmt_ttft({"NVIDIA H200, jax 0.11.2": 0.015}) == "15"
