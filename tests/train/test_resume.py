"""Kill -9 / corrupt checkpoint / half-written save: a rerun resumes and reproduces the losses.

Every run here is `python -m launch.train --config configs/tiny.py` in a subprocess on one CPU
device, fp32 (train_helpers.CLI_ARGS), compared with one uninterrupted 8-step run
(`reference_run`). Losses are compared with `==`: the resumed runs execute the same program on
the same device on the same data, and XLA's CPU backend is deterministic for it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from train_helpers import REF_STEPS, ROOT, cli_command, read_metrics

pytestmark = pytest.mark.slow  # trains: runs long (scheduled first, tests/conftest.py)

KEYS = ("loss", "grad_norm", "target_tokens")


def _complete_records(path) -> list[dict]:
  """The records of metrics.jsonl whose line is complete (the writer may be mid-line)."""
  try:
    with open(path) as f:
      text = f.read()
  except FileNotFoundError:
    return []
  return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def _steps(workdir) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(p) for p in os.listdir(d) if p.isdigit())


def _assert_equal_to_reference(records, ref, steps):
  by_step = {r["step"]: r for r in records}
  ref_by_step = {r["step"]: r for r in ref}
  for s in steps:
    for k in KEYS:
      assert by_step[s][k] == ref_by_step[s][k], (s, k, by_step[s][k], ref_by_step[s][k])


def _resumed_from(stderr: str) -> int:
  m = re.findall(r"resumed from step (\d+)", stderr)
  assert len(m) == 1, stderr[-3000:]
  return int(m[0])


def test_kill_9_mid_training_then_rerun_matches_uninterrupted(
  tmp_path, reference_run, subprocess_env, run_train_cli
):
  _, ref = reference_run
  workdir = tmp_path / "w"
  metrics = workdir / "metrics.jsonl"
  with open(tmp_path / "killed.log", "w") as log:
    proc = subprocess.Popen(
      cli_command(workdir, REF_STEPS),
      cwd=ROOT,
      env=subprocess_env,
      stdout=log,
      stderr=subprocess.STDOUT,
    )
    try:
      deadline = time.monotonic() + 420
      while True:  # saves are asynchronous: wait for step 5's record and for checkpoint 4
        records = _complete_records(metrics)
        if records and records[-1]["step"] >= 5 and 4 in _steps(workdir):
          break
        if proc.poll() is not None or time.monotonic() > deadline:
          pytest.fail(
            f"run ended ({proc.returncode}) or timed out before step 5:\n"
            + open(tmp_path / "killed.log").read()[-3000:]
          )
        time.sleep(0.005)
      os.kill(proc.pid, signal.SIGKILL)
    finally:
      if proc.poll() is None:
        proc.kill()
      proc.wait()
  assert proc.returncode == -signal.SIGKILL
  killed_after = _complete_records(metrics)[-1]["step"]
  assert 5 <= killed_after < REF_STEPS, "the kill must land before the run's end"
  before = _steps(workdir)
  assert 4 in before and max(before) <= killed_after

  out = run_train_cli(workdir, REF_STEPS)  # the same command again
  resumed = _resumed_from(out.stderr)
  assert resumed == max(before) and resumed in (4, 6)
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, REF_STEPS + 1))  # one record per step
  _assert_equal_to_reference(records, ref, range(1, REF_STEPS + 1))
  assert _steps(workdir) == [4, 6, 8]
  print(
    f"\nkilled after step {killed_after}; resumed from {resumed}; steps "
    f"{resumed + 1}..{REF_STEPS} equal the uninterrupted run exactly (loss, grad_norm)"
  )


def _corrupt_latest(workdir) -> None:
  """Half-truncates the OCDBT data files of checkpoint 8's train state (what a disk error or
  a copy cut short leaves), and leaves a half-written save of step 10 beside it."""
  ckpts = os.path.join(workdir, "checkpoints")
  assert _steps(workdir) == [4, 6, 8]
  data = os.path.join(ckpts, "8", "state", "d")
  for name in os.listdir(data):
    with open(os.path.join(data, name), "r+b") as f:
      f.truncate(os.path.getsize(os.path.join(data, name)) // 2)
  tmp = os.path.join(ckpts, "10.orbax-checkpoint-tmp-1795814951276435392")
  shutil.copytree(os.path.join(ckpts, "6"), tmp)
  os.remove(os.path.join(tmp, "commit_success.txt"))


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, reference_run, run_train_cli):
  """Resume to step 7: the corrupt step 8 is skipped with a warning, step 6 is restored."""
  ref_dir, ref = reference_run
  workdir = tmp_path / "w"
  shutil.copytree(ref_dir, workdir)
  _corrupt_latest(workdir)
  out = run_train_cli(workdir, 7)
  assert re.search(r"checkpoint at step 8 in \S+ is unreadable", out.stderr), out.stderr[-3000:]
  assert _resumed_from(out.stderr) == 6
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, 8))
  _assert_equal_to_reference(records, ref, range(1, 8))
  assert 7 in _steps(workdir)


def test_corrupt_latest_checkpoint_then_train_past_it(tmp_path, reference_run, run_train_cli):
  """The issue's scenario: rerun a finished run with more steps; step 8 is corrupt."""
  ref_dir, ref = reference_run
  workdir = tmp_path / "w"
  shutil.copytree(ref_dir, workdir)
  _corrupt_latest(workdir)
  out = run_train_cli(workdir, REF_STEPS + 2, check=False)
  assert re.search(r"checkpoint at step 8 in \S+ is unreadable", out.stderr), out.stderr[-3000:]
  assert _resumed_from(out.stderr) == 6
  assert out.returncode == 0, out.stderr[-2000:]
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, REF_STEPS + 3))
  _assert_equal_to_reference(records, ref, range(1, REF_STEPS + 1))
  assert _steps(workdir)[-1] == REF_STEPS + 2


# In-process checks of Checkpointer.restore_latest against each kind of damage: no compile.


@pytest.fixture(scope="module")
def abstract_state():
  """The abstract TrainState of the configs/tiny.py run, built the way loop.train builds it."""
  import ps_jax  # pylint: disable=import-outside-toplevel
  from configs import tiny  # pylint: disable=import-outside-toplevel
  from ps_jax.adapter import Adapter  # pylint: disable=import-outside-toplevel
  from ps_jax.experiment import train_config  # pylint: disable=import-outside-toplevel
  from ps_jax.train.checkpoint import abstract_like  # pylint: disable=import-outside-toplevel
  from ps_jax.train.step import init_state, make_optimizer  # pylint: disable=import-outside-toplevel

  c = tiny.get_config()
  cfg = train_config(c)
  config = dataclasses.replace(ps_jax.io.load_config(c.model.source), **dict(c.model.random_shape))
  adapter = Adapter.create(config, **dataclasses.asdict(cfg.adapter))
  state = init_state(adapter, make_optimizer(cfg.optimizer))
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), abstract_like(state)
  )


def _truncate_data(p):
  for f in os.scandir(os.path.join(p, "state", "d")):
    with open(f.path, "r+b") as fh:
      fh.truncate(f.stat().st_size // 2)


def _flip_data(p):
  for f in os.scandir(os.path.join(p, "state", "d")):
    with open(f.path, "r+b") as fh:
      fh.seek(f.stat().st_size // 3)
      chunk = fh.read(64)
      fh.seek(f.stat().st_size // 3)
      fh.write(bytes(b ^ 0xFF for b in chunk))


def _garbage_iterator_state(p):
  with open(os.path.join(p, "data", "process_0-of-1.json"), "w") as f:
    f.write('{"global_next_ind')


def _remove(rel):
  def fn(p):
    path = os.path.join(p, rel)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

  fn.__name__ = f"remove {rel}"
  return fn


@pytest.mark.parametrize(
  "damage",
  [
    _truncate_data,
    _flip_data,
    _garbage_iterator_state,
    _remove("state/d"),
    _remove("state/manifest.ocdbt"),
    _remove("state/_METADATA"),
    _remove("state"),
    _remove("data"),
  ],
  ids=lambda f: f.__name__,
)
def test_unreadable_checkpoint_is_skipped_with_a_warning(
  tmp_path, reference_run, abstract_state, damage, caplog
):
  from ps_jax.train.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel

  ref_dir, _ = reference_run
  ckpts = tmp_path / "checkpoints"
  shutil.copytree(os.path.join(ref_dir, "checkpoints"), ckpts)
  damage(str(ckpts / "8"))
  ckpt = Checkpointer(str(ckpts), every_steps=2)
  with caplog.at_level(logging.WARNING):
    step, _, data_state = ckpt.restore_latest(abstract_state)
  ckpt.close()
  assert step == 6
  # The grain ElasticIterator's position: 6 global batches of 2 rows read.
  assert data_state == {"global_next_index": 12}
  warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
  assert len(warnings) == 1 and "checkpoint at step 8 " in warnings[0], warnings


@pytest.mark.parametrize(
  "harmless",
  ["tmp_leftover", _remove("_CHECKPOINT_METADATA"), _remove("commit_success.txt")],
  ids=lambda f: f if isinstance(f, str) else f.__name__,
)
def test_harmless_leftovers_still_restore_the_latest(
  tmp_path, reference_run, abstract_state, harmless
):
  """A half-written save (`*.orbax-checkpoint-tmp-*`) is ignored; metadata-only losses of an
  otherwise complete checkpoint do not discard it. The restored arrays are the saved ones."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  from ps_jax.train.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel

  ref_dir, _ = reference_run
  ckpts = tmp_path / "checkpoints"
  shutil.copytree(os.path.join(ref_dir, "checkpoints"), ckpts)
  if harmless == "tmp_leftover":
    tmp = ckpts / "10.orbax-checkpoint-tmp-1795814951276435392"
    shutil.copytree(ckpts / "8", tmp)
    os.remove(tmp / "commit_success.txt")
    _truncate_data(str(tmp))
  else:
    harmless(str(ckpts / "8"))
  ckpt = Checkpointer(str(ckpts), every_steps=2)
  assert ckpt.manager.all_steps() == [4, 6, 8]
  step, state, _ = ckpt.restore_latest(abstract_state)
  ckpt.close()
  assert step == 8
  pristine = ocp.StandardCheckpointer().restore(
    os.path.join(ref_dir, "checkpoints", "8", "state"), abstract_state
  )
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(pristine), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
