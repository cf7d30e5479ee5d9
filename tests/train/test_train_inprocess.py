"""`ps_jax.train.loop.train` in-process: malformed rows, non-finite loss, sharded == 1 device.

One reference run (`one_device_run`, 4 steps on ONE of the 8 fake CPU devices, batch 4, rows
mixed with malformed ones) is shared: test 3 reads its skip counts, test 4 resumes from its
step-2 checkpoint with a learning rate of inf, test 5 compares it with the same run on a
2x2x2 mesh of all 8 devices.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import re
import shutil

import jax
import numpy as np
import pytest

from ps_jax.data import iter_valid_rows, synthetic
from ps_jax.data.pipeline import PipelineConfig
from ps_jax.data.rows import Row, RowStats
from ps_jax.sharding import MeshConfig, make_mesh
from ps_jax.train import loop as loop_lib
from ps_jax.train.loop import AdapterConfig, NonFiniteLossError, TrainConfig, train
from ps_jax.train.step import OptimizerConfig
from train_helpers import read_metrics

pytestmark = pytest.mark.slow  # trains: runs long (scheduled first, tests/conftest.py)

STEPS = 4
CFG = TrainConfig(
  num_steps=STEPS,
  checkpoint_every=2,
  max_checkpoints=10,
  pipeline=PipelineConfig(batch_size=4, max_branches=4, branch_tokens=32, synth_tokens=96, seed=0),
  optimizer=OptimizerConfig(learning_rate=1e-3),
  adapter=AdapterConfig(rank=4, alpha=8.0),
  mesh=MeshConfig(data=1, fsdp=1, tensor=1),
)

# Row objects that bypass parse_row (what a processor bug or a hand-built list can produce),
# and the reason each is counted under.
MALFORMED = [
  (Row("Who?", "Ann", ()), "contexts:empty"),
  (Row("Who?", "Ann", ("Ann was there.", 7)), "contexts:wrong_type"),  # non-string context
  (Row("Who?", "Ann", "Ann was there."), "contexts:wrong_type"),  # one string, not a list
  (Row("Who?", None, ("Ann was there.",)), "answer:wrong_type"),  # missing answer (None)
  (Row("", "Ann", ("Ann was there.",)), "query:empty"),
  (Row("Who?", "Ann", ("Ann was there.", "  ")), "contexts:empty_item"),
  (Row("Who?", "Ann", ("Ann was there. " * 40,)), "contexts:too_long"),  # > branch_tokens
  (Row("Who?", "Ann", tuple(f"Fact {i}." for i in range(5))), "contexts:too_many"),
  (Row("Who?", "Ann " * 60, ("Ann was there.",)), "answer:too_long"),
]
# Raw dict rows (a JSONL file): parse_row / iter_valid_rows skip these before train() sees them.
DICT_ROWS = [
  {"query": "Who?", "contexts": ["Ann was there."]},  # no answer field
  {"question": "Who?", "gold": "Ann", "agent_reference_contexts": "Ann was there."},
  "not an object",
  {"query": "Who was there?", "answer": "Ann", "contexts": ["Ann was there.", "Bo left."]},
]
DICT_REASONS = {"answer:missing": 1, "contexts:wrong_type": 1, "row:wrong_type": 1}


def _rows():
  good = synthetic.generate("find_fact", "train", 10, 0, (2, 4)) + synthetic.generate(
    "majority_vote", "train", 10, 0, (3, 4)
  )
  rows = []
  for i, row in enumerate(good):  # malformed rows interleaved with the good ones
    rows.append(row)
    if i < len(MALFORMED):
      rows.append(MALFORMED[i][0])
  stats = RowStats()
  rows += list(iter_valid_rows(DICT_ROWS, stats=stats))
  assert dict(stats.skipped) == DICT_REASONS and stats.valid == 1
  return rows, stats


def _one_device_mesh(monkeypatch):
  """train() builds its mesh from all jax.devices(); restrict it to the first device."""
  monkeypatch.setattr(loop_lib, "make_mesh", lambda config: make_mesh(config, jax.devices()[:1]))


@pytest.fixture(scope="module")
def rows():
  return _rows()


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory, tiny_model, tokenizer, rows, cache_dir):
  """(workdir, TrainResult, row_stats_supported) of the shared 4-step 1-device run."""
  del cache_dir  # only its side effect: the session's persistent compilation cache
  train_rows, dict_stats = rows
  workdir = str(tmp_path_factory.mktemp("one_device") / "w")
  with pytest.MonkeyPatch.context() as mp:
    _one_device_mesh(mp)
    try:  # the row_stats argument is the fix proposed for test 3b; use it once it exists
      result = train(tiny_model, tokenizer, train_rows, [], CFG, workdir, row_stats=dict_stats)
      supported = True
    except TypeError as e:
      if "row_stats" not in str(e):
        raise
      result = train(tiny_model, tokenizer, train_rows, [], CFG, workdir)
      supported = False
  return workdir, result, supported


# --- 3. malformed rows ------------------------------------------------------------------------


def test_malformed_rows_are_skipped_and_counted_in_every_record(one_device_run):
  workdir, result, row_stats_supported = one_device_run
  expected = collections.Counter(reason for _, reason in MALFORMED)
  if row_stats_supported:  # the loader's skips are added to the same counters
    expected.update(DICT_REASONS)
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # the run did not crash
  assert result.last_step == STEPS and result.history == records
  for r in records:
    assert math.isfinite(r["loss"]) and r["target_tokens"] > 0
    counts = {k[len("skipped/") :]: v for k, v in r.items() if k.startswith("skipped/")}
    for reason, n in expected.items():
      assert counts.get(reason) == n, (reason, counts)


def test_rows_skipped_while_loading_are_counted_too(one_device_run):
  workdir, _, supported = one_device_run
  assert supported, "train() does not accept row_stats"
  for r in read_metrics(workdir):
    assert r.get("skipped/answer:missing") == 1 and r.get("skipped/row:wrong_type") == 1, r
    assert r.get("skipped/contexts:wrong_type") == 3, r  # 2 Row objects + 1 dict row


PNG = b"\x89PNG\r\n\x1a\n"


def test_loss_curve_png_next_to_metrics(one_device_run):
  workdir, _, _ = one_device_run
  with open(os.path.join(workdir, "loss.png"), "rb") as f:
    assert f.read(8) == PNG
  assert os.path.exists(os.path.join(workdir, "metrics.jsonl"))


def test_plot_losses_with_held_out_points(tmp_path):
  history = [{"step": s, "loss": 3.0 / s} for s in range(1, 11)]
  for r in history[4::5]:
    r["eval_loss"] = r["loss"] + 0.1
  path = str(tmp_path / "loss.png")
  loop_lib.plot_losses(history, path)
  loop_lib.plot_losses([], str(tmp_path / "empty.png"))  # a run with no records yet
  for p in (path, str(tmp_path / "empty.png")):
    with open(p, "rb") as f:
      assert f.read(8) == PNG
  assert sorted(os.listdir(tmp_path)) == ["empty.png", "loss.png"]  # no temporary file left


def test_only_malformed_rows_is_a_clear_error(tiny_model, tokenizer, tmp_path, monkeypatch):
  _one_device_mesh(monkeypatch)
  with pytest.raises(ValueError, match="no trainable examples"):
    train(tiny_model, tokenizer, [row for row, _ in MALFORMED], [], CFG, str(tmp_path / "w"))


# --- 4. non-finite loss -----------------------------------------------------------------------


def _from_step_2(src: str, dst) -> str:
  """A copy of the reference workdir as it was after step 2 (checkpoint 2, records 1-2)."""
  shutil.copytree(src, dst)
  for step in os.listdir(os.path.join(dst, "checkpoints")):
    if step.isdigit() and int(step) > 2:
      shutil.rmtree(os.path.join(dst, "checkpoints", step))
  return str(dst)


def _latest_trainable(workdir, model):
  """(step, trainable leaves) of the newest checkpoint (restored as the loop restores it)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  from ps_jax.adapter import Adapter  # pylint: disable=import-outside-toplevel
  from ps_jax.train.checkpoint import Checkpointer, abstract_like  # pylint: disable=import-outside-toplevel
  from ps_jax.train.step import init_state, make_optimizer  # pylint: disable=import-outside-toplevel

  adapter = Adapter.create(model.config, **dataclasses.asdict(CFG.adapter))
  state = jax.device_put(init_state(adapter, make_optimizer(CFG.optimizer)), jax.devices()[0])
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1)
  step = ckpt.manager.latest_step()
  restored = ckpt.manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_like(state)))
  )["state"]
  ckpt.close()
  return step, [np.asarray(x) for x in jax.tree.leaves(restored.trainable)]


INF_LR = dataclasses.replace(CFG, optimizer=OptimizerConfig(learning_rate=float("inf")))


def test_nonfinite_loss_stops_with_a_clear_error_and_keeps_the_good_checkpoint(
  one_device_run, tiny_model, tokenizer, rows, tmp_path, monkeypatch
):
  """Resume from step 2 with lr=inf: the step-3 update makes the parameters NaN, a later loss
  is NaN; the run stops naming that step, checkpoint 2 stays the latest and a resume with
  the good learning rate redoes steps 3-4 with the reference losses."""
  ref_dir, ref, _ = one_device_run
  _one_device_mesh(monkeypatch)
  workdir = _from_step_2(ref_dir, tmp_path / "w")
  with pytest.raises(NonFiniteLossError) as err:
    train(tiny_model, tokenizer, rows[0], [], INF_LR, workdir)
  message = str(err.value)
  m = re.search(r"at step (\d+)", message)
  assert m and re.search(r"\bnan\b|\binf\b|non-finite", message, re.I), message
  # Step 4 today: the first loss computed from the NaN parameters of the step-3 update;
  # step 3 once the update itself is checked (test_nonfinite_update_is_never_checkpointed).
  bad = int(m.group(1))
  assert bad in (3, 4), message
  assert "last good checkpoint (step 2)" in message, message
  assert [r["step"] for r in read_metrics(workdir)] == list(range(1, bad))
  step, leaves = _latest_trainable(workdir, tiny_model)
  assert step == 2 and all(np.isfinite(x).all() for x in leaves)

  resumed = train(tiny_model, tokenizer, rows[0], [], CFG, workdir)  # good lr again
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, STEPS + 1))
  assert [r["loss"] for r in records] == [r["loss"] for r in ref.history]
  assert resumed.last_step == STEPS
  print(f"\nlr=inf: NonFiniteLossError at step {bad}: {message}")


def test_nonfinite_update_is_never_checkpointed(
  one_device_run, tiny_model, tokenizer, rows, tmp_path, monkeypatch
):
  ref_dir, _, _ = one_device_run
  _one_device_mesh(monkeypatch)
  workdir = _from_step_2(ref_dir, tmp_path / "w")
  cfg = dataclasses.replace(INF_LR, checkpoint_every=1)
  with pytest.raises(NonFiniteLossError):
    train(tiny_model, tokenizer, rows[0], [], cfg, workdir)
  step, leaves = _latest_trainable(workdir, tiny_model)
  assert all(np.isfinite(x).all() for x in leaves), f"checkpoint {step} holds NaN/inf"


# --- 5. sharded == 1 device -------------------------------------------------------------------


def test_sharded_step_on_8_devices_equals_one_device(
  one_device_run, tiny_model, tokenizer, rows, tmp_path, monkeypatch
):
  _, ref, _ = one_device_run
  meshes = []

  def spy(config):
    mesh = make_mesh(config)
    meshes.append(mesh)
    return mesh

  monkeypatch.setattr(loop_lib, "make_mesh", spy)
  steps = 3
  cfg = dataclasses.replace(CFG, num_steps=steps, mesh=MeshConfig(data=2, fsdp=2, tensor=2))
  result = train(tiny_model, tokenizer, rows[0], [], cfg, str(tmp_path / "w"))
  assert len(meshes) == 1 and dict(meshes[0].shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert meshes[0].devices.size == 8
  diffs = {}
  for a, b in zip(result.history, ref.history[:steps], strict=True):
    assert a["step"] == b["step"] and a["target_tokens"] == b["target_tokens"]
    diffs[a["step"]] = abs(a["loss"] - b["loss"])
    assert diffs[a["step"]] <= 1e-5, (a, b)
    assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * max(1.0, b["grad_norm"]), (a, b)
  assert len(diffs) == steps
  print(f"\n8-device (2x2x2) vs 1-device |loss diff| per step: {diffs}")
